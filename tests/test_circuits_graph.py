"""Transcoders and attribution graphs: edges of the linearised replacement model against
full Jacobians of an independent re-implementation of the tiny Llama's forward pass with
frozen attention patterns and norm scales (written here from the HF modules' weights),
pruning, scores, the graph JSON against the schema of circuit-tracer's frontend models,
and transcoder training with the SAE trainer."""

from __future__ import annotations

import pytest
import torch

from deltalens.circuits.attribution_graph import attribution_graph, graph_circuit, prune
from deltalens.sae.base import SAEConfig
from deltalens.sae.transcoder import Transcoder

PROMPT = "The capital of France is"


def make_tc(lm, layer, d=32, skip=True):
    g = torch.Generator().manual_seed(100 + layer)
    tc = Transcoder(
        SAEConfig(lm.d_model, d, site=f"mlp_out.{layer}", model_name=lm.name, apply_b_dec_to_input=False),
        skip=skip,
    )
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(lm.d_model, d, generator=g) * 2 / lm.d_model**0.5)
        tc.W_dec.copy_(torch.randn(d, lm.d_model, generator=g) / d**0.5)
        tc.b_enc.fill_(-0.1)
        tc.b_dec.copy_(torch.randn(lm.d_model, generator=g) * 0.1)
        if skip:
            tc.W_skip.copy_(torch.randn(lm.d_model, lm.d_model, generator=g) * 0.2 / lm.d_model**0.5)
    return tc


@pytest.fixture(scope="module")
def built(tiny):
    tcs = {layer: make_tc(tiny, layer) for layer in range(tiny.n_layers)}
    g = attribution_graph(
        tiny, PROMPT, tcs, max_feature_nodes=24, batch_size=12, max_logits=2, constant_first=False
    )
    return tcs, g


@pytest.fixture(scope="module")
def built_cf(tiny):
    """The default: the first position's MLP outputs held constant."""
    tcs = {layer: make_tc(tiny, layer) for layer in range(tiny.n_layers)}
    return tcs, attribution_graph(tiny, PROMPT, tcs, max_feature_nodes=24, batch_size=12, max_logits=2)


