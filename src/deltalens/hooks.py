"""The one hook mechanism: sites, interventions and :func:`intervene`.

Reading activations, steering, ablation, patching, SAE splicing and gradient capture
all go through this module; nothing else in deltalens registers PyTorch hooks.

* A **site** names a place: ``Site(layer, component)`` with components

  ============  =====================================================================
  ``embed``     output of the token embedding module (layer ignored, use 0)
  ``resid_pre`` input of decoder block L  (= HF ``hidden_states[L]``)
  ``resid``     output of decoder block L (= HF ``hidden_states[L+1]``; HF's last entry
                has the final norm applied, deltalens's ``resid`` of the last layer does not)
  ``attn_out``  what the attention sub-block adds to the residual stream in block L
  ``mlp_out``   what the MLP sub-block adds to the residual stream in block L
  ============  =====================================================================

* An **intervention** says what happens there — :class:`Read`, :class:`Add`,
  :class:`Replace`, :class:`Ablate`, :class:`Splice` — at which **positions** (the
  position language of :mod:`deltalens.positions`) and, optionally, for which **rows**.

Rows are *global* row ids: ``deltalens.generate`` and ``deltalens.capture`` number their
inputs 0..N-1 and tell the hooks which inputs each internal batch holds, so ``rows=[3]``
means "input 3" however the work is batched. Outside those functions (a plain
``model(...)`` call) row ids are the batch indices.

Positions are resolved on every forward call from the attention mask and the KV-cache
length, so ``positions="response"`` steers every generated token (and no prompt token)
under KV-cached generation, with or without left padding. During generation the prompt
is what the first (prefill) forward saw, unless the caller states prompt lengths with
:func:`batch_info`.

All hooks are removed when the ``with intervene(...)`` block exits, also after an
exception.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import ShapeError, SiteError
from .models.arch import COMPONENTS
from .positions import Geometry, Positions

if TYPE_CHECKING:
    from .models.loading import LoadedModel
    from .sae.protocol import SAELike

_SAELENS_HOOKS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
}
_SAELENS_NAMES = {v: k for k, v in _SAELENS_HOOKS.items()}


@dataclass(frozen=True, order=True)
class Site:
    """A place in the model: ``(layer, component)``; see the module docstring."""

    layer: int
    component: str = "resid"

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise SiteError(f"unknown component '{self.component}'; valid: {', '.join(COMPONENTS)}")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool):
            raise SiteError(f"layer must be an integer, got {self.layer!r}")

    @classmethod
    def parse(cls, site: SiteLike) -> Site:
        """Accepts a Site, ``(layer, component)``, an int (``resid`` of that layer),
        ``"resid.6"``, ``"6"`` or a SAELens hook name (``"blocks.6.hook_resid_post"``)."""
        if isinstance(site, Site):
            return site
        if isinstance(site, bool):
            raise SiteError(f"not a site: {site!r}")
        if isinstance(site, int):
            return cls(site, "resid")
        if isinstance(site, (tuple, list)) and len(site) == 2:
            a, b = site
            if isinstance(a, str) and not isinstance(b, str):
                a, b = b, a
            return cls(int(a), str(b))
        if isinstance(site, str):
            s = site.strip()
            if s in ("embed", "hook_embed"):
                return cls(0, "embed")
            if s.startswith("blocks."):
                parts = s.split(".")
                if len(parts) == 3 and parts[1].isdigit() and parts[2] in _SAELENS_HOOKS:
                    return cls(int(parts[1]), _SAELENS_HOOKS[parts[2]])
            if s.lstrip("-").isdigit():
                return cls(int(s), "resid")
            for sep in (".", ":", "/"):
                if sep in s:
                    comp, _, layer = s.rpartition(sep)
                    if layer.lstrip("-").isdigit():
                        return cls(int(layer), comp)
                    layer, _, comp = s.partition(sep)
                    if layer.lstrip("-").isdigit():
                        return cls(int(layer), comp)
        raise SiteError(
            f"cannot read site {site!r}; write e.g. 'resid.6', (6, 'mlp_out') or 'blocks.6.hook_resid_post'"
        )

    def resolve(self, lm: LoadedModel | int) -> Site:
        """This site on a model (or a layer count): the one place a layer is validated.

        Negative layers count from the end, Python style (``resid.-1`` is the last block's
        output); the result always holds the non-negative layer. ``embed`` ignores the layer.
        Raises :class:`SiteError` naming the valid range."""
        if self.component == "embed":
            return Site(0, "embed")
        n = lm if isinstance(lm, int) else lm.n_layers
        if not -n <= self.layer < n:
            raise SiteError(
                f"layer {self.layer} is out of range: this model has {n} layers "
                f"(valid: 0..{n - 1}, or {-n}..-1 counting from the end)"
            )
        return Site(self.layer % n, self.component)

    @classmethod
    def resolve_all(cls, lm: LoadedModel | int, sites: SiteLike | Sequence[SiteLike]) -> list[Site]:
        """Parse and :meth:`resolve` one site or several (``"resid.6"``, ``6``, ``(6, "resid")``,
        ``"resid.-1"``…); duplicates (also ``resid.-1`` next to ``resid.29``) are dropped, order kept."""
        out: list[Site] = []
        for s in parse_sites(sites):
            site = s.resolve(lm)
            if site not in out:
                out.append(site)
        if not out:
            raise SiteError("no site given; write e.g. 'resid.6' or 'resid.6,mlp_out.6'")
        return out

    def __str__(self) -> str:
        return "embed" if self.component == "embed" else f"{self.component}.{self.layer}"

    @property
    def hook_name(self) -> str:
        """The SAELens / TransformerLens hook name of this site."""
        if self.component == "embed":
            return "hook_embed"
        return f"blocks.{self.layer}.{_SAELENS_NAMES[self.component]}"


SiteLike = Site | tuple | str | int


def parse_sites(sites: SiteLike | Sequence[SiteLike]) -> list[Site]:
    """One site or several, parsed (no model needed; :meth:`Site.resolve_all` also checks ranges)."""
    if isinstance(sites, (Site, int, str)) or (
        isinstance(sites, tuple) and len(sites) == 2 and any(isinstance(x, str) for x in sites)
    ):
        sites = [sites]  # type: ignore[list-item]
    return [Site.parse(s) for s in sites]  # type: ignore[union-attr]


RowsLike = None | slice | Sequence[int] | torch.Tensor | range


class StopForward(Exception):
    """Raised by the early-exit hook once the deepest requested site has run."""


# ---- batch information -------------------------------------------------------------------


@dataclass
class BatchInfo:
    """What the caller knows about the batch being run: global row ids and prompt lengths."""

    row_ids: torch.Tensor | None = None
    prompt_lens: torch.Tensor | None = None


_BATCH: weakref.WeakKeyDictionary[nn.Module, BatchInfo] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def batch_info(
    lm: LoadedModel,
    row_ids: Sequence[int] | torch.Tensor | None = None,
    prompt_lens: Sequence[int] | torch.Tensor | None = None,
) -> Iterator[None]:
    """Tell active interventions which global rows the next forward calls hold and how many
    real prompt tokens each row has (for a forward over prompt + response in one go)."""
    key = lm.arch.backbone
    old = _BATCH.get(key)
    _BATCH[key] = BatchInfo(
        None if row_ids is None else torch.as_tensor(row_ids, dtype=torch.long),
        None if prompt_lens is None else torch.as_tensor(prompt_lens, dtype=torch.long),
    )
    try:
        yield
    finally:
        if old is None:
            _BATCH.pop(key, None)
        else:
            _BATCH[key] = old


class Step:
    """Geometry of the forward call in flight, shared by all interventions of a session."""

    def __init__(self, geom: Geometry, row_ids: torch.Tensor, token_types: dict[str, int]):
        self.geom = geom
        self.row_ids = row_ids
        self.token_types = token_types
        self._masks: dict[str, torch.Tensor] = {}
        self._rows: dict[int, torch.Tensor] = {}
        self.args: tuple = ()  # inputs of the module whose forward hook is running

    @property
    def start(self) -> int:
        return self.geom.start

    def mask(self, positions: Positions) -> torch.Tensor:
        key = positions.text
        m = self._masks.get(key)
        if m is None:
            m = positions.mask(self.geom, self.token_types)
            self._masks[key] = m
        return m

    def row_mask(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        if rows is None:
            return None
        key = id(rows)
        m = self._rows.get(key)
        if m is None:
            m = torch.isin(self.row_ids, rows.to(self.row_ids.device))
            self._rows[key] = m
        return m

    def select(self, iv: Intervention) -> torch.Tensor:
        """``[B, T]`` bool: positions of ``iv`` restricted to its rows."""
        m = self.mask(iv.positions)
        r = self.row_mask(iv.rows)
        return m if r is None else m & r[:, None]


def _rows_tensor(rows: RowsLike) -> torch.Tensor | None:
    if rows is None:
        return None
    if isinstance(rows, slice):
        if rows.stop is None or (rows.start or 0) < 0 or rows.stop < 0:
            raise ShapeError(f"row slice {rows} needs explicit non-negative bounds")
        return torch.arange(rows.start or 0, rows.stop, rows.step or 1)
    t = torch.as_tensor(list(rows) if isinstance(rows, range) else rows, dtype=torch.long).flatten()
    return t


# ---- interventions -------------------------------------------------------------------------


class Intervention:
    """Base class: a site, positions (default ``all``) and optional global ``rows``."""

    def __init__(self, site: SiteLike, positions: str | Positions = "all", rows: RowsLike = None):
        self.site = Site.parse(site)
        self.positions = Positions.parse(positions)
        self.rows = _rows_tensor(rows)

    def bind(self, lm: LoadedModel) -> None:
        """Validate against a model before any forward runs (layer range, widths, token types)."""
        self.site = self.site.resolve(lm)
        self.positions.check_token_types(lm.token_types if lm.tokenizer is not None else {})
        self.d_model = lm.d_model

    def _check_width(self, t: torch.Tensor, what: str) -> None:
        if t.shape[-1] != self.d_model:
            raise ShapeError(
                f"{type(self).__name__} at {self.site}: {what} has width {t.shape[-1]} but the model's "
                f"d_model is {self.d_model}"
            )

    def _row_table(self, n_values: int, what: str) -> torch.Tensor:
        """Lookup global row id → index into per-row values (-1 where not selected)."""
        if self.rows is None:
            raise ShapeError(f"{type(self).__name__} at {self.site}: per-row {what} needs rows=")
        if len(self.rows) != n_values:
            raise ShapeError(
                f"{type(self).__name__} at {self.site}: {n_values} per-row {what} for {len(self.rows)} rows"
            )
        table = torch.full((int(self.rows.max()) + 1,), -1, dtype=torch.long)
        table[self.rows] = torch.arange(len(self.rows))
        return table

    @staticmethod
    def _lookup(table: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        ids = row_ids.to(table.device)
        out = torch.full_like(ids, -1)
        ok = (ids >= 0) & (ids < len(table))
        out[ok] = table[ids[ok]]
        return out

    def target(self, lm: LoadedModel) -> tuple[nn.Module, str]:
        """The module to hook and the hook kind (``"forward"``: edit the output, ``"pre"``: edit
        the first input); the site's module unless a subclass hooks somewhere finer."""
        return lm.arch.module_for(self.site.layer, self.site.component)

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        rows = "" if self.rows is None else f", rows={len(self.rows)}"
        return f"{type(self).__name__}({self.site}, positions={self.positions.text!r}{rows})"


