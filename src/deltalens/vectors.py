"""Trait directions: extraction methods, vector files and llama.cpp control vectors.

Methods (``pos``/``neg`` are ``[N, d]`` activations of positive and negative examples,
μ₊ and μ₋ their means):

* ``mean_diff`` — ``v = μ₊ − μ₋`` (difference of class means; persona vectors).
* ``probe`` — logistic regression ``P(pos | x) = σ(w·(x − μ) + b)`` with an L2 penalty
  (``C = 1``), fitted on the activations centred by their overall mean ``μ``; the direction
  is ``ŵ = w / ‖w‖``.
* ``pca`` — the first right-singular vector ``û`` of the matrix of paired differences
  ``Dᵢ = posᵢ − negᵢ`` (uncentred, so a consistent shift dominates; repeng's ``pca_diff``
  centres the differences, which we do not). Unpaired data (different counts) is paired
  by a seeded random permutation, truncated to the smaller class.

Every method returns a *raw* vector on one scale: the unit direction times the
separation of the class means along it, ``v = û · ((μ₊ − μ₋)·û)`` (the sign is fixed
so that positives project higher). For ``mean_diff`` this is ``μ₊ − μ₋`` itself, so a
raw steering coefficient of 1 moves an activation by the class-mean separation
whatever the method.

Held-out metrics (:func:`evaluate_direction`) project train and validation examples on
``û``: ``accuracy`` thresholds at the midpoint of the train class means of the
projections (for ``probe`` the probe's own decision ``w·(x−μ)+b > 0``); ``auroc`` is the
area under the ROC curve of the projections; ``separation`` is Cohen's d
``(m₊ − m₋) / s_pooled`` with ``s_pooled = sqrt(((n₊−1)s₊² + (n₋−1)s₋²)/(n₊+n₋−2))``.

Vector files are safetensors with one tensor ``vector`` ``[d]`` and the metadata of
:class:`TraitVector` in the header. :func:`export_gguf` / :func:`import_gguf` read and
write llama.cpp control vectors in the format repeng uses (architecture
``controlvector``, ``controlvector.model_hint``, ``controlvector.layer_count``, one
float32 tensor ``direction.<L>`` per layer, added to the output of block L).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import DataFormatError, ShapeError
from .io import atomic_path, load_tensors, read_safetensors_metadata, save_tensors

if TYPE_CHECKING:
    from .models.loading import LoadedModel

VECTOR_METHODS = ("mean_diff", "probe", "pca")
VECTOR_FORMAT = "deltalens.vector/1"


# ---- fitting ---------------------------------------------------------------------------------


@dataclass
class Direction:
    """A fitted direction: the raw vector and, for probes, the decision function."""

    vector: torch.Tensor  # [d] raw (unit direction × class-mean separation along it)
    method: str
    probe_w: torch.Tensor | None = None  # [d] probe weights (probe only)
    probe_b: float = 0.0
    center: torch.Tensor | None = None  # [d] the centring mean (probe only)

    @property
    def unit(self) -> torch.Tensor:
        n = self.vector.norm()
        return self.vector / n if n > 0 else self.vector


def _check(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.as_tensor(pos).detach().to(torch.float32)
    neg = torch.as_tensor(neg).detach().to(torch.float32)
    if pos.dim() != 2 or neg.dim() != 2 or pos.shape[1] != neg.shape[1]:
        raise ShapeError(
            f"positive and negative activations must be [N, d] with equal d, got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    if len(pos) < 1 or len(neg) < 1:
        raise ShapeError(
            f"need at least one positive and one negative example (got {len(pos)} and {len(neg)})"
        )
    return pos, neg


def _scaled(u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``û · ((μ₊ − μ₋)·û)`` with the sign fixed so that positives project higher."""
    u = u / u.norm().clamp(min=1e-12)
    sep = float((pos.mean(0) - neg.mean(0)) @ u)
    if sep < 0:
        u, sep = -u, -sep
    return u * sep


def fit_direction(
    pos: torch.Tensor, neg: torch.Tensor, method: str = "mean_diff", *, seed: int = 0, C: float = 1.0
) -> Direction:
    """Fit one direction separating ``pos`` from ``neg`` (``[N, d]`` each); see the module docstring."""
    pos, neg = _check(pos, neg)
    if method == "mean_diff":
        return Direction(pos.mean(0) - neg.mean(0), method)
    if method == "pca":
        if len(pos) == len(neg):
            d = pos - neg
        else:
            g = torch.Generator().manual_seed(seed)
            n = min(len(pos), len(neg))
            d = (
                pos[torch.randperm(len(pos), generator=g)[:n]]
                - neg[torch.randperm(len(neg), generator=g)[:n]]
            )
        _, _, vh = torch.linalg.svd(d.double(), full_matrices=False)
        return Direction(_scaled(vh[0].float(), pos, neg), method)
    if method == "probe":
        from sklearn.linear_model import LogisticRegression

        x = torch.cat([pos, neg]).double()
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        center = x.mean(0)
        xc = (x - center).numpy()
        # scale-free regularisation: divide by the mean row norm so C means the same at every layer
        scale = float(np.linalg.norm(xc, axis=1).mean()) or 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(xc / scale, y)
        w = torch.from_numpy(clf.coef_[0] / scale).float()
        return Direction(
            _scaled(w, pos, neg), method, probe_w=w, probe_b=float(clf.intercept_[0]), center=center.float()
        )
    from .errors import ConfigError

    raise ConfigError(f"unknown method '{method}'; valid: {', '.join(VECTOR_METHODS)}")


