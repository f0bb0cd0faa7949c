"""Circuits with edges: feature-circuit edges (Marks et al. 2024), component edges (EAP,
EAP-IG), the circuit result and its files — each edge weight checked against a brute-force
Jacobian product (``torch.autograd.functional.jacobian`` of plain patched runs) on tiny models."""

from __future__ import annotations

import pytest
import torch

from deltalens import Read, Replace, Splice, intervene
from deltalens.circuits import build_task
from deltalens.circuits.attribution import gradient_path
from deltalens.circuits.feature_edges import feature_edges, site_order
from deltalens.circuits.graph import Circuit
from deltalens.data.pairs import pair_from_dict
from deltalens.errors import ConfigError
from deltalens.hooks import Site
from deltalens.sae import SAE, SAEConfig

RECS = [
    {
        "clean": "The capital of France is",
        "corrupted": "The capital of dog is",
        "clean_answer": " Paris",
        "corrupted_answer": " the",
    },
    {
        "clean": "The dog sleeps in the sun",
        "corrupted": "The dog sleeps in the fox",
        "clean_answer": " about",
        "corrupted_answer": " dog",
    },
]


def pairs():
    return [pair_from_dict(r, f"pairs.jsonl:{i + 1}") for i, r in enumerate(RECS)]


def make_sae(lm, site, seed, d_sae=16, model_name=None):
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(lm.d_model, d_sae, site=site, model_name=model_name or lm.name))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(lm.d_model, d_sae, generator=g) * 3 / lm.d_model**0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(-0.05)
    return sae


SITES = ("resid.0", "attn_out.1", "mlp_out.1", "resid.2")


@pytest.fixture(scope="module")
def fc(tiny):
    task = build_task(tiny, pairs())
    saes = [make_sae(tiny, s, i) for i, s in enumerate(SITES)]
    return task, saes, feature_edges(tiny, task, saes, max_nodes_per_site=None)


# ---- feature edges ---------------------------------------------------------------------------


def test_feature_edges_sum_to_node_scores(fc):
    """IE(u) = IE(u → m) + Σ_d IE(u → d): every path has a first SAE site (or none)."""
    _, _, c = fc
    out: dict[str, float] = {}
    for s, _, w in c.edges:
        out[s] = out.get(s, 0.0) + w
    nodes = [n for n in c.nodes if n["type"] != "logit"]
    assert {n["site"] for n in nodes} == set(SITES)
    assert sum(abs(n["score"]) for n in nodes) > 1e-2
    for n in nodes:
        assert out.get(n["id"], 0.0) == pytest.approx(n["score"], abs=1e-4), n["id"]


def _site_values(lm, task, which, sae_sites):
    """Latents and errors of each SAE on a plain run (no splice changes the forward)."""
    reads = {s: Read(s) for s in sae_sites}
    with torch.no_grad(), intervene(lm, list(reads.values())):
        task.forward(lm, task.ids(which), task.mask)
    out = {}
    for s, sae in sae_sites.items():
        x = reads[s].value
        f = sae.encode(x)
        out[s] = (f, x - sae.decode(f))
    return out


def _brute_edge(lm, task, saes_by_site, u, d, p, i, q, j):
    """IE(u_i@p → d_j@q) from full Jacobians: total ∂m/∂d by jacobian of the metric w.r.t.
    d's latents (or error), ∂d/∂u by jacobian of d's live value w.r.t. u's latents with every
    SAE site between them replaced by its base value (the stop-gradient)."""
    base = _site_values(lm, task, "corrupted", saes_by_site)
    src = _site_values(lm, task, "clean", saes_by_site)
    sae_u, sae_d = saes_by_site[u], saes_by_site[d]
    k_u = 0 if i is not None else 1
    k_d = 0 if j is not None else 1
    ids, mask = task.ids("corrupted"), task.mask

    def metric_of_d(var):
        kw = {"edit": lambda f: var} if k_d == 0 else {"edit_error": lambda e: var}
        with intervene(lm, [Splice(d, sae_d, check_site=False, **kw)]):
            return task.metric(task.forward(lm, ids, mask))[0].mean()

    with gradient_path(lm):
        g_d = torch.autograd.functional.jacobian(metric_of_d, base[d][k_d].clone())
    between = [s for s in saes_by_site if site_order(u) < site_order(s) < site_order(d)]
    freeze = {s: Read(s) for s in between}
    with torch.no_grad(), intervene(lm, list(freeze.values())):
        task.forward(lm, ids, mask)

    def down_of_up(var):
        kw = {"edit": lambda f: var} if k_u == 0 else {"edit_error": lambda e: var}
        r = Read(d, keep_grad=True)
        ivs = (
            [Splice(u, sae_u, check_site=False, **kw)] + [Replace(s, freeze[s].value) for s in between] + [r]
        )
        with intervene(lm, ivs):
            task.forward(lm, ids, mask)
        fd = sae_d.encode(r.value)
        live = fd if k_d == 0 else r.value - sae_d.decode(fd)
        v = live[:, q, j] if k_d == 0 else live[:, q]  # [S] or [S, d]
        return v

    with gradient_path(lm):
        jac = torch.autograd.functional.jacobian(down_of_up, base[u][k_u].clone())
    delta = src[u][k_u] - base[u][k_u]
    total = 0.0
    S = task.n_seqs
    for s in range(S):
        if k_d == 0:
            dd = jac[s, s]  # ∂d[s]/∂u[s]: [T, D_u] or [T, d]
            du = dd[p, i] * delta[s, p, i] if k_u == 0 else (dd[p] * delta[s, p]).sum()
            total += float((g_d[s, q, j] * du).detach())
        else:
            dd = jac[s, :, s]  # [d_out, T, ...]
            if k_u == 0:
                vec = dd[:, p, i] * delta[s, p, i]
            else:
                vec = (dd[:, p] * delta[s, p]).sum(-1)
            total += float((g_d[s, q] * vec).sum().detach())
    return total