def _manual(lm, ids, tcs, emb, feats, errs, consts, const_first=False):
    """Tiny Llama forward written out: frozen norm factors and attention patterns from
    ``consts`` (recorded when ``consts["record"]``), MLPs replaced by transcoder + error
    (with ``const_first``: at position 0 the recorded MLP output, a constant, and zero
    features and errors)."""
    m = lm.model.model
    cfg = lm.model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    h = emb
    pres = []
    rec = consts.get("record", False)
    for layer_i, layer in enumerate(m.layers):
        if rec:
            consts.setdefault("c_in", []).append((layer.input_layernorm(h) / h).detach())
        xn = h * consts["c_in"][layer_i]
        at = layer.self_attn
        v = at.v_proj(xn)
        T = v.shape[0]
        hd = v.shape[-1] // KV
        v = v.view(T, KV, hd).repeat_interleave(H // KV, dim=1)  # query head h reads kv head h // (H/KV)
        P = consts["P"][layer_i]  # [H, T, T]
        o = torch.einsum("hts,shd->thd", P, v).reshape(T, H * hd)
        h = h + at.o_proj(o)
        if rec:
            consts.setdefault("c_post", []).append((layer.post_attention_layernorm(h) / h).detach())
        xn2 = h * consts["c_post"][layer_i]
        tc = tcs[layer_i]
        pre = tc.encode_pre(xn2)
        pres.append(pre)
        if rec:
            f = tc.activation(pre).detach()
            mlp = layer.mlp(xn2).detach()
            err = (mlp - tc.decode(f) - tc.skip(xn2)).detach()
            if const_first:
                f[0], err[0] = 0.0, 0.0
                consts.setdefault("mlp0", []).append(mlp[0])
            feats.append(f)
            errs.append(err)
        out = tc.decode(feats[layer_i]) + tc.skip(xn2) + errs[layer_i]
        if const_first:
            out = torch.cat([consts["mlp0"][layer_i][None], out[1:]])
        h = h + out
    if rec:
        consts["c_f"] = (m.norm(h) / h).detach()
    return pres, lm.model.lm_head(h * consts["c_f"])


@pytest.mark.parametrize("const_first", [False, True])
def test_graph_edges_equal_brute_force_jacobians(tiny, built, built_cf, const_first):
    tcs, g = built_cf if const_first else built
    assert g.meta["constant_first"] is const_first
    ids = torch.tensor([g.token_ids])
    with torch.no_grad():
        out = tiny.model(input_ids=ids, output_attentions=True)
        emb = tiny.model.model.embed_tokens(ids)[0]
    consts = {"P": [a[0] for a in out.attentions], "record": True}
    feats, errs = [], []
    with torch.no_grad():
        _, z = _manual(tiny, ids, tcs, emb, feats, errs, consts, const_first)
    torch.testing.assert_close(z, out.logits[0], atol=1e-4, rtol=1e-4)  # the rewrite is the model
    consts["record"] = False
    F, L, T = g.n_features, g.n_layers, g.n_pos
    V = tiny.vocab_size

    def target_value(kind, a, p, i, leaves):
        e, fs, es = leaves
        pres, z = _manual(tiny, ids, tcs, e, fs, es, consts, const_first)
        if kind == "feature":
            return pres[a][p, i]
        return z[-1, g.logit_ids[a]] - z[-1].mean()

    def brute_row(kind, a, p, i):
        base = (emb, [f.clone() for f in feats], [e.clone() for e in errs])

        def fn(e, *rest):
            return target_value(kind, a, p, i, (e, list(rest[:L]), list(rest[L:])))

        jac = torch.autograd.functional.jacobian(fn, (base[0], *base[1], *base[2]))
        row = torch.zeros(F + L * T + T)
        for j, (layer, pos, f) in enumerate(g.features.tolist()):
            row[j] = jac[1 + layer][pos, f] * feats[layer][pos, f]
        for layer in range(L):
            row[F + layer * T : F + (layer + 1) * T] = (jac[1 + L + layer] * errs[layer]).sum(-1)
        row[F + L * T :] = (jac[0] * emb).sum(-1)
        return row

    rows = [(j, ("feature", *g.features[j].tolist())) for j in range(F) if g.adjacency[j].abs().sum() > 0][:3]
    rows += [(F + L * T + T + k, ("logit", k, 0, 0)) for k in range(len(g.logit_ids))]
    assert len(rows) >= 4
    for r, (kind, a, p, i) in rows:
        want = brute_row(kind, a, p, i)
        got = g.adjacency[r, : F + L * T + T]
        assert float(want.abs().max()) > 1e-3
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert V == tiny.vocab_size


def test_pruning_keeps_tokens_and_logits_and_scores_are_fractions(built):
    _, g = built
    node, edge = prune(g, 0.8, 0.98)
    _, _, tok, logit = g.slices()
    assert node[tok.start :].all()
    assert bool(edge.any()) and not bool((edge & ~(node[:, None] & node[None, :])).any())
    s = g.scores()
    assert 0 < s["replacement"] <= 1 and 0 < s["completeness"] <= 1
    c = graph_circuit(g)
    assert c.top_path()[-1].startswith(f"{g.n_layers + 1}_") and len(c.top_path()) >= 2


def test_constant_first_position_has_no_feature_or_error_influence(built_cf):
    _, g = built_cf
    F, L, T = g.n_features, g.n_layers, g.n_pos
    assert g.n_features > 0 and not bool((g.features[:, 1] == 0).any())
    err = g.adjacency[:, F : F + L * T].view(-1, L, T)
    assert float(err[:, :, 0].abs().max()) == 0.0 and float(err.abs().max()) > 0


def _all_token_paths(g):
    """Every path from a token node to logit 0, enumerated exhaustively (no memo), with
    its product of row-normalised |A|."""
    from deltalens.circuits.attribution_graph import normalise_rows

    A = normalise_rows(g.adjacency).double()
    _, _, tok, logit = g.slices()
    lg = logit.start
    out = []

    def walk(path, share):
        here = path[-1]
        if here == lg:
            out.append((list(path), share))
            return
        for t in (A[:, here] > 0).nonzero().flatten().tolist():
            walk(path + [t], share * float(A[t, here]))

    for s in range(tok.start, tok.stop):
        walk([s], 1.0)
    return out


def test_top_path_is_the_strongest_token_to_logit_path(built_cf):
    _, g = built_cf
    path, share = g.top_path()
    paths = _all_token_paths(g)
    assert len(paths) > 10
    best = max(paths, key=lambda p: p[1])
    assert share == pytest.approx(best[1], rel=1e-9) and path == best[0]
    _, _, tok, logit = g.slices()
    assert tok.start <= path[0] < tok.stop and path[-1] == logit.start
    # the paths' shares through each source sum to ≤ 1 of the logit's attribution
    assert 0 < share <= 1
    c = graph_circuit(g)
    assert c.top_path() == c.meta["top_path"] and len(c.top_path()) == len(path)


def test_top_feature_path_is_the_strongest_path_through_a_feature(built_cf):
    """Against brute force over every token → logit path: the strongest one with at least one
    feature node on it (its share is ≤ the top path's)."""
    _, g = built_cf
    feats = g.slices()[0]
    paths = [p for p in _all_token_paths(g) if any(feats.start <= i < feats.stop for i in p[0])]
    assert paths
    best = max(paths, key=lambda p: p[1])
    path, share = g.top_feature_path()
    assert share == pytest.approx(best[1], rel=1e-9) and path == best[0]
    assert share <= g.top_path()[1] * (1 + 1e-12)


def test_graph_json_validates_against_the_viewer_schema(built, tmp_path):
    import json

    from deltalens.circuits.graph_json import graph_json, save_graph_json, validate_graph_json
    from deltalens.errors import DataFormatError

    _, g = built
    doc = graph_json(g, slug="tiny-capital")
    path = save_graph_json(doc, tmp_path / "graph.json")
    back = json.loads(path.read_text())
    validate_graph_json(back)
    ids = {n["node_id"] for n in back["nodes"]}
    assert all(lk["source"] in ids and lk["target"] in ids for lk in back["links"])
    types = {n["feature_type"] for n in back["nodes"]}
    assert {"embedding", "logit"} <= types and len(back["links"]) > 0
    target = [n for n in back["nodes"] if n.get("is_target_logit")]
    assert len(target) == 1 and target[0]["layer"] == str(g.n_layers + 1)
    assert sum(n["feature_type"] == "embedding" for n in back["nodes"]) == g.n_pos
    bad = json.loads(path.read_text())
    del bad["nodes"][0]["jsNodeId"]
    with pytest.raises(DataFormatError, match="nodes/0: 'jsNodeId' is a required property"):
        validate_graph_json(bad)
    bad = json.loads(path.read_text())
    bad["nodes"][0]["node_id"] = "feature 3"
    with pytest.raises(DataFormatError, match="nodes/0/node_id"):
        validate_graph_json(bad)


def test_transcoder_pairs_are_the_mlp_input_and_mlp_out(tiny):
    from deltalens import Read, Site, intervene
    from deltalens.sae.transcoder import transcoder_pairs
    from tiny import CORPUS

    windows = [tiny.encode(t) for t in CORPUS[:3]]
    x, y = transcoder_pairs(tiny, windows, [1])[1]
    assert x.shape == y.shape == (sum(len(w) for w in windows), tiny.d_model)
    r = Read(Site(1, "mlp_out"))
    with torch.no_grad(), intervene(tiny, [r]):
        tiny.model(torch.tensor([windows[0]]))
    torch.testing.assert_close(y[: len(windows[0])], r.value[0])  # first window, unpadded
    blk = tiny.model.model.layers[1]
    torch.testing.assert_close(blk.mlp(x[: len(windows[0])]), y[: len(windows[0])], atol=1e-5, rtol=1e-5)


def test_transcoder_trained_with_the_sae_trainer_recovers_a_planted_mlp(tmp_path):
    """y = ReLU(x A − 1.5) B + x C: a sparse part and a linear one (the skip connection)."""
    import json

    from deltalens.sae import SAETrainConfig
    from deltalens.sae.transcoder import load_transcoder, train_transcoder, transcoder_nmse

    g = torch.Generator().manual_seed(0)
    d, m, n = 16, 32, 4096
    x = torch.randn(n, d, generator=g)
    A, B = torch.randn(d, m, generator=g) / d**0.5, torch.randn(m, d, generator=g) / m**0.5
    C = torch.randn(d, d, generator=g) * 0.3 / d**0.5
    y = torch.relu(x @ A - 1.5) @ B + x @ C
    cfg = SAETrainConfig(
        architecture="topk", k=8, d_sae=64, total_tokens=120_000, batch_size=256, lr=3e-3, seed=0
    )
    tc = train_transcoder(x, y, 3, cfg, out=tmp_path / "tc3", skip=True, model_name="planted")
    nmse = transcoder_nmse(tc, x, y)
    skip_only = float((y - x @ tc.W_skip.detach()).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert nmse < 0.1 and nmse < skip_only / 2, (nmse, skip_only)
    torch.testing.assert_close(tc.W_skip, C, atol=0.1, rtol=0)  # least squares finds the linear part
    back = load_transcoder(tmp_path / "tc3")
    assert back.W_skip is not None and back.layer == 3 and not back.cfg.apply_b_dec_to_input
    torch.testing.assert_close(back(x[:5]), tc(x[:5]))
    cfg_json = json.loads((tmp_path / "tc3" / "cfg.json").read_text())
    assert cfg_json["metadata"]["hook_name_out"] == "blocks.3.hook_mlp_out" and cfg_json["d_out"] == d


def test_contrast_target_is_the_difference_of_the_two_logit_rows(tiny):
    """A logit-difference target z_t − z_c is linear in the logits: its row over error and token
    sources equals row(t) − row(c) of the graph that has both tokens as (demeaned) targets."""
    tcs = {layer: make_tc(tiny, layer) for layer in range(tiny.n_layers)}
    t, c = 5, 9
    both = attribution_graph(tiny, PROMPT, tcs, max_feature_nodes=4, target_tokens=[t, c])
    diff = attribution_graph(tiny, PROMPT, tcs, max_feature_nodes=4, target_tokens=[t], contrast_tokens=[c])
    _, err, tok, logit = both.slices()
    _, err_d, tok_d, logit_d = diff.slices()
    rows = both.adjacency[logit]
    want = torch.cat([(rows[0] - rows[1])[err], (rows[0] - rows[1])[tok]])
    got = torch.cat([diff.adjacency[logit_d][0][err_d], diff.adjacency[logit_d][0][tok_d]])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert " − " in diff.logit_tokens[0]
    with pytest.raises(Exception, match="contrast"):
        attribution_graph(tiny, PROMPT, tcs, max_feature_nodes=4, target_tokens=[t], contrast_tokens=[t])


def test_skip_ridge_shrinks_the_skip_connection():
    """fit_skip's ridge λ = r·tr(XᵀX)/d: the closed form against numpy, and a larger r gives a
    smaller skip map (what --skip-ridge trades: smaller skip gains, more left to the features)."""
    import numpy as np

    from deltalens.sae.transcoder import fit_skip

    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=g) * torch.logspace(-2, 1, 8)
    y = x @ torch.randn(8, 8, generator=g)
    X, Y = x.double().numpy(), y.double().numpy()
    for r in (1e-4, 0.1):
        lam = r * np.trace(X.T @ X) / 8
        want = np.linalg.solve(X.T @ X + lam * np.eye(8), X.T @ Y)
        np.testing.assert_allclose(fit_skip(x, y, r).numpy(), want, rtol=1e-4, atol=1e-5)
    assert fit_skip(x, y, 0.1).norm() < 0.5 * fit_skip(x, y, 1e-4).norm()


def test_mean_jacobian_skip_is_the_average_of_brute_force_jacobians(tiny):
    """mean_jacobian (vmap of jacrev, in chunks) equals the mean over the same rows of
    finite-difference Jacobians of the tiny model's MLP, transposed so that x @ W is the mean
    first-order response; a linear MLP's mean Jacobian is its own matrix."""
    from deltalens.sae.transcoder import mean_jacobian, transcoder_pairs
    from tiny import CORPUS

    mlp = tiny.arch.mlp(1)
    x, _ = transcoder_pairs(tiny, [tiny.encode(t) for t in CORPUS[:2]], [1])[1]
    n = 7
    W = mean_jacobian(mlp, x, n_rows=n, chunk=3, seed=0)
    rows = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]].double()
    mlp64 = __import__("copy").deepcopy(mlp).double()
    d, eps = x.shape[1], 1e-5
    want = torch.zeros(d, d, dtype=torch.float64)
    with torch.no_grad():
        for r in rows:
            for j in range(d):  # central differences: column j of J = ∂mlp/∂x_j
                e = torch.zeros(d, dtype=torch.float64)
                e[j] = eps
                want[j] += (mlp64(r + e) - mlp64(r - e)) / (2 * eps)
    torch.testing.assert_close(W.double(), want / n, atol=1e-4, rtol=1e-3)
    lin = torch.nn.Linear(5, 3, bias=True)
    torch.testing.assert_close(mean_jacobian(lin, torch.randn(20, 5)), lin.weight.detach().T)


