"""Model loading (:func:`load`), the architecture table (:class:`Arch`) and bundled models."""

from .arch import ARCH_TABLE, COMPONENTS, SUPPORTED_MODEL_TYPES, Arch, ArchSpec
from .bundled import BUNDLED
from .loading import LoadedModel, bundled_names, cache_root, load, local_dir

__all__ = [
    "ARCH_TABLE",
    "BUNDLED",
    "COMPONENTS",
    "SUPPORTED_MODEL_TYPES",
    "Arch",
    "ArchSpec",
    "LoadedModel",
    "bundled_names",
    "cache_root",
    "load",
    "local_dir",
]
