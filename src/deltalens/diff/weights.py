"""Weight-space diff ``Δθ = θ_ft − θ_base``, streamed from safetensors.

Per tensor (layer components ``q, k, v, o, gate, up, down`` (``qkv``/``gate_up`` where fused),
norms, embeddings, unembedding):

* ``fro = ‖Δθ‖_F = sqrt(Σ Δθ²)``; ``rel = ‖Δθ‖_F / ‖θ_base‖_F``; ``max_abs = max |Δθ|``.
* ``effective_rank`` of a matrix Δ: the number of singular values that hold ``energy``
  (default 90 %) of ``Σσᵢ² = ‖Δ‖_F²`` — the smallest ``k`` with ``Σ_{i≤k} σᵢ² ≥ 0.9 Σ σᵢ²``
  (0 for Δ = 0). σ² are the eigenvalues of the Gram matrix of the smaller side
  (``ΔᵀΔ`` or ``ΔΔᵀ``, float64). ``stable_rank = ‖Δ‖_F² / σ₁²``.

Residual-facing components (``o`` and ``down``, whose outputs are added to the residual
stream) also give directions in the residual space, with Δ oriented ``[d_model, d_in]``
(GPT-2's ``Conv1D`` stores ``[d_in, d_model]`` and is transposed, see
``ArchSpec.conv1d``):

* ``mean_col = (1/d_in) Σ_j Δ[:, j]`` — the mean column, the trait seed's
  "column-space diff";
* per layer ``resid_mean = ½ (mean_col(Δ W_o) + mean_col(Δ W_down))`` (the seed's
  ``Δ_residual``);
* ``u₁ … u_k``: the top left singular vectors of Δ (the output directions it writes most),
  sign-free.

These are read through the logit lens (:mod:`deltalens.diff.lens`: ``W_U · norm_f(v)``,
final norm applied) — top tokens of ``+v`` and ``−v`` — and compared with trait vectors by
cosine (``|cos|`` for the sign-free singular vectors; a random direction in ``d``
dimensions has ``E|cos| ≈ sqrt(2 / (π d))``, reported as ``chance_abs_cos``). Trait vectors
for layer L are residual vectors at the output of block L, where block L's ``o`` and
``down`` write.

Memory: tensors are read one at a time with positioned reads (no memory map); matrices with
more than ``max_block_elems`` elements (embeddings, unembeddings) are read in row blocks and
their Gram matrix accumulated block by block; the logit lens reads the unembedding in
blocks. Peak memory is about one model's largest tensor per side, never two models.

Vocabulary mismatch (added tokens): embeddings and unembedding are compared on the shared
rows; the extra rows are reported (count, norms, token strings). A tied model (no
``lm_head`` tensor) compared with an untied one is compared on its effective unembedding
(the embedding).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ModelMismatchError
from ..io import load_tensors, provenance, save_tensors, write_json
from ..stage import StageConfig, at_least, in_range, one_of, option, register_result
from ._models import DiffResult
from .files import ModelFiles, check_compatible
from .lens import cosine, resolve_traits, stream_logit_lens

RESIDUAL_FACING = ("o", "down")
COMPONENT_ORDER = (
    "input_norm",
    "q",
    "k",
    "v",
    "qkv",
    "q_norm",
    "k_norm",
    "o",
    "post_attn_norm",
    "pre_mlp_norm",
    "gate",
    "up",
    "gate_up",
    "down",
    "post_mlp_norm",
)

RESULTS_FILE = "results.json"
NORMS_FILE = "norms.json"
LENS_FILE = "logit_lens.json"
TRAITS_FILE = "trait_alignment.json"
DIRECTIONS_FILE = "directions.safetensors"


@dataclass
class TensorDiff:
    """The diff of one tensor (see the module docstring for the formulas)."""

    name: str
    layer: int | None
    component: str
    shape: list[int]
    fro: float
    base_fro: float
    rel: float
    max_abs: float
    effective_rank: int | None = None
    stable_rank: float | None = None
    top_sv: list[float] = field(default_factory=list)
    note: str | None = None


def effective_rank(sq_singular: torch.Tensor, energy: float = 0.9) -> int:
    """Smallest k with ``Σ_{i≤k} σᵢ² ≥ energy · Σ σᵢ²`` (σ² sorted descending); 0 if all zero."""
    s = sq_singular.double().clamp(min=0).sort(descending=True).values
    total = float(s.sum())
    if total <= 0:
        return 0
    c = s.cumsum(0) / total
    k = int((c < energy - 1e-12).sum()) + 1
    return min(k, len(s))


def _eig_desc(G: torch.Tensor, vectors: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigenvalues (descending, ≥ 0) of a Gram matrix; eigenvectors in float64 when asked,
    eigenvalues alone in float32 (≈ 2× faster; relative error ~1e-7, ample for energy fractions)."""
    G = (G + G.T) / 2
    if vectors:
        w, V = torch.linalg.eigh(G.double())
        return w.flip(0).clamp(min=0), V.flip(1)
    return torch.linalg.eigvalsh(G.float()).double().flip(0).clamp(min=0), None


