"""Memory estimates, device_map / max_memory loading, and the GPU paths (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from deltalens.capture import CaptureConfig, capture
from deltalens.errors import ConfigError
from deltalens.models import load
from deltalens.scale.memory import (
    ModelShape,
    count_params_from_config,
    estimate_capture,
    estimate_sae,
    known_shape,
    parse_max_memory,
)
from tiny import save_tiny, tiny_model

CUDA = torch.cuda.is_available()
TEXTS = ["The quick brown fox jumps over the lazy dog.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tiny_model("llama"), tmp_path_factory.mktemp("m") / "tiny")


def test_param_counts_and_estimates_against_real_objects(tiny):
    real = sum(p.numel() for p in tiny.model.parameters())
    assert count_params_from_config(tiny.model.config) == real
    shape = ModelShape.of(tiny)
    est = estimate_capture(shape, batch_size=4, seq_len=10, dtype=torch.float32, shard_mb=1)
    assert est.terms["weights"] == real * 4
    assert est.terms["captured rows"] == 4 * 10 * tiny.d_model * 4
    from deltalens.sae.modules import make_training_sae

    sae = make_training_sae("topk", 64, 512, k=8)
    n = sum(p.numel() for p in sae.parameters())
    assert estimate_sae(64, 512, 32).terms["parameters"] == n * 4
    # the seeds' 8B models: the published parameter counts
    assert round(known_shape("meta-llama/Llama-3.1-8B").n_params / 1e9, 2) == 8.03
    assert round(known_shape("Qwen/Qwen2.5-7B").n_params / 1e9, 2) == 7.62
    assert "memory estimate (capture)" in est.line()


def test_max_memory_parsing():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert parse_max_memory(None) is None
    with pytest.raises(ConfigError, match="--max-memory: expected device=amount"):
        parse_max_memory("0:70GiB")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        parse_max_memory("gpu0=1GiB")


def test_device_map_load_captures_the_same_rows(tiny_dir):
    plain = load(tiny_dir)
    mapped = load(tiny_dir, device_map="auto", max_memory={"cpu": "8GiB"})
    # the options reach accelerate: a budget nothing fits in offloads everything to disk
    starved = load(tiny_dir, device_map="auto", max_memory={"cpu": "100KiB"})
    assert starved.model.hf_device_map == {"": "disk"}
    cfg = CaptureConfig(sites=["resid.1", "resid.3"], batch_size=2)
    a, b = capture(plain, TEXTS, cfg, progress=False), capture(mapped, TEXTS, cfg, progress=False)
    for s in a:
        assert torch.equal(a[s], b[s])


def test_capture_cli_prints_the_estimate_first(tiny_dir, tmp_path, capsys):
    from deltalens.cli import main

    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "capture",
                "--model",
                tiny_dir,
                "--data",
                str(tmp_path / "t.txt"),
                "--sites",
                "resid.1",
                "--out",
                str(tmp_path / "s"),
            ]
        )
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    assert out.index("memory estimate (capture)") < out.index("activation store")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_bf16_default_and_device_map_offload(tiny_dir):
    lm = load(tiny_dir, device="cuda")
    assert lm.dtype == torch.bfloat16 and lm.device.type == "cuda"
    ref = capture(load(tiny_dir, device="cuda", dtype="float32"), TEXTS, ["resid.3"], progress=False)
    # part of the layers on the GPU, the rest offloaded to CPU memory
    split = load(tiny_dir, dtype="float32", device_map="auto", max_memory={0: "300KiB", "cpu": "8GiB"})
    assert {str(d) for d in split.model.hf_device_map.values()} >= {"0", "cpu"}
    got = capture(split, TEXTS, ["resid.3"], progress=False)
    torch.testing.assert_close(got["resid.3"], ref["resid.3"], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_sae_training_matches_cpu():
    from scale_helpers import train_once

    cpu = train_once("topk", None)
    gpu = train_once("topk", None, device="cuda")
    torch.testing.assert_close(gpu.sae.W_dec.cpu(), cpu.sae.W_dec, atol=1e-3, rtol=1e-3)
