"""SAE training: sparse kernels, architectures, sources, checkpoints/resume, divergence, files."""

from __future__ import annotations

import json

import pytest
import torch

from deltalens.errors import ConfigError, ShapeError, SiteError
from deltalens.sae import (
    SAE,
    SAETrainConfig,
    Trainer,
    TrainingDiverged,
    load_sae,
    read_sparsity,
    train_sae,
    train_saes,
)
from deltalens.sae.kernels import Pattern, sparse_decode, sparse_encode
from deltalens.sae.modules import make_training_sae
from deltalens.sae.sources import ModelSource, StoreSource, TensorSource

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(n=20000, d=32, n_feat=128, active=4, seed=0):
    """Sparse combinations of random unit directions plus an offset."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_feat, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    on = torch.rand(n, n_feat, generator=g) < active / n_feat
    acts = on * torch.rand(n, n_feat, generator=g) * 3
    return acts @ D + 0.5 * torch.ones(d), D


def ev(sae, x):
    with torch.no_grad():
        x_hat = sae(x)
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_sparse_kernels_match_dense_autograd():
    torch.manual_seed(0)
    B, d, S, k = 7, 5, 13, 3
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    W = torch.randn(S, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(S, dtype=torch.float64, requires_grad=True)
    Wd = torch.randn(S, d, dtype=torch.float64, requires_grad=True)
    pre = (x @ W.t() + b).detach()
    v, i = pre.topk(k)
    p, order = Pattern.from_topk(i, S)
    v = v.gather(1, order).reshape(-1)

    def ours(x, W, b, Wd):
        return sparse_decode(torch.relu(sparse_encode(x, W, b, v, p)), Wd, p)

    def dense(x, W, b, Wd):
        pre = x @ W.t() + b
        mask = torch.zeros_like(pre).scatter(1, i, 1.0)
        return (torch.relu(pre) * mask) @ Wd

    g = torch.randn(B, d, dtype=torch.float64)
    torch.testing.assert_close(ours(x, W, b, Wd), dense(x, W, b, Wd))
    ga = torch.autograd.grad((ours(x, W, b, Wd) * g).sum(), [x, W, b, Wd])
    gb = torch.autograd.grad((dense(x, W, b, Wd) * g).sum(), [x, W, b, Wd])
    for a, r in zip(ga, gb):
        torch.testing.assert_close(a, r)
    assert torch.autograd.gradcheck(lambda Wd: sparse_decode(v, Wd, p), (Wd,))


def test_topk_training_learns_and_exports_raw_space(tmp_path):
    x, _ = synthetic()
    x = x * 7.0  # raw scale far from √d, so the folded normalisation matters
    cfg = SAETrainConfig(
        architecture="topk", d_sae=256, k=4, total_tokens=60_000, batch_size=256, lr=5e-3, seed=1
    )
    res = train_sae(x, cfg, site="resid.2", model_name="synthetic", out=tmp_path / "sae", progress=False)
    sae = res.sae
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 4 and sae.site == "resid.2"
    assert ev(sae, x[:4000]) > 0.78
    assert ((sae.encode(x[:100]) != 0).sum(-1) <= 4).all()
    # decoder rows unit norm in training space: in raw space they are 1/scale
    scale = sae.cfg.metadata["deltalens_norm_scale"]
    assert abs(scale - (32**0.5) / float(x.norm(dim=-1).mean())) / scale < 0.05
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((256,), 1 / scale), rtol=1e-4, atol=1e-6)
    # the files: SAELens layout, sparsity, training record; reload gives the same function
    back = load_sae(tmp_path / "sae")
    torch.testing.assert_close(back(x[:50]), sae(x[:50]))
    sp = read_sparsity(tmp_path / "sae")
    assert sp is not None and sp.shape == (256,) and (sp <= 0).all()
    info = json.loads((tmp_path / "sae" / "training.json").read_text())
    assert (
        info["tokens"] == res.tokens and info["history"] and not (tmp_path / "sae" / "checkpoints").exists()
    )
    cfg_json = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (
        cfg_json["normalize_activations"] == "none"
        and cfg_json["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    )


def test_module_export_equals_training_function():
    torch.manual_seed(0)
    for arch in ("relu", "topk", "batchtopk", "jumprelu"):
        m = make_training_sae(arch, 8, 24, k=3)
        m.initialize(torch.Generator().manual_seed(0))
        with torch.no_grad():
            m.b_enc.normal_()
            m.b_dec.normal_()
        if arch == "batchtopk":
            m.threshold.fill_(0.2)
        s = 3.0
        sae = m.to_inference(scale=s)
        x = torch.randn(10, 8)
        pre = m.pre_acts(x * s)
        if arch == "relu":
            f = torch.relu(pre)
        elif arch == "topk":
            f = torch.zeros_like(pre).scatter(1, pre.topk(3).indices, torch.relu(pre.topk(3).values))
        elif arch == "batchtopk":
            f = torch.relu(pre) * (pre > 0.2)
        else:
            f = torch.relu(pre) * (pre > m.theta)
        torch.testing.assert_close(sae.encode(x), f.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x) * s, (f @ m.W_dec + m.b_dec).detach(), atol=1e-4, rtol=1e-4)
        # and back: load_inference inverts to_inference
        m2 = make_training_sae(arch, 8, 24, k=3)
        m2.load_inference(sae, scale=s)
        torch.testing.assert_close(m2.W_enc, m.W_enc.detach())
        torch.testing.assert_close(m2.b_dec, m.b_dec.detach())


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "jumprelu"])
def test_other_architectures_learn(arch):
    x, _ = synthetic(n=12000)
    cfg = SAETrainConfig(
        architecture=arch,
        d_sae=256,
        k=4,
        total_tokens=40_000,
        batch_size=256,
        lr=2e-3,
        l1_coefficient=2.0,
        target_l0=6,
        l0_coefficient=0.3,
    )
    res = train_sae(x, cfg, progress=False)
    sae = res.sae
    want = {"relu": "standard", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}[arch]
    assert sae.cfg.architecture == want
    assert ev(sae, x[:3000]) > 0.55  # from ≤ 0 at initialisation
    l0 = float((sae.encode(x[:3000]) != 0).sum(-1).float().mean())
    if arch == "batchtopk":
        assert 2 < l0 < 8  # mean k per token at the learned threshold
        assert float(sae.threshold.min()) > 0 and torch.all(sae.threshold == sae.threshold[0])
    elif arch == "jumprelu":
        assert 2 < l0 < 15  # near the target L0 of 6
    else:
        assert l0 < 60


def test_dead_latents_and_auxk():
    """Latents that never win the TopK count as dead after the window and get AuxK gradient."""
    x, _ = synthetic(n=8000)
    cfg = SAETrainConfig(
        architecture="topk", d_sae=128, k=2, total_tokens=2048, batch_size=256, dead_window_tokens=512
    )
    t = Trainer(cfg, 32)
    t.initialize(x[:2000])
    with torch.no_grad():
        t.module.b_enc[100:] = -1e4  # these latents never fire → dead after 512 tokens
    for i in range(3):
        rec = t.step(x[i * 256 : (i + 1) * 256])
    assert rec["dead"] >= 28 and bool(t.dead_mask()[100:].all())
    out = t.module.step_loss(x[:256] * t.scale, dead=t.dead_mask())
    assert out.aux > 0
    out.loss.backward()
    assert t.module.W_enc.grad[100:].abs().sum() > 0  # AuxK reaches the dead latents


def test_checkpoint_resume_continues(tmp_path):
    x, _ = synthetic(n=8000)
    cfg = SAETrainConfig(
        architecture="topk",
        d_sae=64,
        k=4,
        total_tokens=256 * 12,
        batch_size=256,
        checkpoint_every_tokens=256 * 4,
    )
    out = tmp_path / "run"
    t = Trainer(cfg, 32, site="resid.1", out=out)
    src = TensorSource(x)
    t.initialize(x[:2000])
    it = src.batches(256)
    for _ in range(9):
        t.step(next(it))
    ck = t.latest_checkpoint()
    assert ck is not None and ck.name == "step_00000008"
    assert len(list((out / "checkpoints").iterdir())) == 2  # keep_checkpoints
    # a new process resumes from step 8 with the same weights and optimizer moments
    t2 = Trainer(cfg, 32, site="resid.1", out=out)
    t2.resume(ck)
    assert t2.step_n == 8 and t2.tokens == 8 * 256
    saved = json.loads((ck / "trainer.json").read_text())
    assert saved["step"] == 8
    from deltalens.io import load_tensors

    state = load_tensors(ck / "state.safetensors")
    torch.testing.assert_close(t2.module.W_enc, state["module.W_enc"])
    p_new = list(t2.module.parameters())[0]
    torch.testing.assert_close(t2.opt.state[p_new]["exp_avg_sq"], state["opt.0.exp_avg_sq"])
    assert float(state["module.W_enc"].sub(t.module.W_enc).abs().max()) > 0  # t went one step further
    with pytest.raises(ConfigError, match="d_in=32"):
        Trainer(cfg, 16, site="resid.1", out=out).resume(ck)
    res = train_saes(src, {"a": t2}, progress=False)
    assert res["a"].tokens == 12 * 256 and t2.step_n == 12


def test_nan_stops_with_step_and_keeps_checkpoint(tmp_path):
    x, _ = synthetic(n=4000)
    cfg = SAETrainConfig(
        architecture="topk", d_sae=64, k=4, total_tokens=256 * 10, batch_size=256, checkpoint_every_tokens=512
    )
    x_bad = x.clone()
    x_bad[256 * 5 + 3, 0] = float("nan")  # batch 6 (unshuffled stream below)

    class Ordered(TensorSource):
        def batches(self, batch_size, *, seed=0, device="cpu"):
            for k in range(0, len(self.x), batch_size):
                yield self.x[k : k + batch_size]

    t = Trainer(cfg, 32, out=tmp_path / "run")
    with pytest.raises(TrainingDiverged) as e:
        train_saes(Ordered(x_bad), {"a": t}, progress=False, resume=False)
    msg = str(e.value)
    assert "step 6" in msg and "step_00000004" in msg and "nan" in msg
    ck = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert (ck / "state.safetensors").is_file()
    state = torch.load if False else None  # noqa: F841 - the checkpoint is safetensors
    from deltalens.io import load_tensors

    assert all(torch.isfinite(v).all() for v in load_tensors(ck / "state.safetensors").values())
    assert not (tmp_path / "run" / "cfg.json").exists()  # no final SAE written


def test_store_source_exclusions_and_training(tiny, tmp_path):
    import deltalens

    texts = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(40)]
    windows = [
        {"prompt_ids": [tiny.tokenizer.bos_token_id or 1] + tiny.encode(t), "response_ids": []} for t in texts
    ]
    store = deltalens.capture(
        tiny, windows, [(2, "resid")], "all", store=tmp_path / "st", val_fraction=0.2, progress=False
    )
    special = list(tiny.tokenizer.all_special_ids)
    src = StoreSource(store, "resid.2", split="train", exclude_token_ids=special, high_norm_factor=None)
    rows = torch.cat(list(_take(src.batches(64), 5)))
    idx = store.index()
    allowed = store.read("resid.2")[
        torch.from_numpy(((idx.split == "train") & ~idx.token_id.isin(special)).to_numpy())
    ]
    # every streamed row is an allowed row (no special token, no val row)
    d = (
        torch.cdist(rows.double(), allowed.double(), compute_mode="donot_use_mm_for_euclid_dist")
        .min(1)
        .values
    )
    assert float(d.max()) < 1e-6
    res = train_sae(
        store,
        SAETrainConfig(d_sae=128, k=8, total_tokens=2048, batch_size=64),
        site="resid.2",
        exclude_token_ids=special,
        progress=False,
    )
    assert res.sae.site == "resid.2" and res.sae.cfg.model_name == "tiny-llama"
    with pytest.raises(Exception, match="has no site resid.1"):
        StoreSource(store, "resid.1")


def _take(it, n):
    for _ in range(n):
        yield next(it)


def test_several_saes_from_one_forward_pass(tiny):
    texts = [f"counting {i} {i + 1} {i + 2} and more words here" for i in range(30)]
    windows = [{"prompt_ids": tiny.encode(t), "response_ids": []} for t in texts]
    src = ModelSource(
        tiny, windows, ["resid.1", "resid.3"], batch_sequences=8, buffer_tokens=512, high_norm_factor=None
    )
    cfg = SAETrainConfig(d_sae=64, k=4, total_tokens=128 * 20, batch_size=128, norm_sample_tokens=256)
    trainers = {
        "l1": Trainer(cfg, 64, site="resid.1"),
        "l3": Trainer(cfg, 64, site="resid.3"),
        "l3b": Trainer(
            SAETrainConfig(d_sae=32, k=2, total_tokens=128 * 20, batch_size=128, norm_sample_tokens=256),
            64,
            site="resid.3",
        ),
    }
    res = train_saes(src, trainers, progress=False)
    assert {r.sae.site for r in res.values()} == {"resid.1", "resid.3"}
    assert all(r.tokens == 128 * 20 for r in res.values())
    # the three SAEs share forward passes: tokens read ≈ one SAE's need (2560 + 256 init) plus
    # the mixing buffer (512), far below three separate runs (3 × 2816)
    assert src.tokens_read < 5000


def test_bad_inputs_are_refused(tiny):
    with pytest.raises(ConfigError, match="unknown SAE architecture"):
        SAETrainConfig(architecture="gated")
    with pytest.raises(ShapeError, match="width 16"):
        Trainer(SAETrainConfig(d_sae=32, k=4), 32).initialize(torch.randn(10, 16))
    sae = SAE.load if False else None  # noqa: F841
    x, _ = synthetic(n=3000)
    res = train_sae(
        x, SAETrainConfig(d_sae=64, k=4, total_tokens=512, batch_size=128), site="resid.1", progress=False
    )
    import deltalens

    # an SAE of width 32 cannot be spliced into a d_model=64 model; a site mismatch names both sites
    with pytest.raises(ShapeError, match="d_in=32.*d_model=64"):
        with deltalens.intervene(tiny, [deltalens.Splice("resid.1", res.sae)]):
            pass
    res64 = train_sae(
        torch.randn(3000, 64),
        SAETrainConfig(d_sae=64, k=4, total_tokens=512, batch_size=128),
        site="resid.1",
        progress=False,
    )
    with pytest.raises(SiteError, match="resid.1.*resid.2"):
        with deltalens.intervene(tiny, [deltalens.Splice("resid.2", res64.sae)]):
            pass


def test_iterative_finetuning_keeps_latent_indices(tmp_path):
    from deltalens.sae.iterative import branch_names, latent_alignment, run_name, train_iterative

    assert run_name(0, 4) == "M0D4" and branch_names("MD", 3) == ["M0D0", "M1D1", "M2D2"]
    assert branch_names("M0D", 3) == ["M0D0", "M0D1", "M0D2"]
    g = torch.Generator().manual_seed(0)
    d, n_feat = 32, 96
    D0 = torch.randn(n_feat, d, generator=g)
    D0 /= D0.norm(dim=1, keepdim=True)
    D1 = D0 + 0.15 * torch.randn(n_feat, d, generator=g)  # iteration 1: features drift a little
    D1 /= D1.norm(dim=1, keepdim=True)

    def data(D, n, p):
        on = torch.rand(n, n_feat, generator=g) < p
        return (on * torch.rand(n, n_feat, generator=g) * 3) @ D

    x0, x1 = data(D0, 12000, 4 / n_feat), data(D1, 12000, 5 / n_feat)
    cfg = SAETrainConfig(d_sae=128, k=4, total_tokens=30_000, batch_size=256, lr=3e-3)
    res = train_iterative(
        [x0, x1], ["M0D0", "M1D1"], lambda n: tmp_path / n, cfg, site="resid.1", progress=False
    )
    parent, child = res[0].sae, res[1].sae
    al = latent_alignment(parent, child)
    assert al["median_cosine"] > 0.9 and al["aligned_fraction"] > 0.7
    assert res[1].extra["alignment_with_parent"]["median_cosine"] == pytest.approx(al["median_cosine"])
    assert ev(child, x1[:3000]) > 0.6
    assert load_sae(tmp_path / "M1D1").cfg.metadata["deltalens_parent"] == "M0D0"
    # an SAE trained from scratch (another initialisation) on iteration 1 data has unrelated indices
    cfg.seed = 1
    scratch = train_sae(x1, cfg, progress=False).sae
    assert latent_alignment(parent, scratch)["median_cosine"] < 0.5


def test_store_windows_mix_every_shard(tmp_path):
    import numpy as np

    from deltalens.store import ActivationStore

    st = ActivationStore(tmp_path / "s")
    st.init(
        model={"name": "m", "weights_hash": "h"},
        sites=["resid.0"],
        d_model=4,
        positions="all",
        reduce=None,
        shard_mb=100 * 16 / 2**20,
    )  # 100 rows of 4 floats per shard
    for shard in range(8):
        rows = torch.full((100, 4), float(shard)) + torch.rand(100, 4) * 0.1
        index = {
            "seq_id": np.full(100, shard),
            "position": np.arange(100, dtype=np.int32),
            "token_id": np.full(100, 5, dtype=np.int32),
            "region": np.zeros(100, dtype=np.int8),
            "token_type": np.array([""] * 100),
            "split": np.array(["train"] * 100),
        }
        st.append({st.sites[0]: rows}, index, n_sequences=1)
    st.finish()
    assert len(st.shard_names()) == 8
    src = StoreSource(st, "resid.0", buffer_shards=2, high_norm_factor=None)
    it = src.batches(50)
    first_window = torch.cat([next(it) for _ in range(4)])  # 200 rows = one window (800 / 4)
    shards_seen = set(first_window[:, 0].floor().long().tolist())
    assert shards_seen == set(range(8))  # a window draws from every shard, not from 2 whole shards
    epoch = torch.cat([first_window] + [next(it) for _ in range(12)])
    assert sorted(epoch[:, 0].tolist()) == sorted(
        st.read("resid.0")[:, 0].tolist()
    )  # each row once per epoch


def test_train_grid_one_sae_per_site_and_k(tmp_path):
    from deltalens.sae import SAETrainResult
    from deltalens.sae.train import train_grid

    x, _ = synthetic(n=3000)
    cfg = SAETrainConfig(architecture="relu", d_sae=32, total_tokens=512, batch_size=128)
    assert cfg.architecture == "standard"  # one name for the vanilla ReLU SAE; relu is read as an alias
    res = train_grid(
        TensorSource(x, "resid.1"),
        cfg.replace(architecture="topk"),
        ["resid.1"],
        [2, 4],
        out=tmp_path,
        progress=False,
    )
    assert [r.extra["name"] for r in res] == ["topk_resid.1_k2", "topk_resid.1_k4"]
    assert [SAETrainResult.load(tmp_path / r.extra["name"]).config.k for r in res] == [2, 4]
    with pytest.raises(ConfigError, match="--k must be ≥ 1, got 0"):
        train_grid(TensorSource(x, "resid.1"), cfg, ["resid.1"], [0], out=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