def _order_key(files: ModelFiles):
    def key(name: str) -> tuple:
        layer, comp = files.classify(name)
        if layer is None:
            g = {"embed": 0, "final_norm": 2, "unembed": 3}.get(comp, 1)
            return (g, 10**9 if g >= 2 else -1, 0, name)
        ci = COMPONENT_ORDER.index(comp) if comp in COMPONENT_ORDER else len(COMPONENT_ORDER)
        return (1, layer, ci, name)

    return key


class _Directions:
    """Residual-space directions collected per layer while streaming."""

    def __init__(self, n_layers: int, d: int, k: int):
        self.n_layers, self.d, self.k = n_layers, d, k
        self.mean_col: dict[str, torch.Tensor] = {c: torch.zeros(n_layers, d) for c in RESIDUAL_FACING}
        self.sv: dict[str, torch.Tensor] = {c: torch.zeros(n_layers, k, d) for c in RESIDUAL_FACING}
        self.sigma: dict[str, torch.Tensor] = {c: torch.zeros(n_layers, k) for c in RESIDUAL_FACING}
        self.have: dict[str, set[int]] = {c: set() for c in RESIDUAL_FACING}

    def resid_mean(self) -> torch.Tensor:
        out = torch.zeros(self.n_layers, self.d)
        for L in range(self.n_layers):
            parts = [self.mean_col[c][L] for c in RESIDUAL_FACING if L in self.have[c]]
            if parts:
                out[L] = torch.stack(parts).mean(0)
        return out


