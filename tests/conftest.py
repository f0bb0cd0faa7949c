from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["COLUMNS"] = "200"  # CLI tables printed by subprocesses are read whole, tty or not
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see deltalens/__init__.py)

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402

# under pytest-xdist (`make test` runs 2 workers) the cores are split between the workers
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def one_thread():
    """Small matrices: one torch thread avoids OpenMP hand-off costs (use via usefixtures)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny():
    """Tiny random Llama (4 layers, d=64) with the ChatML tiny tokenizer."""
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm():
    """The bundled SmolLM2-135M-Instruct (real-model lane)."""
    import deltalens

    return deltalens.load("smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # keep the real model cache (slow to rebuild) but send experiment dirs to tmp
    monkeypatch.setenv("DELTALENS_EXPERIMENTS", str(tmp_path_factory.mktemp("experiments")))