class Read(Intervention):
    """Record the activation at a site.

    After the run, ``value`` is the last forward's full ``[B, T, d]`` tensor, ``values`` the
    list over forward calls (one per generation step under KV caching), ``selected()`` the
    rows picked by positions/rows concatenated in (forward, row, position) order.
    ``keep_grad=True`` keeps the tensor in the graph and calls ``retain_grad`` so that
    ``value.grad`` holds ∂metric/∂activation after ``backward()``. ``callback(x, mask, step)``
    replaces storage (used by :func:`deltalens.capture` to reduce on the fly).
    """

    def __init__(
        self,
        site: SiteLike,
        positions: str | Positions = "all",
        rows: RowsLike = None,
        keep_grad: bool = False,
        callback: Callable[[torch.Tensor, torch.Tensor, Step], None] | None = None,
    ):
        super().__init__(site, positions, rows)
        self.keep_grad = keep_grad
        self.callback = callback
        self.values: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        mask = step.select(self)
        if self.callback is not None:
            self.callback(x, mask, step)
            return x
        if self.keep_grad and x.requires_grad:
            x.retain_grad()
            self.values.append(x)
        else:
            self.values.append(x.detach())
        self.masks.append(mask)
        return x

    @property
    def value(self) -> torch.Tensor:
        if not self.values:
            raise RuntimeError(f"{self!r} has not seen a forward pass")
        return self.values[-1]

    def selected(self) -> torch.Tensor:
        """Selected activations ``[n, d]`` over all forward calls."""
        return torch.cat([v[m] for v, m in zip(self.values, self.masks)], dim=0)

    def full(self) -> torch.Tensor:
        """All forward calls concatenated along the sequence axis ``[B, T_total, d]``
        (the whole generated sequence under KV caching)."""
        return torch.cat(self.values, dim=1)

    def clear(self) -> None:
        self.values.clear()
        self.masks.clear()


