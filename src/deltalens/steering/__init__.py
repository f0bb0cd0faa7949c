"""Steering: batched sweeps, steered evaluation, coefficient search, combinations and
projection monitoring."""

from .sweep import SteerConfig, SteerTerm, SweepStats, generate_sweep

__all__ = ["SteerConfig", "SteerTerm", "SweepStats", "generate_sweep"]
