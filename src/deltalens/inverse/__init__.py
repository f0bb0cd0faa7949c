"""Inverse problems: inputs that maximise a feature."""

from . import describe as _describe  # noqa: F401
from .collect import CollectConfig, CollectResult, collect, load_prompts
from .filter import FilterConfig, FilterResult, filter_latents
