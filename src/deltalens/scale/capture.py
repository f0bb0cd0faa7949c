"""Capture sharded by input across the processes of a ``torch.distributed`` world.

::

    torchrun --nproc-per-node 2 -m deltalens capture --data texts.txt --sites resid.6 --out store/

Rank ``r`` of ``W`` captures the contiguous block ``[r·N/W, (r+1)·N/W)`` of the ``N`` inputs
into its own store ``<store>/parts/rank-<r>-of-<W>/`` (an ordinary
:class:`~deltalens.store.ActivationStore`: resumable on its own after a kill, losing at most the
shard in flight). When every rank has finished, rank 0 merges the parts in rank order into
``<store>`` (shards hard-linked, one manifest commit) and removes ``parts/``. Rows keep their
global ``seq_id``, so the merged store's rows and token index are those of a one-process
capture in the same order; values are bit-identical when each block is a multiple of
``batch_size`` (then the batches, and their padding, are the same as in one process).

Refused, with one line and before anything is written: a world size that does not divide the
inputs; a ``parts/`` directory written by a capture with another world size; a part whose
data, model or settings differ from this run's (another run's shard).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..capture import CaptureConfig, capture_to_store, plan_capture
from ..errors import ConfigError, DeltalensError, StoreMismatchError
from ..models.loading import LoadedModel
from ..store import PARTS, ActivationStore, check_writable
from .dist import World, barrier, world_from_env


def part_name(rank: int, size: int) -> str:
    """Directory name of rank ``rank``'s part of a ``size``-process capture."""
    return f"rank-{rank:05d}-of-{size:05d}"


def _check_parts(path: Path, world: World) -> None:
    """Refuse a ``parts/`` directory holding parts of a capture with another world size."""
    parts = path / PARTS
    if not parts.is_dir():
        return
    want = {part_name(r, world.size) for r in range(world.size)}
    foreign = sorted(e.name for e in parts.iterdir() if e.name not in want)
    if foreign:
        raise StoreMismatchError(
            f"{parts / foreign[0]} is a store shard from another run (this run has {world.size} processes, "
            f"parts are {part_name(world.rank, world.size)} …); delete {parts} or rerun with that world size"
        )


def check_sharded(path: str | Path, world: World, n_inputs: int, *, overwrite: bool = False) -> None:
    """The checks a sharded capture makes before any process starts work (no collective needed):
    the world size divides the inputs, ``parts/`` holds no other world's parts, no
    ``--overwrite`` (delete the store instead: ranks cannot wipe it safely together)."""
    if overwrite:
        raise ConfigError(
            f"--overwrite is not supported with {world.size} processes; delete {path} and rerun"
        )
    world.span(n_inputs, "inputs")
    _check_parts(Path(path), world)


def _agree(world: World, error: BaseException | None) -> None:
    """Collective: every rank learns whether any rank failed; the first failure is raised on all
    ranks (as the same error class when it is a deltalens error), so no rank waits forever."""
    if not world.distributed:
        if error is not None:
            raise error
        return
    msg = None if error is None else (type(error).__name__, str(error))
    got: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(got, msg)
    for r, m in enumerate(got):
        if m is None:
            continue
        if r == world.rank and error is not None:
            raise error
        cls = next((c for c in _error_classes() if c.__name__ == m[0]), DeltalensError)
        raise cls(f"rank {r}: {m[1]}")


def _error_classes() -> list[type[BaseException]]:
    from .. import errors

    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, DeltalensError)]


@torch.no_grad()
def capture_sharded(
    lm: LoadedModel,
    data: Iterable[Any],
    config: CaptureConfig,
    store: str | Path,
    *,
    world: World | None = None,
    early_exit: bool = True,
    progress: bool = True,
    dataset_name: str | None = None,
    source: str | Path | None = None,
) -> ActivationStore:
    """Capture ``data`` into the store at ``store`` with every rank of ``world`` (default: the
    torchrun environment, :func:`~deltalens.scale.dist.world_from_env`) doing one block.

    Every rank must call it with the same model, data and config (the process group must be
    initialised, :func:`~deltalens.scale.dist.init`). In one process it is
    :func:`~deltalens.capture.capture_to_store`. Returns the merged store on every rank."""
    world = world or world_from_env()
    path = Path(store)
    check_writable(path)
    if not world.distributed:
        return capture_to_store(
            lm,
            data,
            config,
            path,
            early_exit=early_exit,
            progress=progress,
            dataset_name=dataset_name,
            source=source,
        )
    items = list(data)
    err: BaseException | None = None
    part: Path | None = None
    main = None
    try:
        lo, hi = world.span(len(items), "inputs")
        plan = plan_capture(lm, items, config, path, dataset_name=dataset_name, source=source)
        main = ActivationStore(path)
        why = main.mismatch(plan.want(), plan.init_kwargs["config"], plan.init_kwargs["data"])
        if why:
            raise StoreMismatchError(why)
        if not main.complete:
            _check_parts(path, world)
    except DeltalensError as exc:
        err = exc
    _agree(world, err)
    assert main is not None
    if main.complete:
        return main
    # each rank: its block, into its own part store (resumable alone)
    part = path / PARTS / part_name(world.rank, world.size)
    try:
        part_plan = plan_capture(
            lm, items, config, part, dataset_name=dataset_name, source=source, span=(lo, hi)
        )
        capture_to_store(
            lm,
            items,
            config,
            part,
            early_exit=early_exit,
            progress=progress and world.is_main,
            dataset_name=dataset_name,
            source=source,
            span=(lo, hi),
            plan=part_plan,
        )
    except DeltalensError as exc:
        err = exc
    _agree(world, err)
    # rank 0: merge the parts in rank order, one manifest commit, then drop parts/
    if world.is_main:
        try:
            merged = ActivationStore(path)
            merged.init(**plan.init_kwargs)
            try:
                for r in range(world.size):
                    p = ActivationStore.open(path / PARTS / part_name(r, world.size))
                    if not p.complete:
                        raise StoreMismatchError(f"{p.path} is not complete; rerun the capture to finish it")
                    merged.adopt(p)
                merged.finish()
            finally:
                merged.close()
            shutil.rmtree(path / PARTS, ignore_errors=True)
        except DeltalensError as exc:
            err = exc
    _agree(world, err)
    barrier(world)
    return ActivationStore(path)
