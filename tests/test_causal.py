"""Causal experiments with SAE latents: the latent edit, batched generation with an empty edit,
a planted latent (ablation removes its token, steering adds it, random groups do not), the
statistics against independent computations, resume, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deltalens
from deltalens.batched import Sampling, generate_batched
from deltalens.causal import CausalConfig, null_comparison, null_groups, paired_effect, run_causal
from deltalens.errors import ConfigError
from deltalens.hooks import EditLatents, Read
from deltalens.sae.base import SAE, SAEConfig
from deltalens.sae.io import save_sae

PROMPTS = ["Tell me a story", "What is the capital of France?", "Why is the sky blue?", "hello there"]


def _sae(lm, site: str, d_sae: int = 48, seed: int = 0, first: torch.Tensor | None = None) -> SAE:
    """A ReLU SAE with unit decoder rows (row 0 = ``first`` when given) and W_enc = W_decᵀ."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d_sae, lm.d_model, generator=g)
    if first is not None:
        D = D - (D @ first)[:, None] * first
        D[0] = first
    D = D / D.norm(dim=1, keepdim=True)
    sae = SAE(SAEConfig(lm.d_model, d_sae, site=site))
    with torch.no_grad():
        sae.W_dec.copy_(D)
        sae.W_enc.copy_(D.T)
        sae.b_enc.fill_(-0.05)
    return sae


def test_edit_latents_formula_and_empty_edit_is_exact(tiny):
    site = "resid.1"
    sae = _sae(tiny, site)
    ids = torch.tensor([tiny.encode("Tell me a story about a dog")])
    rd = Read(site)
    with deltalens.intervene(tiny, [rd]):
        tiny.model(input_ids=ids)
    x = rd.value
    with deltalens.intervene(tiny, [EditLatents(site, sae, [3, 7], values=0.0)]):
        logits = tiny.model(input_ids=ids).logits
    # independent: x − Σ_j f_j d_j through the rest of the model with a Replace
    f = sae.encode(x)
    want = x - f[..., [3, 7]] @ sae.W_dec[[3, 7]]
    with deltalens.intervene(tiny, [deltalens.Replace(site, want[0])]):
        ref = tiny.model(input_ids=ids).logits
    assert torch.allclose(logits, ref, atol=1e-5)
    # mean ablation: f_j → a_j
    a = torch.rand(sae.d_sae)
    rd2 = Read("resid.1")
    with deltalens.intervene(tiny, [EditLatents(site, sae, [3], values=a), rd2]):
        tiny.model(input_ids=ids)
    assert torch.allclose(rd2.value, x - (f[..., [3]] - a[3]) * sae.W_dec[3], atol=1e-5)
    # an empty edit changes nothing, bit for bit
    with deltalens.intervene(tiny, [EditLatents(site, sae, [[], [5]], rows=[0, 1])]):
        out = tiny.model(input_ids=ids).logits
    assert torch.equal(out, tiny.model(input_ids=ids).logits)
    with pytest.raises(deltalens.errors.ShapeError, match="latent id 48 is out of range"):
        EditLatents(site, sae, [48])


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(True, 1.0, 0.9, 3)], ids=["greedy", "sampled"])
def test_batched_generation_empty_edit_equals_control(tiny, sampling):
    """Left-padded prompts of different lengths, KV cache, shared prefill: the empty-edit rows
    equal the control rows token for token; greedy control rows equal deltalens.generate."""
    sae = _sae(tiny, "resid.2")

    def make(chunk, row0, Q):
        rows, lats = [], []
        for c, r0 in zip(chunk, row0):
            for q in range(Q):
                rows.append(r0 + q)
                lats.append([] if c < 2 else [0, 1, 2, 3, 4, 5])
        return [EditLatents("resid.2", sae, lats, rows=rows, positions="response")]

    out = generate_batched(tiny, PROMPTS, 3, make, n=2, sampling=sampling, max_new_tokens=10, progress=False)
    ctrl = generate_batched(
        tiny, PROMPTS, 1, lambda *_: [], n=2, sampling=sampling, max_new_tokens=10, progress=False
    )[0]
    assert [g.response_ids for g in out[0]] == [g.response_ids for g in ctrl]
    assert [g.response_ids for g in out[1]] == [g.response_ids for g in ctrl]
    assert [g.response_ids for g in out[2]] != [g.response_ids for g in ctrl]  # the edit does something
    if not sampling.do_sample:
        ref = deltalens.generate(tiny, PROMPTS, max_new_tokens=10, progress=False)
        assert [g.response_ids for g in ctrl[::2]] == [g.response_ids for g in ref]
    else:  # rollouts differ, and every row draws its own numbers
        assert [g.response_ids for g in ctrl[::2]] != [g.response_ids for g in ctrl[1::2]]