def _diff_tensor(
    B: ModelFiles,
    F: ModelFiles,
    bname: str,
    fname: str,
    layer: int | None,
    comp: str,
    *,
    dirs: _Directions | None,
    energy: float,
    n_sv_report: int,
    max_block_elems: int,
    max_svd_dim: int,
) -> tuple[TensorDiff, dict[str, Any] | None]:
    """Diff one tensor pair: norms, spectrum, residual directions, extra vocabulary rows. One
    streaming pass that fills several accumulators at once (hence its length)."""
    sb, sf = B.shape(bname), F.shape(fname)
    extra: dict[str, Any] | None = None
    note = None
    n_rows = sb[0] if sb else None
    if sb != sf:
        if comp in ("embed", "unembed") and len(sb) == 2 and sb[1:] == sf[1:]:
            n_rows = min(sb[0], sf[0])
            note = f"vocabulary differs ({sb[0]} rows in base, {sf[0]} in fine-tuned): compared on {n_rows} shared rows"
            extra = {"tensor": fname, "base_rows": sb[0], "ft_rows": sf[0], "shared_rows": n_rows}
        else:
            raise ModelMismatchError(
                f"tensor '{bname}' has shape {list(sb)} in the base model but {list(sf)} in the fine-tuned model"
            )
    shape = [n_rows, *sb[1:]] if sb else []
    numel = math.prod(shape) if shape else 1
    is_matrix = len(shape) == 2
    residual = dirs is not None and layer is not None and comp in RESIDUAL_FACING and is_matrix
    conv1d = comp in B.arch.conv1d
    fro2 = base2 = 0.0
    max_abs = 0.0
    evals: torch.Tensor | None = None
    rows_sel = slice(0, n_rows) if n_rows is not None and sb and n_rows != sb[0] else None
    rows_self = slice(0, n_rows) if n_rows is not None and sf and n_rows != sf[0] else None
    whole = residual or numel <= max_block_elems or not is_matrix or shape[0] < shape[1]
    if whole:
        A = B.read(bname, rows_sel)
        D = F.read(fname, rows_self) - A
        fro2 = float(D.double().pow(2).sum())
        base2 = float(A.double().pow(2).sum())
        max_abs = float(D.abs().max()) if D.numel() else 0.0
        del A
        if is_matrix and min(shape) <= max_svd_dim:
            if residual:
                assert dirs is not None and layer is not None
                M = (D.T if conv1d else D).double()  # [d_model, d_in]
                evals, V = _eig_desc(M @ M.T, vectors=True)
                k = dirs.k
                assert V is not None
                dirs.sv[comp][layer, : min(k, V.shape[1])] = V[:, :k].T.float()
                dirs.sigma[comp][layer, : min(k, len(evals))] = evals[:k].sqrt().float()
                dirs.mean_col[comp][layer] = M.mean(1).float()
                dirs.have[comp].add(layer)
            else:
                G = D @ D.T if shape[0] <= shape[1] else D.T @ D
                evals, _ = _eig_desc(G, vectors=False)
        del D
    else:  # large matrix, rows > cols: accumulate the column Gram block by block
        cols = shape[1]
        G = torch.zeros(cols, cols, dtype=torch.float64) if cols <= max_svd_dim else None
        for rows in B.row_blocks(bname, max_block_elems):
            if rows.start >= n_rows:
                break
            rows = slice(rows.start, min(rows.stop, n_rows))
            A = B.read(bname, rows)
            D = F.read(fname, rows) - A
            fro2 += float(D.double().pow(2).sum())
            base2 += float(A.double().pow(2).sum())
            max_abs = max(max_abs, float(D.abs().max()) if D.numel() else 0.0)
            if G is not None:
                Dd = D.double()
                G += Dd.T @ Dd
            del A, D
        if G is not None:
            evals, _ = _eig_desc(G, vectors=False)
    fro, base_fro = math.sqrt(fro2), math.sqrt(base2)
    td = TensorDiff(
        name=fname if fname == bname else f"{fname} (vs base {bname})",
        layer=layer,
        component=comp,
        shape=list(shape),
        fro=fro,
        base_fro=base_fro,
        rel=fro / base_fro if base_fro > 0 else (0.0 if fro == 0 else math.inf),
        max_abs=max_abs,
        note=note,
    )
    if evals is not None:
        td.effective_rank = effective_rank(evals, energy)
        s1 = float(evals[0]) if len(evals) else 0.0
        td.stable_rank = fro2 / s1 if s1 > 0 else 0.0
        td.top_sv = [round(math.sqrt(float(x)), 6) for x in evals[:n_sv_report]]
    elif is_matrix:
        td.note = (td.note + "; " if td.note else "") + f"SVD skipped (smaller side > {max_svd_dim})"
    if extra is not None:
        big, small = (F, B) if sf[0] > sb[0] else (B, F)
        key = fname if big is F else bname
        added = big.read(key, slice(n_rows, None))
        extra["added_in"] = "fine-tuned" if big is F else "base"
        ids = list(range(n_rows, n_rows + added.shape[0]))
        extra["added_ids"] = ids[:200]
        extra["added_tokens"] = big.token_str(ids[:200])
        extra["added_row_norms"] = [round(float(x), 6) for x in added.norm(dim=1)[:200]]
        del small
    return td, extra


