"""Study stage types for steering, SAEs, features, probes, causal, circuits, inverse and protein."""

from __future__ import annotations
