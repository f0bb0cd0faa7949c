"""Rank and world size from the ``torch.distributed`` environment, and the few collectives
the sharded stages need.

``torchrun --nproc-per-node N -m deltalens …`` (or ``python -m torch.distributed.run``) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every
process; :func:`world_from_env` reads them and :func:`init` joins the process group (gloo on
CPU, NCCL when the process has a CUDA device). Nothing here schedules work: the launcher does.
One process without those variables is ``World(rank=0, size=1)`` and every collective is a no-op.

This module sits in the core layer: it imports torch and :mod:`deltalens.errors` only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` in ``[0, size)``, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def span(self, n: int, what: str = "inputs", *, multiple_of: int = 1) -> tuple[int, int]:
        """This rank's contiguous block ``[rank·n/size, (rank+1)·n/size)`` of ``n`` items.

        The world size must divide ``n`` (and, with ``multiple_of``, each block must be a
        multiple of it): uneven blocks would change batch composition, so the sharded result
        could not equal the one-process result row for row. Refused with a one-line
        :class:`~deltalens.errors.ConfigError` naming both numbers."""
        if n % self.size:
            raise ConfigError(
                f"world size {self.size} does not divide the {n} {what}; give a multiple of {self.size} "
                f"{what} or run {n if n < self.size else _divisor_hint(n, self.size)} processes"
            )
        per = n // self.size
        if multiple_of > 1 and per % multiple_of:
            raise ConfigError(
                f"each of the {self.size} processes gets {per} {what}, not a multiple of {multiple_of}; "
                f"give a multiple of {self.size * multiple_of} {what}"
            )
        return self.rank * per, (self.rank + 1) * per


def _divisor_hint(n: int, size: int) -> str:
    """A process count near ``size`` that divides ``n`` (for the error message)."""
    for d in range(size, 0, -1):
        if n % d == 0:
            return str(d)
    return "1"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def world_from_env() -> World:
    """``World`` from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (as torchrun sets them).

    Inconsistent values (a rank outside ``[0, WORLD_SIZE)``) are a :class:`ConfigError`."""
    size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local = _int_env("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process of a world")
    backend = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = str(torch.distributed.get_backend())
    return World(rank=rank, size=size, local_rank=local, backend=backend)


def default_backend(device: str | torch.device | None = None) -> str:
    """``nccl`` for a CUDA device, ``gloo`` otherwise."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.distributed.is_nccl_available():
        return "nccl"
    return "gloo"


def init(device: str | torch.device | None = None, backend: str | None = None) -> World:
    """Join the process group described by the environment (once); returns the :class:`World`.

    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) joins nothing. Under torchrun the
    group uses ``backend`` (default :func:`default_backend`): gloo on CPU, NCCL on CUDA."""
    world = world_from_env()
    if not world.distributed:
        return world
    dist = torch.distributed
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={world.size} but {', '.join(missing)} is not set; start the processes with "
                "torchrun --nproc-per-node N -m deltalens …"
            )
        be = backend or default_backend(device)
        if be == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=be)
    return World(world.rank, world.size, world.local_rank, str(dist.get_backend()))


def barrier(world: World) -> None:
    """Wait for every rank (no-op in one process)."""
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_mean_(tensors: Sequence[torch.Tensor], world: World) -> None:
    """In place: every tensor becomes its mean over the ranks, ``(1/W) Σ_r t_r``.

    The tensors are flattened into one buffer (one collective per call) and copied back."""
    if not world.distributed or not tensors:
        return
    _all_reduce_flat(tensors, world, mean=True)


def all_reduce_sum_(tensors: Sequence[torch.Tensor], world: World) -> None:
    """In place: every tensor becomes ``Σ_r t_r`` over the ranks (one collective per call)."""
    if not world.distributed or not tensors:
        return
    _all_reduce_flat(tensors, world, mean=False)


def _all_reduce_flat(tensors: Sequence[torch.Tensor], world: World, *, mean: bool) -> None:
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        for t in tensors:  # mixed dtypes: one collective per tensor
            _all_reduce_flat([t], world, mean=mean)
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    if mean:
        flat /= world.size
    k = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[k : k + n].view_as(t))
        k += n


def broadcast_(tensors: Sequence[torch.Tensor], world: World, src: int = 0) -> None:
    """In place: every rank's tensors become rank ``src``'s."""
    if not world.distributed:
        return
    for t in tensors:
        torch.distributed.broadcast(t, src=src)


def broadcast_object(obj: object, world: World, src: int = 0) -> object:
    """Rank ``src``'s picklable-by-torch object on every rank (used for small error messages
    and flags, never for user data)."""
    if not world.distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
