"""llama.cpp control vectors of an experiment's trait vectors (``export-gguf`` / ``import-gguf``).

* :func:`export_control_vector` — chosen layers of one vector set, scaled by a coefficient
  (raw: ``coef · v``; relative: ``coef · n_L · v̂``), written in repeng's GGUF format
  (:func:`deltalens.vectors.export_gguf`);
* :func:`import_control_vector` — a GGUF control vector filed as a vector set under the
  trait id ``extract`` and ``steer`` use, after checking its width against the model it is
  meant for (nothing is written when it does not fit).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, ModelSpecError, ShapeError
from ..experiment import Experiment
from ..io import provenance
from ..vectors import TraitVector, VectorSet, export_gguf, import_gguf
from .extraction import load_vector_set
from .pipeline import model_spec_for, model_width, trait_id
from .terms import COEF_MODES


@dataclass
class ControlVectorFile:
    """What an export or import did."""

    path: Path
    trait: str
    layers: list[int]
    model_hint: str
    directory: Path | None = None
    d_model: int | None = None
    notes: list[str] = field(default_factory=list)


def export_control_vector(
    exp: Experiment,
    trait: str,
    out: str | Path,
    *,
    variant: str = "instruct",
    position: str = "response[:]",
    method: str = "mean_diff",
    layers: Sequence[int] | None = None,
    coef: float = 1.0,
    coef_mode: str = "raw",
    component: str = "resid",
) -> ControlVectorFile:
    """Export ``layers`` (default: all) of a vector set as a llama.cpp control vector."""
    if component != "resid":
        raise ConfigError(
            "--component: llama.cpp control vectors act on the residual stream; export resid vectors"
        )
    if coef_mode not in COEF_MODES:
        raise ConfigError(f"--coef-mode must be one of {', '.join(COEF_MODES)}, got {coef_mode!r}")
    tid = trait_id(trait)
    vs = load_vector_set(exp, tid, variant, position, method, component)
    want = sorted(vs) if layers is None else sorted({int(x) for x in layers})
    missing = [L for L in want if L not in vs]
    if missing:
        raise ConfigError(f"--layers: no vectors for layers {missing} (have {sorted(vs)})")
    if coef_mode == "relative":
        from ..models import load
        from ..vectors import reference_norms

        lm = load(model_spec_for(exp, variant))
        norms = reference_norms(lm, want)
        dirs = {L: coef * norms[L] * vs[L].unit for L in want}
    else:
        dirs = {L: coef * vs[L].vector for L in want}
    hint = str(vs[want[0]].meta.get("model", "unknown"))
    path = export_gguf(dirs, out, hint)
    return ControlVectorFile(path, tid, want, hint, d_model=vs.width)


def _target_width(exp: Experiment, model_variant: str, model: str | None) -> int | None:
    """``d_model`` of the model the vectors are for, or None when no model can be resolved."""
    try:
        return model_width(model_spec_for(exp, model_variant, model, record=False))
    except (ConfigError, ModelSpecError, OSError, ValueError):
        if model is not None:
            raise
        return None


def import_control_vector(
    exp: Experiment,
    path: str | Path,
    trait: str,
    *,
    variant: str = "imported",
    position: str = "response[:]",
    method: str = "gguf",
    model_variant: str = "instruct",
    model: str | None = None,
) -> ControlVectorFile:
    """File a GGUF control vector's directions as vectors of ``trait`` (one per layer).

    The width is checked against ``model`` (or the experiment's ``model_variant``) before
    anything is written: :class:`ShapeError` when it differs. When no model can be
    resolved the check is left to ``steer`` (which checks every vector before generating)."""
    tid = trait_id(trait)
    dirs, hint = import_gguf(path)
    widths = sorted({int(v.shape[-1]) for v in dirs.values()})
    if len(widths) != 1:
        raise ShapeError(f"{path}: directions of different widths {widths}")
    d_model = _target_width(exp, model_variant, model)
    notes = []
    if d_model is None:
        notes.append(
            f"no model recorded for variant '{model_variant}': width {widths[0]} not checked (steer checks it)"
        )
    elif widths[0] != d_model:
        raise ShapeError(
            f"{path}: control vector width {widths[0]} does not match d_model {d_model} of the model of "
            f"variant '{model_variant}'; pass --model / --model-variant for the model it was made for"
        )
    vs = VectorSet()
    for L, v in sorted(dirs.items()):
        meta = {
            "trait": tid,
            "variant": variant,
            "positions": position,
            "component": "resid",
            "layer": L,
            "method": method,
            "norm": float(torch.as_tensor(v).norm()),
            "model_hint": hint,
            "source": str(path),
            "provenance": provenance(None, source=str(path)),
        }
        vs[L] = TraitVector(v, meta)
    d = exp.vectors_dir(tid, variant, position, "resid", method)
    if d_model is None:
        warnings.warn(notes[0], stacklevel=2)
    vs.save(d)
    return ControlVectorFile(
        Path(path), tid, sorted(dirs), hint, d, d_model if d_model is not None else widths[0], notes
    )
