"""Work units on the local, Ray (a local cluster) and SLURM (submitit's local executor) backends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deltalens.errors import ConfigError
from deltalens.scale.backends import BackendConfig, Unit, read_sweep, run_sweep, sweep_results
from scale_helpers import executions, square_unit

N = 8


@pytest.fixture(autouse=True, scope="module")
def workers_import_the_test_helpers():
    """Ray and submitit workers are fresh interpreters: give them tests/ on their path."""
    old = os.environ.get("PYTHONPATH")
    here = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = here + (os.pathsep + old if old else "")
    yield
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old


def _units(marks, **kw):
    return [Unit(f"cfg{i}", (i, str(marks)), kw) for i in range(N)]


@pytest.fixture(scope="module")
def ray_cluster(workers_import_the_test_helpers):
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _local(tmp_path):
    marks = tmp_path / "m_local"
    marks.mkdir()
    run_sweep(square_unit, _units(marks), tmp_path / "local.jsonl", progress=False)
    return sweep_results(tmp_path / "local.jsonl")


def test_ray_gives_the_local_results_writes_each_as_it_finishes_and_records_a_failure(ray_cluster, tmp_path):
    local = _local(tmp_path)
    assert local == {f"cfg{i}": {"i": i, "square": i * i} for i in range(N)}
    marks = tmp_path / "m"
    marks.mkdir()
    cfg = BackendConfig(backend="ray", retries=1)
    rep = run_sweep(square_unit, _units(marks, fail=3, slow=0), tmp_path / "ray.jsonl", cfg, progress=False)
    got = sweep_results(tmp_path / "ray.jsonl")
    assert got == {k: v for k, v in local.items() if k != "cfg3"}
    assert list(rep.failed) == ["cfg3"] and "ValueError: unit 3 cannot be computed" in rep.failed["cfg3"]
    assert executions(marks, 3) == 2  # tried, retried once, then recorded
    lines = read_sweep(tmp_path / "ray.jsonl")
    failed = [r for r in lines if r["status"] == "failed"]
    assert failed == [{**failed[0], "key": "cfg3", "attempts": 2}]
    assert [r["key"] for r in lines if r["status"] == "ok"][-1] == "cfg0"  # the slow one finished last


def test_a_killed_ray_worker_loses_one_unit_and_a_rerun_computes_only_it(ray_cluster, tmp_path):
    marks = tmp_path / "m"
    marks.mkdir()
    cfg = BackendConfig(backend="ray", retries=0)
    out = tmp_path / "ray.jsonl"
    rep = run_sweep(square_unit, _units(marks, die=5), out, cfg, progress=False)
    assert list(rep.failed) == ["cfg5"] and len(rep.computed) == N - 1
    again = run_sweep(square_unit, _units(marks, die=5), out, cfg, progress=False)
    assert again.computed == ["cfg5"] and len(again.skipped) == N - 1
    assert [executions(marks, i) for i in range(N)] == [1, 1, 1, 1, 1, 2, 1, 1]
    assert sweep_results(out) == _local(tmp_path)


def test_slurm_through_submitits_local_executor(tmp_path):
    pytest.importorskip("submitit")
    marks = tmp_path / "m"
    marks.mkdir()
    cfg = BackendConfig(
        backend="slurm", slurm_cluster="local", slurm_folder=str(tmp_path / "jobs"), retries=1
    )
    units = _units(marks, fail=2)[:3]
    rep = run_sweep(square_unit, units, tmp_path / "slurm.jsonl", cfg, progress=False)
    assert sweep_results(tmp_path / "slurm.jsonl") == {f"cfg{i}": {"i": i, "square": i * i} for i in (0, 1)}
    assert "unit 2 cannot be computed" in rep.failed["cfg2"] and executions(marks, 2) == 2
    again = run_sweep(square_unit, units, tmp_path / "slurm.jsonl", cfg, progress=False)
    assert again.skipped == ["cfg0", "cfg1"] and list(again.failed) == ["cfg2"]  # only cfg2 is retried
    assert [executions(marks, i) for i in range(3)] == [1, 1, 4]


def test_a_missing_engine_is_one_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"--backend ray needs the ray package, which is not installed"):
        BackendConfig(backend="ray").check_available()
    with pytest.raises(ConfigError, match="--backend must be one of"):
        BackendConfig(backend="dask")


def test_info_describes_a_sweep_log_and_a_sharded_capture_in_progress(tmp_path):
    from deltalens.info import describe
    from deltalens.scale.capture import part_name

    marks = tmp_path / "m"
    marks.mkdir()
    run_sweep(
        square_unit, _units(marks, fail=1)[:3], tmp_path / "r.jsonl", BackendConfig(retries=0), progress=False
    )
    d = describe(tmp_path / "r.jsonl")
    assert (
        d["kind"].startswith("work-unit results") and d["units done"] == 2 and d["units failed"] == ["cfg1"]
    )
    (tmp_path / "store" / "parts" / part_name(0, 2)).mkdir(parents=True)
    d = describe(tmp_path / "store")
    assert d["kind"].startswith("sharded capture in progress") and list(d["parts"]) == [part_name(0, 2)]
