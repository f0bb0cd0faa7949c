"""The steering configuration: :class:`Term` and :class:`Candidate`, compiled to ``hooks.Add``.

A :class:`Candidate` is one configuration to generate under: zero or more :class:`Term`
(a vector applied at a layer with a coefficient). Coefficients are *relative* (default)
or *raw*:

* relative — the added vector is ``coef · n_L · v̂``, with ``v̂ = v/‖v‖`` and ``n_L`` the
  mean activation norm at layer L (:func:`deltalens.vectors.reference_norms`); 0.1 adds
  10 % of a typical residual norm, comparable across layers and models;
* raw — the added vector is ``coef · v`` (``v`` as stored in the vector file).

:func:`interventions` is the one place a configuration becomes interventions: one
``Add`` per steered site, with per-row vectors and coefficients when several candidates
share a batch (row slices, :func:`deltalens.steering.generate_sweep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, ShapeError
from ..hooks import Add, Site
from ..vectors import TraitVector, reference_norms

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..positions import Positions

COEF_MODES = ("relative", "raw")


@dataclass
class Term:
    """A vector applied at ``layer`` (default: the vector's own layer) with ``coef``.

    ``vector`` is a :class:`~deltalens.vectors.TraitVector`, or a bare ``[d]`` tensor (then
    ``layer`` is required)."""

    vector: TraitVector
    coef: float
    layer: int | None = None
    coef_mode: str = "relative"
    component: str | None = None

    def __post_init__(self) -> None:
        if self.coef_mode not in COEF_MODES:
            raise ConfigError(f"--coef-mode must be one of {', '.join(COEF_MODES)}, got {self.coef_mode!r}")
        if not isinstance(self.vector, TraitVector):
            if self.layer is None:
                raise ConfigError("a steering term over a bare tensor needs its layer")
            v = torch.as_tensor(self.vector)
            meta = {"layer": int(self.layer), "component": self.component or "resid", "method": "tensor"}
            self.vector = TraitVector(v, meta)

    @property
    def at_layer(self) -> int:
        return int(self.vector.layer if self.layer is None else self.layer)

    @property
    def at_component(self) -> str:
        return self.component or self.vector.component

    @property
    def site(self) -> Site:
        return Site(self.at_layer, self.at_component)

    def added_vector(self, norms: dict[int, float]) -> torch.Tensor:
        """The vector added at coefficient 1 (``n_L·v̂`` relative, ``v`` raw)."""
        if self.coef_mode == "relative":
            return self.vector.unit * float(norms[self.at_layer])
        return self.vector.vector.float()

    def describe(self, norms: dict[int, float] | None = None) -> dict[str, Any]:
        """The term as recorded in a result (its identity: part of the configuration key)."""
        m = self.vector.meta
        d: dict[str, Any] = {
            "layer": self.at_layer,
            "component": self.at_component,
            "coef": round(float(self.coef), 6),
            "coef_mode": self.coef_mode,
            "vector": {
                "trait": m.get("trait"),
                "variant": m.get("variant"),
                "positions": m.get("positions"),
                "method": m.get("method"),
                "layer": m.get("layer"),
                "fingerprint": self.vector.fingerprint(),
            },
        }
        if norms is not None:
            d["added_norm"] = round(abs(float(self.coef)) * float(self.added_vector(norms).norm()), 4)
        return d


@dataclass
class Candidate:
    """One configuration (no terms = the unsteered baseline)."""

    terms: tuple[Term, ...] = ()
    kind: str = "single"
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def baseline(cls) -> Candidate:
        return cls((), "baseline", "baseline")

    @classmethod
    def single(cls, vector: TraitVector, coef: float, coef_mode: str = "relative", **meta: Any) -> Candidate:
        label = f"{vector.method} L{vector.layer} c{coef:g}"
        return cls((Term(vector, coef, coef_mode=coef_mode),), "single", label, dict(meta))


def needed_norms(lm: LoadedModel, candidates: Sequence[Candidate]) -> dict[int, float]:
    """Reference norms of every layer a relative term of ``candidates`` steers."""
    layers = sorted({t.at_layer for c in candidates for t in c.terms if t.coef_mode == "relative"})
    return reference_norms(lm, layers) if layers else {}


def check_widths(candidates: Sequence[Candidate], d_model: int, what: str = "model") -> None:
    """Every term's vector is ``[d_model]`` (:class:`ShapeError` naming the vector otherwise)."""
    for c in candidates:
        for t in c.terms:
            v = t.vector
            if v.vector.dim() != 1 or int(v.vector.shape[-1]) != int(d_model):
                where = f" ({v.path})" if v.path is not None else ""
                raise ShapeError(
                    f"vector {v.meta.get('trait', '?')} {v.method} layer {v.meta.get('layer', '?')}{where} has width "
                    f"{tuple(v.vector.shape)[-1] if v.vector.dim() else 0}, the {what} has d_model {d_model}"
                )


def interventions(
    candidates: Sequence[Candidate],
    norms: dict[int, float],
    positions: str | Positions,
    *,
    row0: Sequence[int] | None = None,
    n_prompts: int = 1,
) -> list[Add]:
    """The ``Add`` interventions of ``candidates``, one per steered site.

    ``row0`` given (batched): candidate c steers rows ``row0[c] … row0[c] + n_prompts − 1``
    (per-row vectors ``[R, d]`` and coefficients ``[R]``). ``row0=None``: every candidate's
    terms apply to every row (use with one candidate)."""
    if row0 is None:
        return [
            Add(t.site, t.added_vector(norms), float(t.coef), positions=positions)
            for c in candidates
            for t in c.terms
        ]
    by_site: dict[Site, tuple[list[int], list[torch.Tensor], list[float]]] = {}
    for c, cand in enumerate(candidates):
        for t in cand.terms:
            rows, vecs, coefs = by_site.setdefault(t.site, ([], [], []))
            v = t.added_vector(norms).detach().float()
            for p in range(n_prompts):
                rows.append(row0[c] + p)
                vecs.append(v)
                coefs.append(float(t.coef))
    return [
        Add(site, torch.stack(vecs), torch.tensor(coefs), positions=positions, rows=rows)
        for site, (rows, vecs, coefs) in by_site.items()
    ]