class Add(Intervention):
    """``x ← x + coef · vector`` at the selected positions/rows (steering).

    ``vector`` is ``[d]`` (same for every row) or ``[R, d]`` with ``rows`` of length R (one
    vector per row); ``coef`` is a float or ``[R]`` per-row coefficients.
    """

    def __init__(
        self,
        site: SiteLike,
        vector: torch.Tensor,
        coef: float | Sequence[float] | torch.Tensor = 1.0,
        positions: str | Positions = "all",
        rows: RowsLike = None,
    ):
        super().__init__(site, positions, rows)
        self.vector = torch.as_tensor(vector).detach()
        if self.vector.dim() not in (1, 2):
            raise ShapeError(
                f"Add at {self.site}: vector must be [d] or [rows, d], got {tuple(self.vector.shape)}"
            )
        self.coef = torch.as_tensor(coef, dtype=torch.float32).detach()
        self._table: torch.Tensor | None = None
        if self.vector.dim() == 2 or self.coef.dim() == 1:
            n = self.vector.shape[0] if self.vector.dim() == 2 else len(self.coef)
            if self.vector.dim() == 2 and self.coef.dim() == 1 and len(self.coef) != n:
                raise ShapeError(f"Add at {self.site}: {n} vectors but {len(self.coef)} coefficients")
            self._table = self._row_table(n, "vectors/coefficients")
        self._cache: dict[tuple, torch.Tensor] = {}

    def bind(self, lm: LoadedModel) -> None:
        super().bind(lm)
        self._check_width(self.vector, "the steering vector")

    def _delta(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        key = (x.device, x.dtype)
        if self._table is None:
            d = self._cache.get(key)
            if d is None:
                d = (self.coef.to(torch.float32) * self.vector.to(torch.float32)).to(x.device, x.dtype)
                self._cache[key] = d
            return d  # [d]
        idx = self._lookup(self._table, step.row_ids).cpu()  # [B], -1 where the row is not selected
        j = idx.clamp(min=0)
        B = len(idx)
        vec = self.vector.to(torch.float32)
        vec_b = vec[j] if vec.dim() == 2 else vec.expand(B, -1)
        coef_b = self.coef[j] if self.coef.dim() == 1 else self.coef.expand(B)
        d = coef_b[:, None] * vec_b * (idx >= 0)[:, None]
        return d.to(x.device, x.dtype)[:, None, :]  # [B, 1, d]

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        m = step.select(self)
        return x + m[..., None].to(x.dtype) * self._delta(x, step)


class Replace(Intervention):
    """``x ← values`` at the selected positions/rows (patching, mean-ablation).

    ``values`` is ``[d]`` (broadcast), ``[L, d]`` (per absolute position, shared by rows)
    or ``[R, L, d]`` (per row and position; R = len(rows), or the batch size without rows).
    Position-indexed values are aligned to absolute positions of the padded sequence, so
    under KV caching step t reads ``values[..., t, :]``.

    ``where`` (optional) narrows the selection further with a boolean mask over absolute
    positions: ``[L]`` (shared by rows) or ``[R, L]`` (per row, indexed like ``values``), so
    one forward can patch a different position set in every row.
    """

    def __init__(
        self,
        site: SiteLike,
        values: torch.Tensor,
        positions: str | Positions = "all",
        rows: RowsLike = None,
        where: torch.Tensor | None = None,
    ):
        super().__init__(site, positions, rows)
        self.values = torch.as_tensor(values).detach()
        if self.values.dim() not in (1, 2, 3):
            raise ShapeError(f"Replace at {self.site}: values must be [d], [L, d] or [R, L, d]")
        self.where = None if where is None else torch.as_tensor(where).detach().bool()
        if self.where is not None and self.where.dim() not in (1, 2):
            raise ShapeError(
                f"Replace at {self.site}: where must be [L] or [R, L], got {tuple(self.where.shape)}"
            )
        if (
            self.where is not None
            and self.where.dim() == 2
            and self.values.dim() == 3
            and self.where.shape[0] != self.values.shape[0]
        ):
            raise ShapeError(
                f"Replace at {self.site}: where has {self.where.shape[0]} rows but values have {self.values.shape[0]}"
            )
        n_rowed = (
            self.values.shape[0]
            if self.values.dim() == 3
            else (self.where.shape[0] if self.where is not None and self.where.dim() == 2 else None)
        )
        self._table = (
            self._row_table(n_rowed, "values") if (n_rowed is not None and self.rows is not None) else None
        )

    def bind(self, lm: LoadedModel) -> None:
        super().bind(lm)
        self._check_width(self.values, "the replacement values")

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        m = step.select(self)
        v = self.values.to(x.device, x.dtype)
        B, T, _ = x.shape
        if v.dim() >= 2:
            L = v.shape[-2]
            if L < step.start + T:
                raise ShapeError(
                    f"Replace at {self.site}: values cover {L} positions but the sequence reaches {step.start + T}"
                )
            v = v[..., step.start : step.start + T, :]
        idx = None
        if self._table is not None:
            idx = self._lookup(self._table, step.row_ids)
            m = m & (idx >= 0)[:, None]
            idx = idx.clamp(min=0)
        if v.dim() == 3:
            if idx is not None:
                v = v[idx.to(v.device)]
            elif v.shape[0] != B:
                raise ShapeError(
                    f"Replace at {self.site}: values for {v.shape[0]} rows but the batch has {B}"
                )
        if self.where is not None:
            w = self.where.to(x.device)
            if w.shape[-1] < step.start + T:
                raise ShapeError(
                    f"Replace at {self.site}: where covers {w.shape[-1]} positions but the sequence reaches {step.start + T}"
                )
            w = w[..., step.start : step.start + T]
            if w.dim() == 2:
                if idx is not None:
                    w = w[idx.to(w.device)]
                elif w.shape[0] != B:
                    raise ShapeError(
                        f"Replace at {self.site}: where for {w.shape[0]} rows but the batch has {B}"
                    )
            m = m & w
        return torch.where(m[..., None], v, x)


class Ablate(Intervention):
    """Zero-ablation (``direction=None``) or directional ablation ``x ← x − (x·d̂) d̂``."""

    def __init__(
        self,
        site: SiteLike,
        direction: torch.Tensor | None = None,
        positions: str | Positions = "all",
        rows: RowsLike = None,
    ):
        super().__init__(site, positions, rows)
        self.direction = None
        if direction is not None:
            d = torch.as_tensor(direction).detach().to(torch.float32)
            if d.dim() != 1:
                raise ShapeError(f"Ablate at {self.site}: direction must be [d], got {tuple(d.shape)}")
            n = d.norm()
            if n == 0:
                raise ShapeError(f"Ablate at {self.site}: direction is the zero vector")
            self.direction = d / n

    def bind(self, lm: LoadedModel) -> None:
        super().bind(lm)
        if self.direction is not None:
            self._check_width(self.direction, "the ablation direction")

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        m = step.select(self)[..., None]
        if self.direction is None:
            return torch.where(m, torch.zeros_like(x), x)
        d = self.direction.to(x.device, x.dtype)
        proj = (x @ d)[..., None] * d
        return x - m.to(x.dtype) * proj


class Splice(Intervention):
    """Route the site through an SAE: ``x ← decode(edit(encode(x))) + ε`` with the error
    term ``ε = x − decode(encode(x))`` (``keep_error=False`` drops it).

    With ``keep_error=True`` and no edit the output equals ``x`` up to float error, while
    gradients reach the latents and the error node (the latents are a leaf computed from a
    detached x and ε = x − x̂.detach(), so gradients to earlier layers pass through ε
    unchanged). Without the error term gradients flow through the SAE itself. ``record=True`` keeps ``latents`` and
    ``errors`` per forward (with ``retain_grad`` when gradients are on). ``edit`` receives
    the latents ``[B, T, d_sae]`` and returns new ones (ablation/steering with features);
    ``edit_error`` receives the error term ``[B, T, d_in]`` and returns a new one (e.g.
    mean-ablating the error node; only with ``keep_error=True``).
    The SAE must provide ``encode``, ``decode`` and ``d_in``; if it names a site
    (``sae.site``) that differs from this one, the splice is refused unless
    ``check_site=False``.
    """

    def __init__(
        self,
        site: SiteLike,
        sae: SAELike,
        positions: str | Positions = "all",
        rows: RowsLike = None,
        keep_error: bool = True,
        edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
        record: bool = False,
        check_site: bool = True,
        edit_error: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__(site, positions, rows)
        self.sae = sae
        self.keep_error = keep_error
        self.edit = edit
        self.edit_error = edit_error
        if edit_error is not None and not keep_error:
            raise ShapeError(
                f"Splice at {self.site}: edit_error needs keep_error=True (there is no error term)"
            )
        self.record = record
        self.check_site = check_site
        self.latents: list[torch.Tensor] = []
        self.errors: list[torch.Tensor] = []

    def bind(self, lm: LoadedModel) -> None:
        super().bind(lm)
        _check_sae_fits(self.sae, lm, self.site, self.check_site)

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        m = step.select(self)
        dt = getattr(self.sae, "dtype", x.dtype)
        xs = x.to(dt)
        grad = torch.is_grad_enabled()
        if self.keep_error:
            # Latents are computed from a detached x and made a leaf, and the error node is
            # x − x̂.detach(): the output equals x, ∂out/∂x = I (upstream gradients are
            # unchanged), and ∂metric/∂f, ∂metric/∂ε land in f.grad and ε.grad.
            f = self.sae.encode(xs.detach())
            if grad:
                f = f.detach().requires_grad_(True)
            x_hat = self.sae.decode(f)
            err = xs - x_hat.detach()
        else:
            f = self.sae.encode(xs)
            if grad and f.requires_grad:
                f.retain_grad()
            x_hat = self.sae.decode(f)
            err = (xs - x_hat).detach()
        if self.record:
            if err.requires_grad:
                err.retain_grad()
            self.latents.append(f)
            self.errors.append(err)
        if self.edit is not None:
            x_hat = self.sae.decode(self.edit(f))
        if self.edit_error is not None:
            err = self.edit_error(err)
        out = x_hat + err if self.keep_error else x_hat
        return torch.where(m[..., None], out.to(x.dtype), x)


def _check_sae_fits(sae: Any, lm: LoadedModel, site: Site, check_site: bool) -> None:
    """Refuse an SAE whose input width is not the model's d_model or that names another site."""
    d_in = int(getattr(sae, "d_in", -1))
    if d_in != lm.d_model:
        raise ShapeError(f"SAE d_in={d_in} does not match {lm.name}'s d_model={lm.d_model} at {site}")
    sae_site = getattr(sae, "site", None)
    if check_site and sae_site is not None:
        s = Site.parse(sae_site)
        if s != site:
            raise SiteError(
                f"SAE was trained at {s} but is spliced at {site}; pass check_site=False to force it"
            )


class EditLatents(Intervention):
    """Set SAE latents to new values and keep the SAE's error term (latent ablation):

    ``x ← x − Σ_j m_rj · (f_j(x) − a_rj) · d_j``

    with ``f = sae.encode(x)``, ``d_j`` the decoder row of latent ``j``, ``m_r`` the latents
    edited in row ``r`` and ``a_r`` their new values (0: zero-ablation; a mean activation:
    mean-ablation). This is ``decode(edit(f)) + ε`` with ``ε = x − decode(f)`` for a linear
    decoder, computed as a difference so that a row with no edited latent keeps ``x``
    **exactly** (bit for bit: an empty edit changes nothing).

    ``latents`` is one list of latent ids for every row, or one list per row with ``rows``
    (several configurations in one batch); ``values`` is a float, ``[d_sae]`` or ``[R, d_sae]``.
    """

    def __init__(
        self,
        site: SiteLike,
        sae: SAELike,
        latents: Sequence[int] | Sequence[Sequence[int]],
        values: float | torch.Tensor = 0.0,
        positions: str | Positions = "all",
        rows: RowsLike = None,
        check_site: bool = True,
    ):
        super().__init__(site, positions, rows)
        self.sae = sae
        self.check_site = check_site
        d_sae = int(getattr(sae, "d_sae", 0) or sae.W_dec.shape[0])
        per_row = self.rows is not None
        groups = [[int(j) for j in g] for g in latents] if per_row else [[int(j) for j in latents]]  # type: ignore[union-attr]
        if per_row and len(groups) != len(self.rows):
            raise ShapeError(
                f"EditLatents at {self.site}: {len(groups)} latent lists for {len(self.rows)} rows"
            )
        mask = torch.zeros(len(groups), d_sae, dtype=torch.bool)
        for i, g in enumerate(groups):
            for j in g:
                if not 0 <= int(j) < d_sae:
                    raise ShapeError(
                        f"latent id {int(j)} is out of range: the SAE has d_sae={d_sae} (valid: 0..{d_sae - 1})"
                    )
                mask[i, int(j)] = True
        self.mask = mask
        v = torch.as_tensor(values, dtype=torch.float32)
        if (
            v.dim() == 1
            and len(v) != d_sae
            or v.dim() == 2
            and tuple(v.shape) != (len(groups), d_sae)
            or v.dim() > 2
        ):
            raise ShapeError(
                f"EditLatents at {self.site}: values of shape {tuple(v.shape)} for d_sae={d_sae}"
            )
        self.values = v
        self._table = self._row_table(len(groups), "latent lists") if self.rows is not None else None

    def bind(self, lm: LoadedModel) -> None:
        super().bind(lm)
        _check_sae_fits(self.sae, lm, self.site, self.check_site)

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        if self._table is None:
            m_rows = self.mask.expand(x.shape[0], -1)
            vals = self.values if self.values.dim() < 2 else self.values.expand(x.shape[0], -1)
            idx = torch.zeros(x.shape[0], dtype=torch.long)
        else:
            idx = self._lookup(self._table, step.row_ids).cpu()
            j = idx.clamp(min=0)
            m_rows = self.mask[j] & (idx >= 0)[:, None]
            vals = self.values[j] if self.values.dim() == 2 else self.values
        live = m_rows.any(1)  # rows with at least one edited latent
        sel = step.select(self) & live.to(x.device)[:, None]
        if not bool(sel.any()):
            return x
        dt = getattr(self.sae, "dtype", x.dtype)
        xs = x[live.to(x.device)].to(dt)
        f = self.sae.encode(xs)
        m = m_rows[live].to(f.device, f.dtype)[:, None, :]
        a = vals.to(f.device, f.dtype)
        if a.dim() == 2:
            a = a[live.to(a.device)][:, None, :]
        delta = (
            ((f - a) * m) @ self.sae.W_dec.to(f.dtype)
            if hasattr(self.sae, "W_dec")
            else (self.sae.decode(f) - self.sae.decode(f - (f - a) * m))
        )
        out = x.clone()
        out[live.to(x.device)] = (xs - delta).to(x.dtype)
        return torch.where(sel[..., None], out, x)


class EdgeSplice(Intervention):
    """An SAE at a site as a node of a feature circuit: both *live* and *leaf* copies of
    its latents and error node (Marks et al. 2024, edges with stop-gradients).

    With ``f = encode(x)`` and ``ε = x − decode(f)`` computed from the incoming ``x`` (so
    they depend on every upstream node), the site's output is rebuilt from detached leaf
    copies, ``out = decode(f̃) + ε̃`` with ``f̃ = f``, ``ε̃ = ε`` in value. The forward pass is
    unchanged, and the output depends on nothing upstream: every path from an upstream
    node stops at the first ``EdgeSplice`` it meets. So, in one forward with several of
    them, ``∂f_d/∂f̃_u`` (live downstream w.r.t. leaf upstream) is the *direct* Jacobian
    from site ``u`` to site ``d`` with every SAE site in between held fixed, and
    ``∂m/∂f̃_u`` is the direct effect of ``u`` on the metric. Per forward call ``live``
    holds ``(f, ε)`` and ``leaves`` holds ``(f̃, ε̃)``. Without gradients it only records.
    """

    def __init__(
        self, site: SiteLike, sae: SAELike, positions: str | Positions = "all", rows: RowsLike = None
    ):
        super().__init__(site, positions, rows)
        self.sae = sae
        self.live: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.leaves: list[tuple[torch.Tensor, torch.Tensor]] = []

    def bind(self, lm: LoadedModel) -> None:
        super().bind(lm)
        d_in = int(getattr(self.sae, "d_in", -1))
        if d_in != lm.d_model:
            raise ShapeError(
                f"SAE d_in={d_in} does not match {lm.name}'s d_model={lm.d_model} at {self.site}"
            )

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        m = step.select(self)
        dt = getattr(self.sae, "dtype", x.dtype)
        xs = x.to(dt)
        f = self.sae.encode(xs)
        err = xs - self.sae.decode(f)
        self.live.append((f, err))
        if not torch.is_grad_enabled():
            self.leaves.append((f, err))
            return x
        f_leaf = f.detach().requires_grad_(True)
        e_leaf = err.detach().requires_grad_(True)
        self.leaves.append((f_leaf, e_leaf))
        out = self.sae.decode(f_leaf) + e_leaf
        return torch.where(m[..., None], out.to(x.dtype), x.detach())


class BranchInput(Intervention):
    """What one sub-block reads from the residual stream, at the input of its norm:
    ``branch="attn"`` or ``"mlp"`` of ``layer``, or ``"logits"`` (the final norm's input).

    ``x ← x + delta`` at the selected positions, where ``delta`` is a ``[B, T, d]`` tensor
    or a callable ``delta(x) -> [B, T, d]`` evaluated during the forward (edge patching: an
    upstream node's change reaches this one node only, not the skip path or the other
    branch). With ``grad=True`` a zero leaf ``z`` is added too; ``∂m/∂z`` is then the
    gradient of the metric w.r.t. this branch's input alone (``leaves``, one per forward).
    Only the residual stream's input of the norm is touched, so the other branch of the
    same layer and the skip connection read the unchanged stream.
    """

    BRANCHES = ("attn", "mlp", "logits")

    def __init__(
        self,
        layer: int,
        branch: str,
        delta: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
        grad: bool = False,
        positions: str | Positions = "all",
        rows: RowsLike = None,
    ):
        if branch not in self.BRANCHES:
            raise SiteError(f"unknown branch '{branch}'; valid: {', '.join(self.BRANCHES)}")
        comp = {"attn": "attn_out", "mlp": "mlp_out", "logits": "resid"}[branch]
        super().__init__(Site(-1 if branch == "logits" else layer, comp), positions, rows)
        self.branch = branch
        self.delta = delta
        self.grad = grad
        self.leaves: list[torch.Tensor] = []

    def target(self, lm: LoadedModel) -> tuple[nn.Module, str]:
        return lm.arch.branch_input(self.site.layer, self.branch), "pre"

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        d = self.delta(x) if callable(self.delta) else self.delta
        if d is not None:
            if d.shape[-2:] != x.shape[-2:] or (d.dim() == 3 and d.shape[0] != x.shape[0]):
                raise ShapeError(
                    f"BranchInput {self.branch}.{self.site.layer}: delta {tuple(d.shape)} for input {tuple(x.shape)}"
                )
            m = step.select(self)[..., None].to(x.dtype)
            x = x + m * d.to(x.device, x.dtype)
        if self.grad and torch.is_grad_enabled():
            z = torch.zeros_like(x, requires_grad=True)
            self.leaves.append(z)
            x = x + z
        return x

    def __repr__(self) -> str:
        return f"BranchInput({self.branch}.{self.site.layer})"


class HeadRead(Read):
    """Read the per-head attention outputs of a layer before they are mixed: the input
    ``z [B, T, H·head_dim]`` of the output projection (``out_h = z_h @ W_O[h]``, see
    :meth:`deltalens.models.arch.Arch.head_projection`). Site: ``attn_out`` of the layer.
    Refused where heads do not add separately to the residual stream (Gemma's post-norm)."""

    def __init__(self, layer: int, keep_grad: bool = False, rows: RowsLike = None):
        super().__init__(Site(layer, "attn_out"), "all", rows, keep_grad=keep_grad)

    def bind(self, lm: LoadedModel) -> None:
        super().bind(lm)
        if lm.arch.head_projection(self.site.layer) is None:
            raise SiteError(
                f"{lm.name}: attention heads of layer {self.site.layer} do not add separately to the residual "
                "stream (a norm follows the output projection); use per-layer attention nodes"
            )

    def target(self, lm: LoadedModel) -> tuple[nn.Module, str]:
        hp = lm.arch.head_projection(self.site.layer)
        assert hp is not None
        return hp[0], "pre"


# ---- linearised replacement models (attribution graphs) ----------------------------------------


class Leaf(Intervention):
    """Make the activation at a site a leaf of the autograd graph: same value, no gradient
    to anything upstream; ``leaves`` holds it per forward (``∂m/∂leaf`` after a backward)."""

    def __init__(self, site: SiteLike):
        super().__init__(site)
        self.leaves: list[torch.Tensor] = []

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return x
        leaf = x.detach().requires_grad_(True)
        self.leaves.append(leaf)
        return leaf


class FreezeNorm(Intervention):
    """Freeze the scale of a normalisation module (RMSNorm or LayerNorm): the output keeps
    its value, and its gradient is that of the norm with ``1/rms(x)`` (``1/σ(x)``) held
    constant — ``y ≈ g ⊙ x / r`` with ``r`` fixed (LayerNorm: ``g ⊙ (x − mean x) / σ + b``
    with ``σ`` fixed), the linearisation of attribution graphs. ``module`` is the norm."""

    def __init__(self, module: nn.Module, layer: int = 0):
        super().__init__(Site(layer, "resid"))
        self.module = module

    def bind(self, lm: LoadedModel) -> None:
        self.d_model = lm.d_model

    def target(self, lm: LoadedModel) -> tuple[nn.Module, str]:
        return self.module, "forward"

    def apply(self, y: torch.Tensor, step: Step) -> torch.Tensor:
        x = step.args[0] if step.args else None
        if x is None or not torch.is_grad_enabled() or not x.requires_grad:
            return y
        if isinstance(self.module, nn.LayerNorm):
            xc = x - x.mean(-1, keepdim=True)
            b = self.module.bias if self.module.bias is not None else 0.0
            fac = ((y - b) / torch.where(xc == 0, torch.ones_like(xc), xc)).detach()
            return y.detach() + (xc - xc.detach()) * fac
        fac = (y / torch.where(x == 0, torch.ones_like(x), x)).detach()  # = g / rms(x), per element
        return y.detach() + (x - x.detach()) * fac


class DetachOutput(Intervention):
    """Detach (part of) a module's output: ``x[..., :n]`` keeps its value but passes no
    gradient (``n=None``: all of it). Used on the query and key projections to freeze
    attention patterns."""

    def __init__(self, module: nn.Module, n: int | None = None, layer: int = 0):
        super().__init__(Site(layer, "resid"))
        self.module = module
        self.n = n

    def bind(self, lm: LoadedModel) -> None:
        self.d_model = lm.d_model

    def target(self, lm: LoadedModel) -> tuple[nn.Module, str]:
        return self.module, "forward"

    def apply(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        if self.n is None:
            return x.detach()
        return torch.cat([x[..., : self.n].detach(), x[..., self.n :]], dim=-1)


class MLPRead(Intervention):
    """Record what a layer's MLP module reads (its input, after the pre-MLP norm) and
    writes (its output), at the selected positions: ``pairs`` holds ``(x [n, d], y [n, d])``
    per forward — the training pairs of a transcoder (``mlp_out`` equals the MLP module's
    output except behind Gemma's post-MLP norm)."""

    def __init__(self, layer: int, positions: str | Positions = "all", rows: RowsLike = None):
        super().__init__(Site(layer, "mlp_out"), positions, rows)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def target(self, lm: LoadedModel) -> tuple[nn.Module, str]:
        return lm.arch.mlp(self.site.layer), "forward"

    def apply(self, y: torch.Tensor, step: Step) -> torch.Tensor:
        m = step.select(self)
        self.pairs.append((step.args[0][m].detach(), y[m].detach()))
        return y


class TranscoderSplice(Intervention):
    """Replace a layer's MLP by a transcoder plus its error node, as in a replacement model.

    The hook sits on the MLP module: its input ``x`` (what the MLP reads, after the pre-MLP
    norm) gives the transcoder pre-activations ``pre = encode-input(x)`` (live, so they depend
    on upstream nodes) and activations ``f``; the output becomes
    ``decode(f̃) + skip(x) + ε̃`` where ``f̃`` and ``ε̃ = mlp(x) − decode(f) − skip(x)`` are
    detached leaves. The forward value is the MLP's; gradients stop at the transcoder's
    features and error (the MLP's own nonlinearity is cut). Per forward: ``pre``, ``features``
    (``f̃``), ``errors`` (``ε̃``). The transcoder needs ``encode_pre``, ``activation``, ``decode``
    and optional ``skip``.

    ``constant_prefix = n`` holds the first ``n`` positions constant (circuit-tracer's
    treatment of the BOS attention sink): there the output is the MLP's value, detached, and
    the features and error are zero, so those positions carry no nodes and pass no gradient."""

    def __init__(self, layer: int, transcoder: Any, constant_prefix: int = 0):
        super().__init__(Site(layer, "mlp_out"))
        self.tc = transcoder
        self.constant_prefix = int(constant_prefix)
        self.pre: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []
        self.errors: list[torch.Tensor] = []

    def target(self, lm: LoadedModel) -> tuple[nn.Module, str]:
        return lm.arch.mlp(self.site.layer), "forward"

    def apply(self, y: torch.Tensor, step: Step) -> torch.Tensor:
        x = step.args[0]
        xs = x.to(self.tc.dtype)
        pre = self.tc.encode_pre(xs)
        f = self.tc.activation(pre).detach()
        skip = self.tc.skip(xs)
        rec = self.tc.decode(f) + skip.detach()
        err = (y.to(rec.dtype) - rec).detach()
        n = min(self.constant_prefix, y.shape[-2])
        if n:
            f = f.clone()
            f[..., :n, :] = 0.0
            err[..., :n, :] = 0.0
        grad = torch.is_grad_enabled()
        f_leaf = f.requires_grad_(grad)
        e_leaf = err.requires_grad_(grad)
        self.pre.append(pre)
        self.features.append(f_leaf)
        self.errors.append(e_leaf)
        out = (self.tc.decode(f_leaf) + skip + e_leaf).to(y.dtype)
        if n:
            out = torch.cat([y[..., :n, :].detach(), out[..., n:, :]], dim=-2)
        return out


# ---- the session -----------------------------------------------------------------------------


class HookSession:
    """Registers the hooks of a list of interventions; use through :func:`intervene`."""

    def __init__(
        self, lm: LoadedModel, interventions: Sequence[Intervention], stop_at: SiteLike | None = None
    ):
        self.lm = lm
        self.interventions = list(interventions)
        for iv in self.interventions:
            if not isinstance(iv, Intervention):
                raise TypeError(f"not an intervention: {iv!r}")
            iv.bind(lm)
        self.stop_at = None if stop_at is None else Site.parse(stop_at).resolve(lm)
        self.step: Step | None = None
        self._handles: list[Any] = []
        self._prompt_len: torch.Tensor | None = None
        self._last_full: torch.Tensor | None = None
        self._token_types = lm.token_types if lm.tokenizer is not None else {}

    # geometry of every forward call, from the backbone's arguments
    def _on_backbone(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else emb
        if ref is None:
            self.step = None
            return
        B, T = int(ref.shape[0]), int(ref.shape[1])
        dev = ref.device
        am = kwargs.get("attention_mask")
        if isinstance(am, torch.Tensor) and am.dim() == 2 and am.shape[0] == B and am.shape[1] >= T:
            full = am.to(dev)
        else:
            past = 0
            cp = kwargs.get("cache_position")
            pkv = kwargs.get("past_key_values")
            if isinstance(cp, torch.Tensor) and cp.numel():
                past = int(cp.flatten()[0])
            elif pkv is not None and hasattr(pkv, "get_seq_length"):
                past = int(pkv.get_seq_length())
            prev = self._last_full
            if past > 0 and prev is not None and prev.shape[0] == B and prev.shape[1] <= past:
                full = torch.cat(
                    [prev.to(dev), torch.ones(B, past + T - prev.shape[1], dtype=prev.dtype, device=dev)], 1
                )
            else:
                full = torch.ones(B, past + T, dtype=torch.long, device=dev)
        self._last_full = full
        start = full.shape[1] - T
        info = _BATCH.get(self.lm.arch.backbone)
        prompt_len = None
        if info is not None and info.prompt_lens is not None and len(info.prompt_lens) == B:
            prompt_len = info.prompt_lens.to(dev)
        elif start == 0:
            prompt_len = full.long().sum(1)
            self._prompt_len = prompt_len
        elif self._prompt_len is not None and len(self._prompt_len) == B:
            prompt_len = self._prompt_len
        else:
            prompt_len = full[:, :start].long().sum(1)
        row_ids = torch.arange(B, device=dev)
        if info is not None and info.row_ids is not None:
            r = info.row_ids.to(dev)
            if len(r) == B:
                row_ids = r
            elif len(r) and B % len(r) == 0:  # HF num_return_sequences expands rows in place
                row_ids = r.repeat_interleave(B // len(r))
        geom = Geometry.from_mask(full, T, prompt_len)
        self.step = Step(geom, row_ids, self._token_types)

    def _current_step(self, x: torch.Tensor) -> Step:
        step = self.step
        if step is None or step.geom.real.shape != x.shape[:2]:
            B, T = x.shape[:2]
            full = torch.ones(B, T, dtype=torch.long, device=x.device)
            step = Step(Geometry.from_mask(full, T), torch.arange(B, device=x.device), self._token_types)
        return step

    def _make_forward_hook(self, ivs: list[Intervention]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            x = output[0] if isinstance(output, tuple) else output
            step = self._current_step(x)
            step.args = args  # the module's inputs, for interventions that need them
            for iv in ivs:
                x = iv.apply(x, step)
            if isinstance(output, tuple):
                return (x,) + tuple(output[1:])
            return x

        return hook

    def _make_pre_hook(self, ivs: list[Intervention]) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                x = args[0]
            else:
                x = kwargs["hidden_states"]
            step = self._current_step(x)
            for iv in ivs:
                x = iv.apply(x, step)
            if args:
                return (x,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = x
            return args, kwargs

        return hook

    def __enter__(self) -> HookSession:
        arch = self.lm.arch
        try:
            self._handles.append(arch.backbone.register_forward_pre_hook(self._on_backbone, with_kwargs=True))
            groups: dict[tuple[int, str], tuple[nn.Module, list[Intervention]]] = {}
            for iv in self.interventions:
                module, kind = iv.target(self.lm)
                groups.setdefault((id(module), kind), (module, []))[1].append(iv)
            for (_, kind), (module, ivs) in groups.items():
                if kind == "pre":
                    h = module.register_forward_pre_hook(self._make_pre_hook(ivs), with_kwargs=True)
                else:
                    h = module.register_forward_hook(self._make_forward_hook(ivs))
                self._handles.append(h)
            if self.stop_at is not None:
                module, kind = arch.module_for(self.stop_at.layer, self.stop_at.component)

                def stop(*_: Any) -> None:
                    raise StopForward(str(self.stop_at))

                if kind == "pre":
                    self._handles.append(module.register_forward_pre_hook(stop))
                else:
                    self._handles.append(module.register_forward_hook(stop))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.step = None
        self._last_full = None

    def __exit__(self, *exc: Any) -> None:
        self.close()


def intervene(
    lm: LoadedModel,
    interventions: Intervention | Sequence[Intervention],
    stop_at: SiteLike | None = None,
) -> HookSession:
    """Context manager that applies interventions to every forward call inside it.

    Interventions at the same site run in list order. ``stop_at`` raises
    :class:`StopForward` right after that site has run (early exit; catch it, or use
    :func:`deltalens.capture` which does). Every hook is removed on exit, also after an
    exception.

    Example::

        with deltalens.intervene(lm, [deltalens.Add((6, "resid"), v, coef=4.0, positions="response")]):
            out = deltalens.generate(lm, prompts, max_new_tokens=64)
    """
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    return HookSession(lm, interventions, stop_at=stop_at)


def deepest_site(sites: Sequence[Site]) -> Site:
    """The site after which a forward pass can stop and still have run all of ``sites``."""
    order = {"embed": -1, "resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid": 3}

    def key(s: Site) -> tuple[int, int]:
        layer = -1 if s.component == "embed" else s.layer
        return (layer, order[s.component])

    deepest = max(sites, key=key)
    if deepest.component in ("attn_out", "mlp_out"):
        # their modules run inside the block; stop once the block has finished
        return Site(deepest.layer, "resid")
    return deepest