def test_feature_edges_equal_brute_force_jacobian_products(tiny, fc):
    task, saes, c = fc
    by_site = {Site.parse(s.cfg.site): s for s in saes}
    weights = {(a, b): w for a, b, w in c.edges}
    # the largest edges of each kind: latent→latent, error→latent, latent→error, across sites
    checked = 0
    for kinds in (("latent", "latent"), ("error", "latent"), ("latent", "error"), ("error", "error")):
        cands = [
            e
            for e in c.top_edges(len(c.edges))
            if e[1] != "logits" and (c.node(e[0])["type"], c.node(e[1])["type"]) == kinds
        ][:2]
        for a, b, _w in cands:
            na, nb = c.node(a), c.node(b)
            got = _brute_edge(
                tiny,
                task,
                by_site,
                Site.parse(na["site"]),
                Site.parse(nb["site"]),
                na["position"],
                na["index"],
                nb["position"],
                nb["index"],
            )
            assert weights[(a, b)] == pytest.approx(got, abs=1e-4, rel=1e-4), (a, b)
            checked += 1
    assert checked >= 6
    # an edge across a frozen site (resid.0 → resid.2 passes through attn_out.1, mlp_out.1)
    long = [e for e in c.edges if e[0].startswith("resid.0") and e[1].startswith("resid.2")]
    assert long
    a, b, w = max(long, key=lambda e: abs(e[2]))
    na, nb = c.node(a), c.node(b)
    got = _brute_edge(
        tiny,
        task,
        by_site,
        Site.parse(na["site"]),
        Site.parse(nb["site"]),
        na["position"],
        na["index"],
        nb["position"],
        nb["index"],
    )
    assert w == pytest.approx(got, abs=1e-4, rel=1e-4)


def test_thresholds_prune_nodes_and_edges(tiny, fc):
    task, saes, full = fc
    c = feature_edges(tiny, task, saes, node_threshold=0.01, edge_threshold=0.005, max_nodes_per_site=5)
    per_site: dict[str, int] = {}
    for n in c.nodes:
        if n["type"] != "logit":
            assert abs(n["score"]) >= 0.01
            per_site[n["site"]] = per_site.get(n["site"], 0) + 1
    assert max(per_site.values()) <= 5
    assert all(abs(w) >= 0.005 for _, _, w in c.edges)
    ids = {n["id"] for n in c.nodes}
    assert all(a in ids and b in ids for a, b, _ in c.edges)
    full_w = {(a, b): w for a, b, w in full.edges}
    for a, b, w in c.edges:  # pruning does not change the weights of the edges it keeps
        assert w == pytest.approx(full_w[(a, b)], abs=1e-6)


def test_circuit_saves_json_and_parquet_and_info_reads_it(fc, tmp_path):
    from deltalens.info import describe

    _, _, c = fc
    path = c.save(tmp_path / "fc")
    assert (tmp_path / "fc" / "edges.parquet").is_file()
    back = Circuit.load(tmp_path / "fc")
    assert back.nodes == c.nodes
    assert len(back.edges) == len(c.edges)
    assert back.edges[0][0] == c.edges[0][0] and back.edges[0][2] == pytest.approx(c.edges[0][2])
    info = describe(path)
    assert info["kind"] == Circuit.KIND and info["edges"] == len(c.edges)


def test_feature_edges_bad_input(tiny):
    task = build_task(tiny, pairs())
    with pytest.raises(ConfigError, match="different models"):
        feature_edges(
            tiny, task, [make_sae(tiny, "resid.0", 0), make_sae(tiny, "resid.1", 1, model_name="other")]
        )
    with pytest.raises(ConfigError, match="two SAEs at resid.0"):
        feature_edges(tiny, task, [make_sae(tiny, "resid.0", 0), make_sae(tiny, "resid.0", 1)])
    with pytest.raises(ConfigError, match="does not exist"):
        feature_edges(tiny, task, [make_sae(tiny, "resid.9", 0)])


# ---- component edges: EAP, EAP-IG, exact edge patching ---------------------------------------


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def comp(request):
    from deltalens.circuits.component_edges import component_edges
    from tiny import tiny_model

    lm = tiny_model(request.param)
    task = build_task(lm, pairs())
    return lm, task, component_edges(lm, task, "eap"), component_edges(lm, task, "eap-ig", steps=5)