def _lens_tokenizer(lens: ModelFiles, other: ModelFiles, tokenizer: Any = None) -> str:
    """Make ``lens`` decode token ids: its own tokenizer, ``tokenizer`` when given, else the
    other model's; without any, token ids are shown as ``<id N>`` (with a warning)."""
    import warnings

    if tokenizer is not None:
        lens.use_tokenizer(tokenizer)
        return f"given: {tokenizer}"
    if lens.has_tokenizer:
        return "own"
    if other.has_tokenizer:
        lens.use_tokenizer(other)
        return f"{other.name}'s (the lens model ships no tokenizer files)"
    warnings.warn(
        f"neither {lens.dir} nor {other.dir} has tokenizer files: the logit lens shows token ids "
        "(<id N>); pass a tokenizer (--tokenizer) to read tokens",
        stacklevel=3,
    )
    return "none: token ids"


def _model_info(m: ModelFiles) -> dict[str, Any]:
    return {
        "name": m.name,
        "spec": m.spec,
        "dir": str(m.dir),
        "weights_hash": m.weights_hash,
        "model_type": m.model_type,
        "tied_embeddings": m.tied,
        "provenance": m.provenance,
    }


@dataclass
class WeightDiffConfig(StageConfig):
    """Settings of :func:`diff_weights` (recorded in ``results.json``)."""

    top_k: int = option(20, flag="--top-k", help="Tokens per logit-lens list.")
    n_singular: int = option(3, flag="--singular", help="Singular vectors per o/down matrix (alignment).")
    lens_singular: int = option(1, flag="--lens-singular", help="How many of them the logit lens reads.")
    energy: float = option(0.9, flag="--energy", help="Energy fraction of the effective rank.")
    lens: str = option("ft", flag="--lens", help="Whose unembedding reads the directions: ft or base.")
    tokenizer: str | None = option(
        None,
        flag="--tokenizer",
        help="Model or directory whose tokenizer decodes the lens tokens (default: the lens "
        "model's, else the other model's; checkpoints often ship none).",
    )
    max_block_elems: int = option(
        4 * 1024 * 1024,
        flag="--max-block-elems",
        help="Matrices larger than this are streamed in row blocks.",
    )
    max_svd_dim: int = option(
        8192, flag="--max-svd-dim", help="Skip spectra of matrices whose smaller side exceeds this."
    )
    figures: bool = option(True, flag="--figures/--no-figures", help="Write PNG figures.")

    def validate(self) -> None:
        at_least(self, "top_k", 1)
        at_least(self, "n_singular", 0)
        at_least(self, "lens_singular", 0)
        in_range(self, "energy", 0.0, 1.0)
        one_of(self, "lens", ("ft", "base"))
        at_least(self, "max_block_elems", 1)
        at_least(self, "max_svd_dim", 1)


@register_result
@dataclass
class WeightDiff(DiffResult):
    """The weight diff (module docstring): ``results.json`` holds every field; ``save`` also
    writes the seed's files ``norms.json``, ``logit_lens.json``, ``trait_alignment.json`` and
    the residual directions (``directions.safetensors``, :attr:`directions`)."""

    KIND = "weight diff"
    FILENAME = RESULTS_FILE
    LEGACY_KINDS = ("weight_diff",)

    base: dict[str, Any]
    ft: dict[str, Any]
    config: dict[str, Any]
    formulas: dict[str, Any]
    overview: dict[str, Any]
    per_layer: dict[str, Any]
    tensors: list[dict[str, Any]]
    vocab: list[dict[str, Any]] = field(default_factory=list)
    tied_note: str | None = None
    only_in_base: list[str] = field(default_factory=list)
    only_in_ft: list[str] = field(default_factory=list)
    logit_lens: dict[str, Any] = field(default_factory=dict)
    trait_alignment: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    #: ``resid_mean`` ``[n_layers, d]``, ``<c>.mean_col``, ``<c>.singular_vectors`` ``[n_layers, k, d]``,
    #: ``<c>.singular_values`` (not in the JSON; ``directions.safetensors``)
    directions: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("directions", None)
        return d

    def summary(self) -> dict[str, Any]:
        s = self.overview
        return {
            "base": self.base["name"],
            "ft": self.ft["name"],
            "tensors_changed": f"{s['n_changed']}/{s['n_tensors']}",
            "total_rel": s["total_rel"],
            "top_layer": s["top_layer"],
            "top_by_rel": [t["name"] for t in s["top_by_rel"][:5]],
        }

    def save(self, directory: str | Path) -> Path:
        """``results.json`` (everything) and the seed's ``norms.json``, ``logit_lens.json``,
        ``trait_alignment.json`` (with traits), ``directions.safetensors`` (with directions)."""
        out = Path(directory)
        head = {
            "kind": self.KIND,
            "schema": self.SCHEMA,
            "base": self.base,
            "ft": self.ft,
            "config": self.config,
            "provenance": self.provenance,
        }
        write_json(
            out / NORMS_FILE,
            {
                **head,
                "formulas": self.formulas,
                "summary": self.overview,
                "per_layer": self.per_layer,
                "tensors": self.tensors,
                "vocab": self.vocab,
            },
        )
        write_json(out / LENS_FILE, {**head, **self.logit_lens})
        if self.trait_alignment.get("traits"):
            write_json(out / TRAITS_FILE, {**head, **self.trait_alignment})
        if self.directions:
            save_tensors(
                out / DIRECTIONS_FILE,
                self.directions,
                {
                    "kind": "weight_diff_directions",
                    "base": self.base["name"],
                    "ft": self.ft["name"],
                    "layout": "resid_mean [n_layers, d]; <c>.singular_vectors [n_layers, k, d] (output side, sign-free)",
                },
            )
        return super().save(out)

    @classmethod
    def load(cls, directory: str | Path) -> WeightDiff:
        r = super().load(directory)
        d = cls.path_in(directory).parent / DIRECTIONS_FILE
        if d.is_file():
            r.directions = load_tensors(d)
        return r