def cohens_d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cohen's d with the pooled standard deviation (see the module docstring); nan if undefined."""
    a, b = a.double(), b.double()
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return float("nan")
    s = math.sqrt(((na - 1) * float(a.var()) + (nb - 1) * float(b.var())) / (na + nb - 2))
    return float((a.mean() - b.mean()) / s) if s > 0 else float("inf") if a.mean() != b.mean() else 0.0


def auroc(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counted ½."""
    p, n = pos_scores.double()[:, None], neg_scores.double()[None, :]
    if p.numel() == 0 or n.numel() == 0:
        return float("nan")
    return float(((p > n).double() + 0.5 * (p == n).double()).mean())


def evaluate_direction(
    direction: Direction,
    pos_train: torch.Tensor,
    neg_train: torch.Tensor,
    pos_val: torch.Tensor | None = None,
    neg_val: torch.Tensor | None = None,
) -> dict[str, float]:
    """Accuracy, AUROC and Cohen's d separation on train and (if given) validation data."""
    u = direction.unit

    def decide(x: torch.Tensor, thr: float) -> torch.Tensor:
        if direction.method == "probe" and direction.probe_w is not None:
            return ((x - direction.center) @ direction.probe_w + direction.probe_b) > 0
        return (x @ u) > thr

    thr = float(((pos_train @ u).mean() + (neg_train @ u).mean()) / 2)
    out: dict[str, float] = {}
    sets = [("train", pos_train, neg_train)]
    if pos_val is not None and neg_val is not None and len(pos_val) and len(neg_val):
        sets.append(("val", pos_val, neg_val))
    for name, p, n in sets:
        p, n = p.float(), n.float()
        correct = int(decide(p, thr).sum()) + int((~decide(n, thr)).sum())
        out[f"{name}_accuracy"] = correct / (len(p) + len(n))
        out[f"{name}_auroc"] = auroc(p @ u, n @ u)
        out[f"{name}_separation"] = cohens_d(p @ u, n @ u)
    return out


# ---- vector files ------------------------------------------------------------------------------


@dataclass
class TraitVector:
    """A steering vector with its metadata (``layer``, ``component``, ``method``, …)."""

    vector: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def component(self) -> str:
        return str(self.meta.get("component", "resid"))

    @property
    def method(self) -> str:
        return str(self.meta.get("method", "?"))

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm().clamp(min=1e-12)

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the vector's float32 bytes: identifies it in result keys."""
        import hashlib

        return hashlib.sha256(self.vector.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]

    @property
    def width(self) -> int:
        return int(self.vector.shape[-1]) if self.vector.dim() else 0

    def save(self, path: str | Path) -> Path:
        """Write a vector file (safetensors, metadata in the header), atomically."""
        v = torch.as_tensor(self.vector).detach().float()
        if v.dim() != 1:
            raise ShapeError(f"a vector file holds one [d] vector, got shape {tuple(v.shape)}")
        self.path = save_tensors(path, {"vector": v}, {**dict(self.meta), "format": VECTOR_FORMAT})
        return self.path

    @classmethod
    def load(cls, path: str | Path) -> TraitVector:
        """Read a vector file written by :meth:`save`."""
        path = Path(path)
        tensors = load_tensors(path)
        if "vector" not in tensors:
            raise DataFormatError(
                f"{path}: not a deltalens vector file (tensors: {', '.join(tensors) or 'none'})"
            )
        meta = read_safetensors_metadata(path)
        return cls(tensors["vector"].float(), meta, path)

    def __repr__(self) -> str:
        keys = ("trait", "method", "layer", "positions")
        desc = ", ".join(f"{k}={self.meta[k]!r}" for k in keys if k in self.meta)
        return f"TraitVector({desc}, d={self.vector.shape[-1]}, norm={self.norm:.3g})"


LAYER_GLOB = "layer*.safetensors"


def _layer_of(path: Path) -> int | None:
    tail = path.stem[len("layer") :]
    return int(tail) if path.stem.startswith("layer") and tail.isdigit() else None


class VectorSet(dict):  # dict[int, TraitVector]
    """The vectors of one extraction (trait, variant, position, component, method) by layer:
    a directory of ``layer<L>.safetensors`` files."""

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        for layer, v in sorted(self.items()):
            v.save(d / f"layer{int(layer)}.safetensors")
        return d

    @classmethod
    def load(cls, directory: str | Path, layers: Iterable[int] | None = None) -> VectorSet:
        """The layer files in ``directory`` (only ``layers`` if given); empty if there are none."""
        want = None if layers is None else {int(x) for x in layers}
        out = cls()
        for f in sorted(Path(directory).glob(LAYER_GLOB), key=lambda p: _layer_of(p) or -1):
            L = _layer_of(f)
            if L is not None and (want is None or L in want):
                out[L] = TraitVector.load(f)
        return out

    @property
    def width(self) -> int | None:
        widths = {v.width for v in self.values()}
        return widths.pop() if len(widths) == 1 else None


# ---- llama.cpp control vectors -----------------------------------------------------------------


def export_gguf(directions: Mapping[int, torch.Tensor], path: str | Path, model_hint: str) -> Path:
    """Write a llama.cpp control vector (repeng's format): ``direction.<L>`` is added to the
    output of block L. Write the vectors exactly as they should be added (coefficient
    included). llama.cpp rejects ``direction.0``; it is written with a warning."""
    import gguf

    if not directions:
        raise ShapeError("no directions to export")
    if 0 in directions:
        warnings.warn(
            "direction.0 (output of block 0) is not loadable by llama.cpp, which starts at layer 1",
            stacklevel=2,
        )
    path = Path(path)
    widths = {int(torch.as_tensor(v).shape[-1]) for v in directions.values()}
    if len(widths) != 1:
        raise ShapeError(f"all directions must have the same width, got {sorted(widths)}")
    with atomic_path(path, suffix=".gguf") as tmp:
        arch = "controlvector"
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_string(f"{arch}.model_hint", model_hint)
        writer.add_uint32(f"{arch}.layer_count", len(directions))
        for layer in sorted(directions):
            arr = torch.as_tensor(directions[layer]).detach().float().cpu().numpy().astype(np.float32)
            writer.add_tensor(f"direction.{int(layer)}", arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def import_gguf(path: str | Path) -> tuple[dict[int, torch.Tensor], str]:
    """Read a llama.cpp / repeng control vector → ``({layer: vector}, model_hint)``."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise DataFormatError(f"{path}: not a readable GGUF file ({exc})") from None

    def field_str(name: str) -> str | None:
        f = reader.get_field(name)
        if f is None or not len(f.parts):
            return None
        return bytes(f.parts[-1]).decode("utf-8", errors="replace")

    arch = field_str("general.architecture")
    if arch != "controlvector":
        raise DataFormatError(f"{path}: GGUF architecture is {arch!r}, not 'controlvector'")
    hint = field_str("controlvector.model_hint") or ""
    out: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        suffix = t.name.split(".", 1)[1]
        if not suffix.isdigit():
            raise DataFormatError(f"{path}: tensor '{t.name}' is not 'direction.<layer>'")
        out[int(suffix)] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
    if not out:
        raise DataFormatError(f"{path}: no direction.<layer> tensors")
    return out, hint


# ---- activation scale ----------------------------------------------------------------------------


_NORM_CACHE: dict[tuple[str, str, str], dict[int, float]] = {}


@torch.no_grad()
def reference_norms(
    lm: LoadedModel,
    layers: Iterable[int] | None = None,
    component: str = "resid",
    texts: Sequence[str] | None = None,
) -> dict[int, float]:
    """Mean per-token activation norm ``E‖x_L‖`` at each layer: the unit of *relative*
    steering coefficients (coefficient 0.1 adds a vector of 10 % of that norm).

    Measured over the bundled ``chat_prompts`` set formatted with the model's chat
    template (or ``texts`` if given), first token of each sequence excluded (many models
    put a huge-norm "attention sink" there). Memoised per model weights and texts.
    """
    from . import hooks
    from .data import bundled_prompts
    from .generate import left_pad, position_ids

    all_layers = list(range(lm.n_layers))
    want = all_layers if layers is None else sorted({int(x) % lm.n_layers for x in layers})
    if texts is None:
        prompts = [r.text for r in bundled_prompts("chat_prompts")]
        seqs = [lm.encode(lm.format_chat(p), formatted=lm.has_chat_template) for p in prompts]
        tkey = "chat_prompts"
    else:
        seqs = [lm.encode(t, formatted=False) for t in texts]
        tkey = str(hash(tuple(texts)))
    key = (lm.weights_hash, component, tkey)
    cached = _NORM_CACHE.setdefault(key, {})
    missing = [L for L in want if L not in cached]
    if missing:
        sums = {L: 0.0 for L in missing}
        count = {L: 0 for L in missing}

        def cb_for(L: int):
            def cb(x: torch.Tensor, mask: torch.Tensor, step: hooks.Step) -> None:
                sums[L] += float(x.float().norm(dim=-1)[mask].sum())
                count[L] += int(mask.sum())

            return cb

        reads = [hooks.Read((L, component), "all[1:]", callback=cb_for(L)) for L in missing]
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        stop = hooks.deepest_site([hooks.Site(L, component) for L in missing])
        with hooks.intervene(lm, reads, stop_at=stop):
            for k in range(0, len(seqs), 16):
                ids, mask = left_pad(seqs[k : k + 16], pad, lm.device)
                try:
                    lm.model(
                        input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False
                    )
                except hooks.StopForward:
                    pass
        for L in missing:
            cached[L] = sums[L] / max(count[L], 1)
    return {L: cached[L] for L in want}
