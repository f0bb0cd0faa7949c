"""Data-parallel SAE training over 2 gloo processes equals one process on the same batches."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from deltalens.errors import ConfigError
from deltalens.sae.train import Trainer
from deltalens.scale.dist import World
from scale_helpers import SAE_D, crosscoder_once, sae_config, sae_worker, spawn, train_once

ARCHS = ("topk", "standard")


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    spawn(sae_worker, 2, str(root))
    return root


@pytest.mark.parametrize("arch", ARCHS)
def test_two_process_training_gives_the_one_process_loss_curve_and_weights(arch, two_process_runs, tmp_path):
    one = train_once(arch, str(tmp_path / "one"))
    ref_w = {k: v for k, v in one.sae.state_dict().items()}
    ref_loss = [h["loss"] for h in one.history]
    assert len(ref_loss) == 24
    for rank in (0, 1):
        w = load_file(two_process_runs / f"{arch}_full.rank{rank}.safetensors")
        for k, v in ref_w.items():
            torch.testing.assert_close(w[k], v, atol=1e-5, rtol=0, msg=f"{arch} rank {rank}: {k}")
        hist = json.loads((two_process_runs / f"{arch}_full.rank{rank}.json").read_text())
        assert [h["step"] for h in hist] == list(range(1, 25))
        assert [h["tokens"] for h in hist][-1] == 64 * 24  # global tokens, not per rank
        torch.testing.assert_close(
            torch.tensor([h["loss"] for h in hist]), torch.tensor(ref_loss), atol=1e-5, rtol=0
        )
        assert [h["dead"] for h in hist] == [h["dead"] for h in one.history]
    # the weights moved: a run that skipped the gradient all-reduce could not match
    assert not torch.allclose(ref_w["W_dec"], train_once(arch, None, total_tokens=64).sae.W_dec, atol=1e-3)
    # rank 0 wrote the SAE, checkpoints are gone
    assert (two_process_runs / f"{arch}_full" / "cfg.json").is_file()
    assert not (two_process_runs / f"{arch}_full" / "checkpoints").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_two_process_training_resumes_to_the_same_weights(arch, two_process_runs):
    for rank in (0, 1):
        full = load_file(two_process_runs / f"{arch}_full.rank{rank}.safetensors")
        resumed = load_file(two_process_runs / f"{arch}_resumed.rank{rank}.safetensors")
        for k, v in full.items():
            assert torch.equal(resumed[k], v), f"{arch} rank {rank}: {k} differs after resume"
        hist = json.loads((two_process_runs / f"{arch}_resumed.rank{rank}.json").read_text())
        assert [h["step"] for h in hist] == list(range(1, 25))


def test_a_batch_the_world_size_does_not_divide_is_refused():
    with pytest.raises(
        ConfigError, match=r"world size 2 does not divide the 63 rows of a batch \(--batch-size\)"
    ):
        Trainer(sae_config("topk", batch_size=63), SAE_D, world=World(rank=0, size=2))


def test_two_process_crosscoder_selects_over_the_global_batch_and_matches_one_process(two_process_runs):
    one = crosscoder_once()
    ref = {k: v for k, v in one.crosscoder.state_dict().items()}
    for rank in (0, 1):
        w = load_file(two_process_runs / f"cc.rank{rank}.safetensors")
        for k, v in ref.items():
            torch.testing.assert_close(w[k], v, atol=1e-5, rtol=0, msg=f"crosscoder rank {rank}: {k}")
        hist = json.loads((two_process_runs / f"cc.rank{rank}.json").read_text())
        torch.testing.assert_close(
            torch.tensor([h["mse"] for h in hist]),
            torch.tensor([h["mse"] for h in one.history]),
            atol=1e-5,
            rtol=0,
        )
        assert [h["l0"] for h in hist] == pytest.approx([h["l0"] for h in one.history], abs=1e-9)
    assert (two_process_runs / "crosscoder").is_dir()
