"""Dataset formats and bundled data."""

from .jsonl import iter_jsonl, read_jsonl
from .prompts import PromptRecord, bundled_path, bundled_prompts, read_prompts
from .texts import read_capture_inputs

__all__ = [
    "PromptRecord",
    "bundled_path",
    "bundled_prompts",
    "iter_jsonl",
    "read_capture_inputs",
    "read_jsonl",
    "read_prompts",
]
