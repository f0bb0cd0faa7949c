"""Weight diff: exact zeros, single-matrix perturbations, orientation, ties, vocabularies, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from deltalens.diff import ModelFiles, diff_weights, effective_rank
from deltalens.diff.files import SafetensorsFile
from deltalens.diff.lens import load_trait_vectors, stream_logit_lens
from deltalens.errors import DataFormatError, ModelMismatchError, ShapeError
from tiny import save_tiny as save
from tiny import tiny_config, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save(tiny_model("llama"), tmp_path_factory.mktemp("base"))


def perturbed_copy(family, path, edit, seed=0, **kw):
    lm = tiny_model(family, seed=seed, **kw)
    with torch.no_grad():
        edit(lm.model)
    return save(lm, path)


def test_self_diff_is_exactly_zero(base_dir, tmp_path):
    r = diff_weights(base_dir, base_dir, out_dir=tmp_path, progress=False)
    assert r["summary"]["n_tensors"] == len(ModelFiles(base_dir).keys())
    for t in r["tensors"]:
        assert t["fro"] == 0.0 and t["max_abs"] == 0.0 and t["rel"] == 0.0, t["name"]
        if len(t["shape"]) == 2:
            assert t["effective_rank"] == 0
    assert r["summary"]["total_fro"] == 0.0 and r["summary"]["n_changed"] == 0
    # zero directions read through the lens give no tokens rather than arbitrary ones
    assert all(v["pos"] == [] for e in r["logit_lens"]["layers"].values() for v in e.values())
    for f in (
        "results.json",
        "norms.json",
        "logit_lens.json",
        "directions.safetensors",
        "norms_by_layer.png",
    ):
        assert (tmp_path / f).exists()


@pytest.mark.parametrize("sigmas,rank", [((3.0,), 1), ((3.0, 2.0), 2), ((1.0, 1.0, 1.0, 1.0), 4)])
def test_only_the_perturbed_matrix_changes(base_dir, tmp_path, sigmas, rank):
    g = torch.Generator().manual_seed(1)
    W_shape = (64, 128)  # down_proj of the tiny llama: [d_model, d_mlp]
    U, _ = torch.linalg.qr(torch.randn(W_shape[0], len(sigmas), generator=g))
    V, _ = torch.linalg.qr(torch.randn(W_shape[1], len(sigmas), generator=g))
    E = (U * torch.tensor(sigmas)) @ V.T

    def edit(m):
        m.model.layers[2].mlp.down_proj.weight += E

    ft = perturbed_copy("llama", tmp_path / "ft", edit)
    r = diff_weights(base_dir, ft, progress=False, figures=False)
    changed = [t for t in r["tensors"] if t["fro"] > 0]
    assert [t["name"] for t in changed] == ["model.layers.2.mlp.down_proj.weight"]
    t = changed[0]
    assert t["layer"] == 2 and t["component"] == "down"
    assert t["fro"] == pytest.approx(float(E.norm()), rel=1e-5)
    assert t["effective_rank"] == rank
    ref = torch.linalg.svdvals(
        (ModelFiles(ft).read(t["name"]) - ModelFiles(base_dir).read(t["name"])).double()
    )
    assert t["top_sv"][: len(sigmas)] == pytest.approx(ref[: len(sigmas)].tolist(), rel=1e-5)
    W0 = ModelFiles(base_dir).read(t["name"])
    assert t["rel"] == pytest.approx(float(E.norm() / W0.norm()), rel=1e-4)
    assert r["summary"]["top_layer"] == 2
    # the singular directions are E's column space
    assert r["per_layer"]["effective_rank"]["down"][2] == rank


def test_effective_rank_definition():
    assert effective_rank(torch.tensor([9.0, 4.0, 0.0])) == 2  # 9/13 < 0.9 ≤ 13/13
    assert effective_rank(torch.tensor([100.0, 5.0, 5.0])) == 1  # 100/110 ≥ 0.9
    assert effective_rank(torch.zeros(5)) == 0
    assert effective_rank(torch.ones(10)) == 9


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_stream_logit_lens_equals_the_models_logit_lens(family, tmp_path):
    lm = tiny_model(family)
    with torch.no_grad():  # non-trivial final norm so that the norm matters
        w = lm.arch.final_norm.weight
        w.copy_(torch.randn_like(w) * 0.5 + (0.0 if family == "gemma3" else 1.0))
    path = save(lm, tmp_path / family)
    dirs = torch.randn(5, lm.d_model)
    out = stream_logit_lens(ModelFiles(path), dirs, k=10, block_rows=37)
    with torch.no_grad():
        logits = lm.logits(dirs)
    for i in range(5):
        want = lm.token_str(logits[i].topk(10).indices)
        want_neg = lm.token_str((-logits[i]).topk(10).indices)
        assert [t for t, _ in out["pos"][i]] == want
        assert [t for t, _ in out["neg"][i]] == want_neg
        if family != "gpt2":  # LayerNorm bias is left out of the lens (a direction has no offset)
            assert out["pos"][i][0][1] == pytest.approx(float(logits[i].max()), rel=1e-4)


@pytest.mark.parametrize("family,conv1d", [("llama", False), ("gpt2", True)])
def test_residual_direction_and_trait_alignment(family, conv1d, tmp_path):
    """A rank-1 change u·aᵀ of the MLP's output matrix writes along u: the top singular vector
    and the mean column must align with u, in either storage orientation."""
    g = torch.Generator().manual_seed(3)
    lm0 = tiny_model(family)
    base = save(lm0, tmp_path / "base")
    d = lm0.d_model
    u = torch.randn(d, generator=g)
    layer = 1

    def edit(m):
        W = lm0.arch.mlp(layer)  # module paths are the same in the copy
        name = "c_proj" if conv1d else "down_proj"
        mod = getattr(m.transformer.h[layer].mlp, name) if conv1d else m.model.layers[layer].mlp.down_proj
        a = (
            torch.rand(mod.weight.shape[0] if conv1d else mod.weight.shape[1], generator=g) + 0.5
        )  # positive mean
        E = a[:, None] * u[None, :] if conv1d else u[:, None] * a[None, :]
        mod.weight += 0.05 * E
        del W

    ft = perturbed_copy(family, tmp_path / "ft", edit)
    trait_dir = tmp_path / "vectors"
    from deltalens.io import save_tensors

    save_tensors(trait_dir / f"layer{layer}.safetensors", {"vector": u}, {"layer": layer})
    save_tensors(trait_dir / "layer0.safetensors", {"vector": torch.randn(d, generator=g)}, {"layer": 0})
    r = diff_weights(base, ft, traits={"planted": trait_dir}, out_dir=tmp_path / "out", progress=False)
    t = r["trait_alignment"]["traits"]["planted"]["layers"]
    assert t[str(layer)]["down_sv_abs"][0] == pytest.approx(1.0, abs=1e-5)
    assert t[str(layer)]["resid_mean"] == pytest.approx(1.0, abs=1e-5)
    assert t[str(layer)]["max_abs_sv"] == pytest.approx(1.0, abs=1e-5)
    assert abs(t["0"]["resid_mean"]) == 0.0  # nothing changed at layer 0
    assert r["trait_alignment"]["traits"]["planted"]["best_layer_resid_mean"] == layer
    assert (tmp_path / "out" / "trait_alignment.json").exists() and (
        tmp_path / "out" / "trait_alignment.png"
    ).exists()
    # the saved directions hold u (up to sign) for the top singular vector
    dirs = load_file(str(tmp_path / "out" / "directions.safetensors"))
    cos = torch.nn.functional.cosine_similarity(dirs["down.singular_vectors"][layer, 0], u, dim=0)
    assert abs(float(cos)) == pytest.approx(1.0, abs=1e-5)


def test_tied_embeddings(tmp_path):
    tok = tiny_tokenizer()

    def tied(seed):
        from transformers import AutoModelForCausalLM

        from deltalens.models.loading import LoadedModel

        cfg = tiny_config("llama", len(tok))
        cfg.tie_word_embeddings = True
        torch.manual_seed(seed)
        return LoadedModel.wrap(AutoModelForCausalLM.from_config(cfg), tok)

    a = tied(0)
    base = save(a, tmp_path / "a")
    assert ModelFiles(base).tied and "lm_head.weight" not in ModelFiles(base)
    with torch.no_grad():
        a.model.model.embed_tokens.weight[5] += 1.0
    ft = save(a, tmp_path / "b")
    r = diff_weights(base, ft, progress=False, figures=False)
    changed = [t for t in r["tensors"] if t["fro"] > 0]
    assert [t["component"] for t in changed] == ["embed"] and changed[0]["fro"] == pytest.approx(
        8.0, rel=1e-5
    )

    # tied base vs untied fine-tune: the effective unembeddings are compared
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama", len(tok))
    cfg.tie_word_embeddings = False
    m = AutoModelForCausalLM.from_config(cfg)
    m.load_state_dict(
        {k: v for k, v in load_file(str(tmp_path / "a" / "model.safetensors")).items()}, strict=False
    )
    with torch.no_grad():
        m.model.embed_tokens.weight.copy_(
            load_file(str(tmp_path / "a" / "model.safetensors"))["model.embed_tokens.weight"]
        )
        m.lm_head.weight.copy_(m.model.embed_tokens.weight)
        m.lm_head.weight[7] += 2.0
    m.save_pretrained(tmp_path / "c")
    tok.save_pretrained(tmp_path / "c")
    r = diff_weights(base, str(tmp_path / "c"), progress=False, figures=False)
    assert r["tied_note"] and "tied in base only" in r["tied_note"]
    un = [t for t in r["tensors"] if t["component"] == "unembed"]
    assert len(un) == 1 and un[0]["fro"] == pytest.approx(2.0 * math.sqrt(64), rel=1e-5)
    assert "lm_head.weight" not in r["only_in_ft"]


def test_vocabulary_mismatch_is_handled(base_dir, tmp_path):
    lm = tiny_model("llama")
    tok = tiny_tokenizer()
    tok2 = type(tok).from_pretrained(base_dir)
    tok2.add_tokens(["<ocean>", "<reef>", "<tide>"])
    lm.model.resize_token_embeddings(len(tok2), mean_resizing=False)
    lm.model.save_pretrained(tmp_path / "ft")
    tok2.save_pretrained(tmp_path / "ft")
    r = diff_weights(base_dir, str(tmp_path / "ft"), progress=False, figures=False)
    assert r["summary"]["n_changed"] == 0  # shared rows are unchanged
    assert len(r["vocab"]) == 2  # embedding and lm_head
    v = r["vocab"][0]
    assert v["added_in"] == "fine-tuned" and v["shared_rows"] == len(tok)
    assert v["added_ids"] == [len(tok), len(tok) + 1, len(tok) + 2]
    assert v["added_tokens"] == ["<ocean>", "<reef>", "<tide>"]
    assert all(n > 0 for n in v["added_row_norms"])


def test_refuses_other_architectures_and_widths(base_dir, tmp_path):
    gpt2 = save(tiny_model("gpt2"), tmp_path / "gpt2")
    with pytest.raises(ModelMismatchError, match=r"architecture \(llama vs gpt2\)"):
        diff_weights(base_dir, gpt2, progress=False)
    narrow = save(tiny_model("llama", d=32), tmp_path / "narrow")
    with pytest.raises(ModelMismatchError, match=r"d_model \(64 vs 32\).*d_mlp \(128 vs 64\)"):
        diff_weights(base_dir, narrow, progress=False)
    deep = save(tiny_model("llama", n_layers=2), tmp_path / "shallow")
    with pytest.raises(ModelMismatchError, match=r"layers \(4 vs 2\)"):
        diff_weights(base_dir, deep, progress=False)


def test_reader_matches_safetensors(tmp_path):
    t = {
        "a": torch.randn(7, 5),
        "b": torch.randn(3).to(torch.bfloat16),
        "c": torch.arange(12, dtype=torch.int64).reshape(3, 4),
    }
    save_file(t, str(tmp_path / "x.safetensors"))
    f = SafetensorsFile(tmp_path / "x.safetensors")
    ref = load_file(str(tmp_path / "x.safetensors"))
    for k in t:
        assert torch.equal(f.read(k), ref[k]) and f.read(k).dtype == ref[k].dtype
    assert torch.equal(f.read("a", slice(2, 5)), ref["a"][2:5])
    assert torch.equal(f.read("c", slice(1, 3)), ref["c"][1:3])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(DataFormatError, match="bad.safetensors"):
        SafetensorsFile(tmp_path / "bad.safetensors")


def test_trait_vector_formats(tmp_path):
    from deltalens.io import save_tensors

    d = 16
    save_tensors(tmp_path / "dir" / "layer3.safetensors", {"vector": torch.ones(d)})
    save_tensors(tmp_path / "dir" / "layer5.safetensors", {"vector": 2 * torch.ones(d)}, {"layer": 5})
    v = load_trait_vectors(tmp_path / "dir", d)
    assert sorted(v) == [3, 5] and float(v[5][0]) == 2.0
    save_tensors(tmp_path / "all.safetensors", {"vectors": torch.randn(4, d)})
    assert sorted(load_trait_vectors(tmp_path / "all.safetensors")) == [0, 1, 2, 3]
    save_tensors(tmp_path / "cv.safetensors", {"direction.2": torch.randn(d), "direction.7": torch.randn(d)})
    assert sorted(load_trait_vectors(tmp_path / "cv.safetensors")) == [2, 7]
    with pytest.raises(ShapeError, match="width 16"):
        load_trait_vectors(tmp_path / "dir", 32)
    save_tensors(tmp_path / "anon.safetensors", {"v": torch.randn(d)})
    with pytest.raises(DataFormatError, match="which layer"):
        load_trait_vectors(tmp_path / "anon.safetensors")
    with pytest.raises(DataFormatError, match="not found"):
        load_trait_vectors(tmp_path / "missing")