def _planted(d_sae: int = 48):
    """Base and fine-tuned tiny GPT-2 where the fine-tune's last block writes β·u, u the direction
    that makes token t (" dog"); SAE latent 0 reads and writes u, the others random directions."""
    from tiny import tiny_model

    base, ft = tiny_model("gpt2", seed=0), tiny_model("gpt2", seed=0)
    t = base.tokenizer.encode(" dog")[0]
    with torch.no_grad():
        for m in (base, ft):
            m.model.get_output_embeddings().weight[t] *= 8.0
        W = base.model.get_output_embeddings().weight.detach()
        u = W[t] - W[t].mean()
        u = u / u.norm()
        ft.model.transformer.h[-1].mlp.c_proj.bias += 30.0 * u
    return base, ft, _sae(base, "resid.3", d_sae, first=u), t


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    base, ft, sae, t = _planted()
    path = tmp_path_factory.mktemp("planted") / "M1D1"
    save_sae(sae, path)
    return base, ft, path, t


def _rate(t):
    def rate(gens):
        return [sum(x == t for x in g.response_ids) / max(len(g.response_ids), 1) for g in gens]

    return rate


def _cfg(path, **kw):
    base = dict(
        name="planted",
        prompts=PROMPTS,
        models={0: "base", 1: "ft"},
        saes={"M1D1": str(path)},
        groups=[{"name": "planted", "latents": [0]}, {"name": "other", "latents": [5, 9]}],
        branches=["MD"],
        n=3,
        max_new_tokens=8,
        positions="all",
        coefficients=[1.0],
        null_groups=6,
        bootstrap=500,
        permutations=1000,
    )
    base.update(kw)
    return CausalConfig(**base)


def test_planted_latent_ablation_and_steering_against_null(planted, tmp_path):
    base, ft, path, t = planted
    models = {"base": base, "ft": ft}
    res = run_causal(
        _cfg(path), tmp_path / "run", scorers={"rate": _rate(t)}, loader=models.__getitem__, progress=False
    )
    rows = {(r["type"], r["group"]): r for r in res.rows}
    abl, steer = rows[("ablation", "planted")], rows[("steering", "planted")]
    assert abl["control_mean"] > 0.9 and abl["mean"] < 0.05  # ablating latent 0: t's rate → ~0
    assert steer["control_mean"] < 0.5 and steer["effect"] > 0.4  # steering the base model with it raises it
    for r in (abl, steer):
        assert r["outside_null"] and (r["z"] is None or abs(r["z"]) > 3) and r["p"] < 0.01
        assert r["ci_low"] <= r["effect"] <= r["ci_high"]
    # random latents (the null cells) leave the rate near the control; the control group too
    assert abs(abl["null_mean"]) < 0.15 and abs(rows[("ablation", "other")]["effect"]) < 0.15
    assert rows[("ablation", "other")]["outside_null"] is False or abs(rows[("ablation", "other")]["z"]) < 3
    # files: one line per cell, summary.csv, figures, info
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 + 2 * 2 * (
        1 + 6
    )  # 2 controls + (ablation, steering) × 2 groups × (real + 6 nulls)
    assert (tmp_path / "run" / "summary.csv").read_text().startswith("type,group,iteration")
    assert list((tmp_path / "run").glob("effect_by_iteration_*.png"))
    from deltalens.info import describe

    info = describe(tmp_path / "run")
    assert info["kind"] == "causal experiments" and info["cells"] == len(lines)


def test_resume_and_cellwise_equal_batched(planted, tmp_path):
    """A killed run (last lines lost, one torn) re-run computes only the missing cells; running the
    cells one by one (max_rows = one cell) gives the same generations and scores."""
    base, ft, path, t = planted
    models = {"base": base, "ft": ft}
    kw = dict(scorers={"rate": _rate(t)}, loader=models.__getitem__, progress=False)
    cfg = _cfg(path, groups=[{"name": "planted", "latents": [0]}], null_groups=2, n=2)
    full = run_causal(cfg, tmp_path / "a", **kw)
    res_path = tmp_path / "a" / "results.jsonl"
    lines = res_path.read_text().splitlines()
    res_path.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:25])  # kill: two lost, one torn
    seen = []
    again = run_causal(cfg, tmp_path / "a", on_cell=seen.append, **kw)
    assert len(seen) == 3 and again.rows == full.rows
    one = run_causal(cfg.replace(max_rows=len(PROMPTS) * 2), tmp_path / "b", **kw)
    a = {json.loads(x)["key"]: json.loads(x) for x in lines}
    b = {
        json.loads(x)["key"]: json.loads(x)
        for x in (tmp_path / "b" / "results.jsonl").read_text().splitlines()
    }
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["responses"] == b[k]["responses"] and a[k]["scores"] == b[k]["scores"], k
    assert one.rows == full.rows
    with pytest.raises(ConfigError, match="another configuration"):
        run_causal(cfg.replace(n=3), tmp_path / "a", **kw)