def test_attention_routes_find_the_only_layer_that_can_carry_an_edge(tiny, built_cf):
    """A feature of the second-to-last layer reaches the last position's logit only through the
    last layer's attention: its drop there is the whole edge (which equals the graph's
    adjacency entry), and layers at or below the feature's own give exactly 0."""
    from deltalens.circuits.attribution_graph import attention_routes

    tcs, _ = built_cf
    g = attribution_graph(tiny, PROMPT, tcs, max_feature_nodes=100_000, batch_size=64, max_logits=1)
    L, T = tiny.n_layers, g.n_pos
    feats = [
        i for i in range(g.n_features) if int(g.features[i, 0]) == L - 2 and int(g.features[i, 1]) < T - 1
    ]
    assert feats
    i = feats[0]
    layer, pos, idx = (int(v) for v in g.features[i])
    direction = torch.zeros(tiny.vocab_size)
    direction[g.logit_ids[0]] = 1.0
    direction -= 1.0 / tiny.vocab_size
    drops = attention_routes(tiny, g.token_ids, tcs, ("feature", layer, pos, idx), direction)
    edge = float(g.adjacency[g.slices()[3].start, i])
    assert abs(edge) > 1e-6
    assert drops[L - 1] == pytest.approx(edge, rel=1e-4, abs=1e-6)
    assert all(abs(d) < 1e-7 for d in drops[: L - 1])
    # a token source: removing every attention layer's route leaves no cross-position effect
    tok_drops = attention_routes(tiny, g.token_ids, tcs, ("token", 1), direction)
    assert any(abs(d) > 1e-6 for d in tok_drops)
