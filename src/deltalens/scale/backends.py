"""Independent work units (steering configurations, grid cells, …) on an existing engine.

``--backend local`` runs the units one after another in this process; ``--backend ray`` fans
them out as Ray tasks (``ray.init()`` starts a local cluster unless ``--ray-address`` names one);
``--backend slurm`` submits them as one SLURM job array through submitit. The caller keeps the
results: :func:`run_units` hands each finished unit's result to ``on_result`` *as it finishes*
(in completion order, on the driver), so a kill loses at most the units in flight. A unit that
raises, or whose worker dies, is retried ``retries`` times and then given to ``on_failure``;
the other units are never lost. :func:`run_sweep` adds an append-only ``results.jsonl`` keyed
by unit: a re-run computes only the units that have no result yet (failed ones included).

Units travel to Ray and submitit workers the way those engines move Python objects (pickled
by them); the unit functions must be importable module-level functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import append_log, now_iso, read_log
from ..stage import StageConfig, at_least, one_of, option

BACKENDS = ("local", "ray", "slurm")


@dataclass
class BackendConfig(StageConfig):
    """Where independent work units run (the CLI's ``--backend`` options)."""

    backend: str = option("local", flag="--backend", help="local, ray (a Ray cluster) or slurm (submitit).")
    workers: int | None = option(
        None, flag="--workers", help="Parallel tasks (ray: CPUs of the local cluster; default all)."
    )
    retries: int = option(
        1, flag="--retries", help="Retries of a failed unit before it is recorded as failed."
    )
    ray_address: str | None = option(
        None, flag="--ray-address", help="Ray cluster to join (default: start a local one)."
    )
    slurm_partition: str | None = option(None, flag="--slurm-partition", help="SLURM partition.")
    slurm_time: int = option(60, flag="--slurm-time", help="SLURM time limit per unit, minutes.")
    slurm_gpus: int = option(0, flag="--slurm-gpus", help="GPUs per SLURM task.")
    slurm_cpus: int = option(1, flag="--slurm-cpus", help="CPUs per SLURM task.")
    slurm_folder: str | None = option(
        None, flag="--slurm-folder", help="submitit's job folder (default: next to the results)."
    )
    slurm_cluster: str = option(
        "slurm", flag="--slurm-cluster", help="submitit cluster: slurm, or local / debug to try a sweep."
    )

    def validate(self) -> None:
        one_of(self, "backend", BACKENDS)
        at_least(self, "workers", 1)
        at_least(self, "retries", 0)
        at_least(self, "slurm_time", 1)
        at_least(self, "slurm_gpus", 0)
        at_least(self, "slurm_cpus", 1)
        one_of(self, "slurm_cluster", ("slurm", "local", "debug"))

    def check_available(self) -> None:
        """Refuse (one line) a backend whose engine is not installed."""
        pkg = {"ray": "ray", "slurm": "submitit"}.get(self.backend)
        if pkg is None:
            return
        try:
            __import__(pkg)
        except ImportError:
            raise ConfigError(
                f"--backend {self.backend} needs the {pkg} package, which is not installed; "
                f"pip install {pkg} (deltalens' scale extra pins it) or use --backend local"
            ) from None


@dataclass
class Unit:
    """One work unit: a ``key`` (unique, stable across runs) and the arguments of the function."""

    key: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitsReport:
    """What :func:`run_units` / :func:`run_sweep` did."""

    computed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_units(
    fn: Callable[..., Any],
    units: Sequence[Unit],
    config: BackendConfig | None = None,
    *,
    on_result: Callable[[Unit, Any], None],
    on_failure: Callable[[Unit, str, int], None] | None = None,
    progress: bool = True,
) -> UnitsReport:
    """Run ``fn(*unit.args, **unit.kwargs)`` for every unit on the configured backend.

    ``on_result(unit, result)`` is called on the driver as each unit finishes; after
    ``1 + retries`` failed attempts ``on_failure(unit, error_line, attempts)``."""
    cfg = config or BackendConfig()
    cfg.check_available()
    report = UnitsReport()
    t0 = time.perf_counter()
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise ConfigError("work units need unique keys")

    def ok(u: Unit, res: Any) -> None:
        on_result(u, res)
        report.computed.append(u.key)

    def bad(u: Unit, err: str, attempts: int) -> None:
        report.failed[u.key] = err
        if on_failure is not None:
            on_failure(u, err, attempts)

    if units:
        runner = {"local": _run_local, "ray": _run_ray, "slurm": _run_slurm}[cfg.backend]
        runner(fn, list(units), cfg, ok, bad, progress)
    report.seconds = time.perf_counter() - t0
    return report


def _run_local(fn, units, cfg, ok, bad, progress) -> None:
    from tqdm.auto import tqdm

    for u in tqdm(units, desc="units", disable=not progress, leave=False):
        for attempt in range(1, cfg.retries + 2):
            try:
                res = fn(*u.args, **u.kwargs)
            except Exception as exc:  # a unit's failure is recorded, the others go on
                if attempt > cfg.retries:
                    bad(u, _one_line(exc), attempt)
                continue
            ok(u, res)
            break


def _run_ray(fn, units, cfg, ok, bad, progress) -> None:
    import ray
    from tqdm.auto import tqdm

    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if cfg.ray_address:
            kw["address"] = cfg.ray_address
        else:  # always a new local cluster (never another job's running one)
            kw["address"] = "local"
            if cfg.workers:
                kw["num_cpus"] = cfg.workers
        ray.init(**kw)
        started = True
    try:
        # max_retries: worker deaths; retry_exceptions: exceptions the unit raises
        remote = ray.remote(num_cpus=1, max_retries=cfg.retries, retry_exceptions=True)(fn)
        pending = {remote.remote(*u.args, **u.kwargs): u for u in units}
        bar = tqdm(total=len(units), desc="units (ray)", disable=not progress, leave=False)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                u = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # RayTaskError (the unit raised) or a dead worker
                    cause = getattr(exc, "cause", None)
                    bad(u, _one_line(cause if isinstance(cause, BaseException) else exc), cfg.retries + 1)
                else:
                    ok(u, res)
                bar.update(1)
        bar.close()
    finally:
        if started:
            ray.shutdown()


def _run_slurm(fn, units, cfg, ok, bad, progress) -> None:
    import submitit
    from tqdm.auto import tqdm

    folder = Path(cfg.slurm_folder or "submitit")
    ex = submitit.AutoExecutor(
        folder=str(folder / "%j"), cluster=None if cfg.slurm_cluster == "slurm" else cfg.slurm_cluster
    )
    params: dict[str, Any] = {"timeout_min": cfg.slurm_time, "cpus_per_task": cfg.slurm_cpus}
    if cfg.slurm_cluster == "slurm":
        params["slurm_array_parallelism"] = cfg.workers or len(units)
        if cfg.slurm_partition:
            params["slurm_partition"] = cfg.slurm_partition
        if cfg.slurm_gpus:
            params["gpus_per_node"] = cfg.slurm_gpus
    ex.update_parameters(**params)
    attempts = {u.key: 0 for u in units}
    bar = tqdm(total=len(units), desc="units (slurm)", disable=not progress, leave=False)

    def submit(batch: list[Unit]) -> dict[Any, Unit]:
        with ex.batch():  # one job array
            jobs = [ex.submit(fn, *u.args, **u.kwargs) for u in batch]
        for u in batch:
            attempts[u.key] += 1
        return dict(zip(jobs, batch))

    pending = submit(units)
    while pending:
        finished = [j for j in pending if j.done()]
        if not finished:
            time.sleep(0.2)
            continue
        retry: list[Unit] = []
        for job in finished:
            u = pending.pop(job)
            try:
                res = job.result()
            except Exception as exc:  # the unit raised, or its job failed (time limit, node)
                if attempts[u.key] <= cfg.retries:
                    retry.append(u)
                    continue
                bad(u, _slurm_error(exc), attempts[u.key])
            else:
                ok(u, res)
            bar.update(1)
        if retry:
            pending.update(submit(retry))
    bar.close()


def _slurm_error(exc: BaseException) -> str:
    """The unit's own error line out of submitit's FailedJobError (which carries the traceback)."""
    import re

    found = re.findall(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b.*)$", str(exc), re.M)
    found = [f for f in found if not f.startswith(("submitit", "FailedJobError"))]
    return found[-1].strip()[:500] if found else _one_line(exc)


# ---- a keyed, append-only results log ----------------------------------------------------------


def run_sweep(
    fn: Callable[..., Any],
    units: Sequence[Unit],
    results: str | Path,
    config: BackendConfig | None = None,
    *,
    progress: bool = True,
) -> UnitsReport:
    """:func:`run_units` with an append-only results log: every finished unit appends
    ``{"key", "status": "ok", "result", "attempts", "time"}`` to ``results`` (a JSONL file) as it
    finishes, a unit that failed after its retries appends ``{"key", "status": "failed",
    "error", "attempts"}``. Units whose key already has an ``ok`` line are skipped, so a re-run
    computes only what is missing. ``result`` must be JSON-serialisable."""
    path = Path(results)
    done = {r["key"] for r in read_sweep(path) if r.get("status") == "ok"}
    todo = [u for u in units if u.key not in done]

    def ok(u: Unit, res: Any) -> None:
        append_log(path, {"key": u.key, "status": "ok", "result": res, "time": now_iso()})

    def bad(u: Unit, err: str, attempts: int) -> None:
        append_log(
            path, {"key": u.key, "status": "failed", "error": err, "attempts": attempts, "time": now_iso()}
        )

    rep = run_units(fn, todo, config, on_result=ok, on_failure=bad, progress=progress)
    rep.skipped = [u.key for u in units if u.key in done]
    return rep


def read_sweep(path: str | Path) -> list[dict[str, Any]]:
    """The records of a :func:`run_sweep` log (lines a kill cut short are set aside)."""
    records, _ = read_log(path, "work units")
    return [r for r in records if isinstance(r.get("key"), str)]


def sweep_results(path: str | Path) -> dict[str, Any]:
    """``key → result`` of every unit with an ``ok`` line (the latest, if several)."""
    return {r["key"]: r.get("result") for r in read_sweep(path) if r.get("status") == "ok"}


__all__ = [
    "BACKENDS",
    "BackendConfig",
    "Unit",
    "UnitsReport",
    "read_sweep",
    "run_sweep",
    "run_units",
    "sweep_results",
]