def test_statistics_match_independent_computation():
    rng = np.random.default_rng(0)
    c = rng.normal(size=40)
    t = c + 0.5 + rng.normal(scale=0.3, size=40)
    e = paired_effect(t, c, bootstrap=4000, permutations=4000, seed=1)
    d = t - c
    assert e["effect"] == pytest.approx(d.mean())
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert e["ci_low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.05)
    assert e["ci_high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.05)
    assert e["p"] == pytest.approx(1 / 4001)  # no sign flip reaches a shift of 0.5 with sd 0.3
    # the sign-flip p of a small effect is close to the paired t-test's
    from scipy import stats as sst

    t2 = c + 0.05 + rng.normal(scale=0.3, size=40)
    assert paired_effect(t2, c, permutations=20000)["p"] == pytest.approx(
        sst.ttest_rel(t2, c).pvalue, abs=0.03
    )
    z = null_comparison(1.0, [0.1, -0.1, 0.0, 0.2])
    mu, sd = 0.05, float(np.std([0.1, -0.1, 0.0, 0.2], ddof=1))
    assert z["z"] == pytest.approx((1.0 - mu) / sd) and z["outside_null"] is True
    assert z["null_low"] == pytest.approx(mu - 1.96 * sd) and z["p_null"] == pytest.approx(1 / 5)


def test_null_groups_are_matched_and_exclude_the_group():
    rate = np.concatenate([np.zeros(10), np.linspace(0.01, 0.5, 90)])
    group = [3, 50, 95]  # a dead latent, a middle one, a frequent one
    draws = null_groups(group, rate, 20, 10, "seed")
    assert len(draws) == 20 and all(len(d) == 3 and not set(d) & set(group) for d in draws)
    from deltalens.causal.grid import firing_bins

    bins = firing_bins(rate, 10)
    for d in draws:
        assert [bins[j] for j in d] == [bins[j] for j in group]
    assert null_groups(group, rate, 20, 10, "seed") == draws  # seeded
    assert len(set(draws)) > 10


def test_bad_input_before_any_generation(planted, tmp_path):
    base, ft, path, t = planted
    models = {"base": base, "ft": ft}
    kw = dict(scorers={"rate": _rate(t)}, loader=models.__getitem__, progress=False)
    out = tmp_path / "r"
    cases = [
        (dict(groups=[{"name": "g", "latents": [48]}]), "latent id 48 is out of range for SAE M1D1"),
        (dict(branches=["M0D"]), "no SAE M0D1"),
        (dict(iterations=[2]), "no SAE M2D2"),
        (dict(models={0: "base"}), "needs model M1"),
        (
            dict(groups=[{"name": "g", "latents": [1], "metric": "plddt"}]),
            "metric 'plddt', which has no scorer",
        ),
    ]
    for over, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            run_causal(_cfg(path, **over), out, **kw)
        assert not out.exists()
    wide = tmp_path / "wide"
    save_sae(SAE(SAEConfig(32, 8, site="resid.3")), wide)
    with pytest.raises(ConfigError, match="d_in=32 does not fit"):
        run_causal(_cfg(wide), out, **kw)
    with pytest.raises(ConfigError, match="--types must be one of"):
        _cfg(path, types=["patching"])


def test_cli_run_summary_and_info(planted, tmp_path, capsys):
    """`deltalens causal run` from a grid file with models saved to disk, then `summary` and `info`."""
    from deltalens.cli import main
    from tiny import save_tiny

    base, ft, path, _t = planted
    save_tiny(base, tmp_path / "M0")
    save_tiny(ft, tmp_path / "M1")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "grid.yaml").write_text(
        "name: cli\nprompts: p.txt\nmodels: {0: M0, 1: M1}\n"
        f"saes: {{M1D1: {path}}}\ngroups: [{{name: planted, latents: [0]}}]\n"
        "metrics: {dog: 'keywords:dog'}\nbranches: [MD]\nn: 2\nmax_new_tokens: 6\npositions: all\nnull_groups: 3\n"
    )
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "causal",
                "run",
                "--grid",
                str(tmp_path / "grid.yaml"),
                "--coefficients",
                "1,2",
                "-e",
                str(tmp_path / "exp"),
            ]
        )
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    run = tmp_path / "exp" / "causal" / "cli"
    assert (
        "causal grid cli" in out
        and (run / "summary.csv").is_file()
        and (run / "dose_response_dog.png").is_file()
    )
    rows = list(__import__("csv").DictReader(open(run / "summary.csv")))
    abl = next(r for r in rows if r["type"] == "ablation")
    assert float(abl["effect"]) < -2 and float(abl["control_mean"]) > 3  # " dog" words per answer drop
    assert {r["coef"] for r in rows if r["type"] == "steering"} == {"1.0", "2.0"}
    for argv in (["causal", "summary", str(run)], ["info", str(run)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "planted" in out and "causal experiments" in out
    from deltalens.report.html import build_report

    page = build_report(tmp_path / "exp").read_text()
    assert "Causal experiments" in page and "dose" in page and "null band" in page
