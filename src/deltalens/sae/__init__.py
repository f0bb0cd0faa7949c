"""Sparse autoencoders: the inference SAE and SAELens-compatible files, training (standard
ReLU + L1, TopK, BatchTopK, JumpReLU; from a store or on the fly), evaluation, iterative
fine-tuning along a checkpoint series, and crosscoders."""

from .base import ARCHITECTURES, SAE, SAEConfig
from .io import load_any, load_sae, read_dictionary_learning, read_sparsify, read_sparsity, save_sae
from .protocol import SAELike
from .train import SAETrainConfig, SAETrainResult, Trainer, TrainingDiverged, train_sae, train_saes

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAEConfig",
    "SAELike",
    "SAETrainConfig",
    "SAETrainResult",
    "Trainer",
    "TrainingDiverged",
    "load_any",
    "load_sae",
    "read_dictionary_learning",
    "read_sparsify",
    "read_sparsity",
    "save_sae",
    "train_sae",
    "train_saes",
]
