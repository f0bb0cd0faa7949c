"""Dataset formats and bundled data."""

from .jsonl import iter_jsonl, read_jsonl
from .pairs import PairRecord, bundled_pairs, load_pairs, pair_from_dict, read_pairs
from .prompts import PromptRecord, bundled_path, bundled_prompts, read_prompts
from .texts import read_capture_inputs
from .traits import TraitSet, bundled_traits, load_trait

__all__ = [
    "PairRecord",
    "bundled_pairs",
    "load_pairs",
    "pair_from_dict",
    "read_pairs",
    "PromptRecord",
    "TraitSet",
    "bundled_path",
    "bundled_prompts",
    "bundled_traits",
    "iter_jsonl",
    "load_trait",
    "read_capture_inputs",
    "read_jsonl",
    "read_prompts",
]
