"""Sparse autoencoders: the inference SAE, SAELens-compatible files (training,
evaluation and crosscoders build on these)."""

from .base import ARCHITECTURES, SAE, SAEConfig
from .io import load_sae, read_sparsity, save_sae

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "load_sae", "read_sparsity", "save_sae"]