def test_head_outputs_add_up_to_the_attention_output(comp):
    """Σ_h z_h @ W_O[h] (+ the projection's bias) = attn_out, per layer (GQA llama, GPT-2 Conv1D)."""
    from deltalens.circuits.component_edges import ComponentGraph
    from deltalens.hooks import HeadRead

    lm, task, _, _ = comp
    g = ComponentGraph(lm)
    reads = [HeadRead(1), Read(Site(1, "attn_out"))]
    with torch.no_grad(), intervene(lm, reads):
        task.forward(lm, task.clean_ids, task.mask)
    H = g.head_w[1].shape[0]
    assert H == lm.model.config.num_attention_heads
    total = sum(g.head_out(reads[0].value, 1, h) for h in range(H))
    bias = lm.arch.head_projection(1)[0].bias
    if bias is not None:
        total = total + bias
    torch.testing.assert_close(total, reads[1].value, atol=1e-5, rtol=1e-5)


def test_eap_edges_equal_brute_force_derivatives_of_edge_patching(comp):
    """EAP(u → v) = d/dε m(base run with in_v += ε Δout_u) at ε = 0, by a full Jacobian."""
    from deltalens.circuits.component_edges import ComponentGraph
    from deltalens.hooks import BranchInput

    lm, task, eap, _ = comp
    g = ComponentGraph(lm)
    out_src, _ = g.run_outputs(task, "clean")
    out_base, _ = g.run_outputs(task, "corrupted")
    up = {u.id: i for i, u in enumerate(g.up)}
    down = {v.id: v for v in g.down}
    picks = eap.top_edges(4) + [e for e in eap.edges if e[0].startswith("head.0")][:2]
    picks += [e for e in eap.edges if e[1].startswith("mlp.")][:2]
    for a, b, w in picks:
        v = down[b]
        d = out_src[up[a]] - out_base[up[a]]

        def m_of(eps, v=v, d=d):
            with intervene(lm, [BranchInput(v.layer, v.branch, delta=eps * d)]):
                return task.metric(task.forward(lm, task.corrupted_ids, task.mask))[0].mean()

        with gradient_path(lm):
            bf = float(torch.autograd.functional.jacobian(m_of, torch.tensor(0.0)))
        assert w == pytest.approx(bf, abs=1e-4, rel=1e-4), (a, b)


def test_node_scores_equal_gradient_at_the_node_output(comp):
    """Σ_v EAP(u → v) = Σ Δout_u · ∂m/∂out_u: the MLP node of layer 1 from a plain Read gradient."""
    lm, task, eap, _ = comp
    reads = {w: Read(Site(1, "mlp_out")) for w in ("clean", "corrupted")}
    for w, r in reads.items():
        with torch.no_grad(), intervene(lm, [r]):
            task.forward(lm, task.ids(w), task.mask)
    r = Read(Site(1, "mlp_out"), keep_grad=True)
    with gradient_path(lm), intervene(lm, [r]):
        m = task.metric(task.forward(lm, task.corrupted_ids, task.mask))[0].mean()
        (grad,) = torch.autograd.grad(m, [r.value])
    want = float(((reads["clean"].value - reads["corrupted"].value) * grad).sum())
    assert eap.node("mlp.1")["score"] == pytest.approx(want, abs=1e-4)


def test_eap_ig_tracks_exact_edge_patching(comp):
    from deltalens.circuits import pearson
    from deltalens.circuits.component_edges import edge_patching

    lm, task, eap, ig = comp
    edges = [(a, b) for a, b, _ in eap.edges]
    exact = edge_patching(lm, task, edges)
    w_ig = {(a, b): w for a, b, w in ig.edges}
    r = pearson(torch.tensor([w_ig[e] for e in edges]), exact)
    assert r >= 0.8, r
    assert float(exact.abs().max()) > 1e-2  # the task has signal


def test_edge_budget_endpoints_are_the_clean_and_corrupted_runs(comp, tmp_path):
    from deltalens.circuits.budget import BUDGETS, EdgeBudgetCurve, edge_budget_curve

    lm, task, _, ig = comp
    curve = edge_budget_curve(lm, task, ig)
    assert curve.f_model == pytest.approx(ig.clean, abs=1e-4)
    assert curve.f_empty == pytest.approx(ig.corrupted, abs=1e-4)  # every edge patched = corrupted run
    assert curve.budgets == list(BUDGETS) and curve.kept == sorted(curve.kept)
    f = curve.faithfulness
    # CPR / CMD are trapezoids over 0, the budgets, 1
    xs = [0.0] + [b / 100 for b in BUDGETS] + [1.0]
    ys = [0.0] + f + [1.0]
    cpr = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
    assert curve.cpr == pytest.approx(cpr)
    back = EdgeBudgetCurve.load(curve.save(tmp_path))
    assert back.faithfulness == pytest.approx(f) and back.cmd == pytest.approx(curve.cmd)