def diff_weights(
    base: Any,
    ft: Any,
    config: WeightDiffConfig | None = None,
    *,
    traits: Any = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> WeightDiff:
    """Diff two models' weights tensor by tensor (see the module docstring).

    Args:
        base, ft: model specs (bundled name, directory, cached hub id), LoadedModels loaded
            from a directory, or :class:`ModelFiles`.
        config: :class:`WeightDiffConfig`; keyword ``overrides`` (``top_k=10``,
            ``figures=False``) replace its fields.
        traits: trait vectors to align with — a path (file/directory, see
            :func:`deltalens.diff.lens.load_trait_vectors`), a list of paths, or
            ``{name: path | {layer: vector}}``.
        out_dir: save the result here (:meth:`WeightDiff.save`) and the PNG figures.

    Raises:
        ModelMismatchError: different architecture, width, depth or tensor shapes.
    """
    cfg = (config or WeightDiffConfig()).replace(**overrides) if overrides else (config or WeightDiffConfig())
    t0 = time.time()
    B = base if isinstance(base, ModelFiles) else ModelFiles(base)
    F = ft if isinstance(ft, ModelFiles) else ModelFiles(ft)
    check_compatible(B, F, (f"base '{B.name}'", f"fine-tuned '{F.name}'"))
    n_layers, d = F.n_layers, F.d_model
    trait_vecs = resolve_traits(traits, d)
    dirs = _Directions(n_layers, d, max(cfg.n_singular, cfg.lens_singular))
    tensors, vocab, notes = _stream_tensors(B, F, dirs, cfg, progress)
    per_layer = _per_layer(tensors, n_layers)
    total_fro = math.sqrt(sum(t.fro**2 for t in tensors))
    total_base = math.sqrt(sum(t.base_fro**2 for t in tensors))
    changed = [t for t in tensors if t.fro > 0]
    overview = {
        "n_tensors": len(tensors),
        "n_changed": len(changed),
        "total_fro": total_fro,
        "total_base_fro": total_base,
        "total_rel": total_fro / total_base if total_base > 0 else 0.0,
        "top_by_rel": [
            {"name": t.name, "rel": t.rel, "fro": t.fro, "effective_rank": t.effective_rank}
            for t in sorted(changed, key=lambda t: -t.rel)[:10]
        ],
        "top_layer": int(max(range(n_layers), key=lambda L: per_layer["layer_rel"][L]))
        if changed and n_layers
        else None,
    }
    lens_files, other = (F, B) if cfg.lens == "ft" else (B, F)
    tokenizer_note = _lens_tokenizer(lens_files, other, cfg.tokenizer)
    result = WeightDiff(
        base=_model_info(B),
        ft=_model_info(F),
        config=cfg.to_dict(),
        formulas={
            "fro": "‖Δθ‖_F",
            "rel": "‖Δθ‖_F / ‖θ_base‖_F",
            "effective_rank": f"min k: Σ_(i≤k) σ_i² ≥ {cfg.energy} Σ σ_i²",
            "stable_rank": "‖Δ‖_F² / σ_1²",
        },
        overview=overview,
        per_layer=per_layer,
        tensors=[asdict(t) for t in tensors],
        vocab=vocab,
        tied_note=notes["tied_note"],
        only_in_base=notes["only_in_base"],
        only_in_ft=notes["only_in_ft"],
        logit_lens=_weight_lens(lens_files, dirs, cfg, overview["top_layer"], tokenizer_note),
        trait_alignment=_alignment(dirs, trait_vecs, cfg.n_singular),
        provenance=provenance(None, stage="diff weights", seconds=round(time.time() - t0, 2)),
    )
    result.directions = _direction_tensors(dirs)
    if out_dir is not None:
        out = Path(out_dir)
        result.files = {
            "results": str(out / RESULTS_FILE),
            "norms": str(out / NORMS_FILE),
            "logit_lens": str(out / LENS_FILE),
            "directions": str(out / DIRECTIONS_FILE),
        }
        if result.trait_alignment["traits"]:
            result.files["trait_alignment"] = str(out / TRAITS_FILE)
        if cfg.figures:
            result.files.update(_figures(result, out))
        result.save(out)
    return result


def _stream_tensors(
    B: ModelFiles, F: ModelFiles, dirs: _Directions, cfg: WeightDiffConfig, progress: bool
) -> tuple[list[TensorDiff], list[dict[str, Any]], dict[str, Any]]:
    """Diff every shared tensor, one at a time (collecting residual directions in ``dirs``)."""
    bkeys, fkeys = set(B.keys()), set(F.keys())
    pairs: list[tuple[str, str]] = [(k, k) for k in sorted(bkeys & fkeys, key=_order_key(F))]
    only_base, only_ft = sorted(bkeys - fkeys), sorted(fkeys - bkeys)
    tie_note = None
    if B.tied != F.tied and B.unembed_key and F.unembed_key:
        pairs.append((B.unembed_key, F.unembed_key))
        tie_note = (
            f"embeddings are tied in {'base' if B.tied else 'fine-tuned'} only: the effective unembeddings "
            f"({B.unembed_key} vs {F.unembed_key}) are compared"
        )
        only_base = [k for k in only_base if k != B.arch.unembed_param]
        only_ft = [k for k in only_ft if k != F.arch.unembed_param]
    tensors: list[TensorDiff] = []
    vocab: list[dict[str, Any]] = []
    for bname, fname in tqdm(pairs, desc="weight diff", unit="tensor", disable=not progress, leave=False):
        layer, comp = F.classify(fname)
        if bname != fname:
            comp = "unembed"
        td, extra = _diff_tensor(
            B,
            F,
            bname,
            fname,
            layer,
            comp,
            dirs=dirs,
            energy=cfg.energy,
            n_sv_report=8,
            max_block_elems=cfg.max_block_elems,
            max_svd_dim=cfg.max_svd_dim,
        )
        tensors.append(td)
        if extra is not None:
            vocab.append(extra)
    return tensors, vocab, {"tied_note": tie_note, "only_in_base": only_base, "only_in_ft": only_ft}


def _per_layer(tensors: list[TensorDiff], n_layers: int) -> dict[str, Any]:
    comps = [c for c in COMPONENT_ORDER if any(t.component == c and t.layer is not None for t in tensors)]
    comps += sorted({t.component for t in tensors if t.layer is not None} - set(comps))
    per_layer: dict[str, Any] = {"layers": list(range(n_layers)), "components": comps}
    for metric in ("fro", "rel", "effective_rank"):
        table: dict[str, list[Any]] = {c: [None] * n_layers for c in comps}
        for t in tensors:
            if t.layer is not None and 0 <= t.layer < n_layers:
                table[t.component][t.layer] = getattr(t, metric)
        per_layer[metric] = table
    layer_fro = [
        math.sqrt(sum((t.fro or 0.0) ** 2 for t in tensors if t.layer == L)) for L in range(n_layers)
    ]
    layer_base = [
        math.sqrt(sum((t.base_fro or 0.0) ** 2 for t in tensors if t.layer == L)) for L in range(n_layers)
    ]
    per_layer["layer_fro"] = layer_fro
    per_layer["layer_rel"] = [f / b if b > 0 else 0.0 for f, b in zip(layer_fro, layer_base)]
    return per_layer


def _weight_lens(
    lens_files: ModelFiles,
    dirs: _Directions,
    cfg: WeightDiffConfig,
    top_layer: int | None,
    tokenizer_note: str,
) -> dict[str, Any]:
    """Logit lens of the residual-facing directions (``resid_mean``, ``<c>.u<i>``) per layer."""
    resid_mean = dirs.resid_mean()
    labels: list[tuple[int, str]] = []
    vecs: list[torch.Tensor] = []
    for L in range(dirs.n_layers):
        if not any(L in dirs.have[c] for c in RESIDUAL_FACING):
            continue
        labels.append((L, "resid_mean"))
        vecs.append(resid_mean[L])
        for c in RESIDUAL_FACING:
            if L in dirs.have[c]:
                for i in range(cfg.lens_singular):
                    labels.append((L, f"{c}.u{i + 1}"))
                    vecs.append(dirs.sv[c][L, i] * (1.0 if dirs.sigma[c][L, i] > 0 else 0.0))
    logit_lens: dict[str, Any] = {
        "formula": "logits(v) = W_U · norm_f(v) (final norm applied, bias omitted); pos = top of +v, neg = top of −v",
        "lens_model": cfg.lens,
        "directions": {
            "resid_mean": "½(mean column of ΔW_o + mean column of ΔW_down) — the seed's Δ_residual",
            "o.u1/down.u1": "top left singular vector (output side) of ΔW_o / ΔW_down; sign-free, read both ways",
        },
        "top_k": cfg.top_k,
        "tokenizer": tokenizer_note,
        "layers": {},
    }
    if not vecs:
        return logit_lens
    out = stream_logit_lens(lens_files, torch.stack(vecs), k=cfg.top_k)
    for (L, name), pos, neg in zip(labels, out["pos"], out["neg"]):
        logit_lens["layers"].setdefault(str(L), {})[name] = {"pos": pos, "neg": neg}
    # tokens found most often among the per-layer resid_mean top-k lists
    votes: dict[str, int] = {}
    for entry in logit_lens["layers"].values():
        for tok, _ in entry.get("resid_mean", {}).get("pos", []):
            votes[tok] = votes.get(tok, 0) + 1
    logit_lens["consensus"] = [[t, n] for t, n in sorted(votes.items(), key=lambda kv: -kv[1])[: cfg.top_k]]
    logit_lens["top_layer"] = top_layer
    if top_layer is not None and str(top_layer) in logit_lens["layers"]:
        logit_lens["top_layer_lists"] = logit_lens["layers"][str(top_layer)]
    return logit_lens


def _alignment(
    dirs: _Directions, trait_vecs: Mapping[str, Mapping[int, torch.Tensor]], n_singular: int
) -> dict[str, Any]:
    """Cosines of the residual directions with trait vectors, per layer."""
    d, n_layers = dirs.d, dirs.n_layers
    resid_mean = dirs.resid_mean()
    chance = math.sqrt(2 / (math.pi * d)) if d else 0.0
    alignment: dict[str, Any] = {
        "formula": "cos(a, b) = a·b/(‖a‖‖b‖); |cos| for sign-free singular vectors",
        "chance_abs_cos": chance,
        "traits": {},
    }
    for tname, per in trait_vecs.items():
        rows = {}
        for L, t in per.items():
            if not 0 <= L < n_layers:
                continue
            entry: dict[str, Any] = {"resid_mean": cosine(resid_mean[L], t)}
            for c in RESIDUAL_FACING:
                if L in dirs.have[c]:
                    entry[f"{c}_mean"] = cosine(dirs.mean_col[c][L], t)
                    entry[f"{c}_sv_abs"] = [
                        abs(cosine(dirs.sv[c][L, i], t)) for i in range(n_singular) if dirs.sigma[c][L, i] > 0
                    ]
            svs = [x for c in RESIDUAL_FACING for x in entry.get(f"{c}_sv_abs", [])]
            entry["max_abs_sv"] = max(svs) if svs else 0.0
            rows[str(L)] = entry
        best = max(rows.items(), key=lambda kv: abs(kv[1]["resid_mean"]), default=(None, None))[0]
        alignment["traits"][tname] = {
            "layers": rows,
            "best_layer_resid_mean": None if best is None else int(best),
        }
    return alignment


def _direction_tensors(dirs: _Directions) -> dict[str, torch.Tensor]:
    t = {"resid_mean": dirs.resid_mean()}
    for c in RESIDUAL_FACING:
        t[f"{c}.mean_col"] = dirs.mean_col[c]
        t[f"{c}.singular_vectors"] = dirs.sv[c]
        t[f"{c}.singular_values"] = dirs.sigma[c]
    return t


def _figures(results: WeightDiff, out: Path) -> dict[str, str]:
    from .plots import heatmap, lines_by_layer, token_table

    pl = results["per_layer"]
    comps = pl["components"]
    layers = pl["layers"]
    files = {}
    name = f"{results['ft']['name']} − {results['base']['name']}"

    def clean(v):
        return [float("nan") if x is None else x for x in v]

    main = [c for c in comps if c in ("q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up")] or comps
    if layers:
        files["fig_norms"] = str(
            lines_by_layer(
                {c: clean(pl["fro"][c]) for c in main},
                out / "norms_by_layer.png",
                title=f"‖Δθ‖_F per layer: {name}",
                ylabel="‖Δθ‖_F",
            )
        )
        files["fig_rel"] = str(
            lines_by_layer(
                {c: clean(pl["rel"][c]) for c in main},
                out / "relative_by_layer.png",
                title="‖Δθ‖_F / ‖θ_base‖_F",
                ylabel="relative change",
            )
        )
        files["fig_rank"] = str(
            lines_by_layer(
                {c: clean(pl["effective_rank"][c]) for c in main},
                out / "effective_rank.png",
                title="effective rank of Δθ (90 % energy)",
                ylabel="rank",
            )
        )
        files["fig_heatmap"] = str(
            heatmap(
                [clean(pl["rel"][c]) for c in comps],
                out / "relative_heatmap.png",
                xlabels=[str(x) for x in layers],
                ylabels=comps,
                center=None,
                cmap="viridis",
                title="relative change by layer and component",
                xlabel="layer",
                colorbar_label="‖Δθ‖/‖θ‖",
            )
        )
    lensd = results["logit_lens"]
    top = lensd.get("top_layer_lists")
    if top:
        cols = {}
        for key, v in top.items():
            cols[f"{key} +"] = v["pos"]
            cols[f"{key} −"] = v["neg"]
        files["fig_lens"] = str(
            token_table(
                cols,
                out / "logit_lens.png",
                title=f"weight logit lens, layer {lensd['top_layer']} (largest relative change)",
            )
        )
    traits = results["trait_alignment"]["traits"]
    if traits:
        series = {}
        for tname, t in traits.items():
            series[f"{tname}: cos(resid_mean)"] = [
                t["layers"].get(str(L), {}).get("resid_mean", float("nan")) for L in layers
            ]
            series[f"{tname}: max |cos| sv"] = [
                t["layers"].get(str(L), {}).get("max_abs_sv", float("nan")) for L in layers
            ]
        files["fig_traits"] = str(
            lines_by_layer(
                series,
                out / "trait_alignment.png",
                title="alignment of Δθ directions with trait vectors",
                ylabel="cosine",
            )
        )
    return files
