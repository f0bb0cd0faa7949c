"""Chat formatting and batched, left-padded generation (with interventions active).

:func:`generate` formats each prompt with the model's chat template (system + user),
tokenizes, sorts by length, runs batches through ``model.generate`` with left padding,
and returns one :class:`Generation` per (prompt, rollout) in input order, with the
prompt/response token boundary. Interventions from an enclosing
:func:`deltalens.intervene` apply; their ``rows`` refer to prompt indices (all rollouts
of prompt i are row i) and ``positions`` see the true prompt/response boundary.

Sampling is reproducible for a given seed, inputs and batch size: each batch seeds the
global torch RNG with ``seed + batch_index`` before sampling.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import hooks
from .errors import ConfigError, DataFormatError
from .models.loading import LoadedModel
from .stage import StageConfig, at_least, in_range, option


@dataclass
class Prompt:
    """One prompt: the user message and an optional system prompt."""

    question: str
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generation:
    """A generated response with its prompt and token boundary."""

    index: int
    rollout: int
    question: str
    system: str | None
    prompt: str
    response: str
    prompt_ids: list[int]
    response_ids: list[int]
    finished: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def response_len(self) -> int:
        return len(self.response_ids)

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Generation:
        """From :meth:`to_dict` (unknown keys ignored; ``system``/``meta``/``finished`` optional)."""
        keys = {f for f in cls.__dataclass_fields__}
        data = {"system": None, "finished": False, **{k: v for k, v in d.items() if k in keys}}
        missing = sorted(k for k in keys - {"meta"} if k not in data)
        if missing:
            raise DataFormatError(f"not a generation: missing {', '.join(missing)}")
        return cls(**data)


GENERATIONS_SUFFIX = ".jsonl"


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output file that cannot be written (its directory is a file, or not
    writable, or the path is a directory) — without creating anything."""
    import os

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a directory; give a file path")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"{flag} {p}: not writable")
    return p


def save_generations(path: str | Path, gens: Iterable[Generation]) -> Path:
    """Write generations as JSONL (one :meth:`Generation.to_dict` per line), atomically."""
    from .io import atomic_write, to_json

    return atomic_write(path, "".join(to_json(g.to_dict(), indent=None) + "\n" for g in gens))


def load_generations(path: str | Path) -> list[Generation]:
    """Read generations written by :func:`save_generations` (errors name the file and line).
    A JSON array of generation objects (older extraction responses) is read too."""
    import json

    from .data.jsonl import iter_jsonl

    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: invalid JSON ({exc.msg})") from None
        if not isinstance(rows, list):
            raise DataFormatError(f"{path}: expected a list of generations")
        numbered = list(enumerate(rows, 1))
    else:
        numbered = list(iter_jsonl(path))
    out = []
    for n, rec in numbered:
        try:
            out.append(Generation.from_dict(rec) if isinstance(rec, Mapping) else Generation.from_dict({}))
        except (DataFormatError, TypeError) as exc:
            raise DataFormatError(f"{path}:{n}: {exc}") from None
    return out


def as_prompts(prompts: Iterable[Any], system: str | Sequence[str | None] | None = None) -> list[Prompt]:
    """Normalise prompts: strings, :class:`Prompt`, or dicts with ``question`` / ``prompt`` /
    ``content`` / ``text`` (and optional ``system`` or ``system_prompt``)."""
    out: list[Prompt] = []
    items = list(prompts)
    systems: list[str | None]
    if system is None or isinstance(system, str):
        systems = [system] * len(items)
    else:
        systems = list(system)
        if len(systems) != len(items):
            raise DataFormatError(f"{len(systems)} system prompts for {len(items)} prompts")
    for i, (p, sysp) in enumerate(zip(items, systems)):
        if isinstance(p, Prompt):
            out.append(p if sysp is None or p.system else Prompt(p.question, sysp, p.meta))
        elif isinstance(p, str):
            out.append(Prompt(p, sysp))
        elif isinstance(p, Mapping):
            q = next((p[k] for k in ("question", "prompt", "content", "text") if k in p), None)
            if not isinstance(q, str):
                raise DataFormatError(
                    f"prompt {i}: needs a 'question' (or 'prompt'/'content'/'text') string: {p!r}"
                )
            s = p.get("system", p.get("system_prompt", sysp))
            meta = {
                k: v
                for k, v in p.items()
                if k not in ("question", "prompt", "content", "text", "system", "system_prompt")
            }
            out.append(Prompt(q, s, meta))
        else:
            raise DataFormatError(f"prompt {i}: expected a string or a dict, got {type(p).__name__}")
    return out


def _eos_ids(lm: LoadedModel) -> list[int]:
    ids: list[int] = []
    gc = getattr(lm.model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(e, int):
        ids.append(e)
    elif isinstance(e, (list, tuple)):
        ids.extend(int(x) for x in e)
    if lm.tokenizer.eos_token_id is not None:
        ids.append(int(lm.tokenizer.eos_token_id))
    # chat models often end turns with a template token that is not the tokenizer's eos
    for tok in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"):
        tid = lm.tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != lm.tokenizer.unk_token_id and tid >= 0:
            ids.append(tid)
    return sorted(set(ids))


def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists → ``(input_ids [B, L], attention_mask [B, L])``."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, L - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, L - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift them
    (what ``model.generate`` does internally; a plain forward must pass them)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def format_prompts(
    lm: LoadedModel, prompts: Sequence[Prompt], chat: bool | str = "auto"
) -> list[tuple[str, list[int]]]:
    """Prompt strings and token ids. ``chat='auto'`` uses the chat template when the model
    has one; ``chat=False`` feeds ``system + '\\n\\n' + question`` as raw text."""
    use_chat = lm.has_chat_template if chat == "auto" else bool(chat)
    out = []
    for p in prompts:
        if use_chat:
            text = lm.format_chat(p.question, p.system)
            out.append((text, lm.encode(text, formatted=True)))
        else:
            text = f"{p.system}\n\n{p.question}" if p.system else p.question
            out.append((text, lm.encode(text, formatted=False)))
    return out


@dataclass
class GenerateConfig(StageConfig):
    """Settings of :func:`generate` as the ``generate`` command takes them."""

    max_new_tokens: int = option(64, flag="--max-new-tokens", help="Generation length cap.")
    n: int = option(1, flag="--n", help="Rollouts per prompt.")
    do_sample: bool = option(
        False, flag="--sample/--greedy", help="Sample (with --temperature/--top-p) or greedy."
    )
    temperature: float = option(1.0, flag="--temperature", help="Sampling temperature.")
    top_p: float = option(1.0, flag="--top-p", help="Nucleus sampling mass.")
    seed: int = option(0, flag="--seed", help="Base seed for sampling.")
    batch_size: int = option(32, flag="--batch-size", help="Rows per model.generate call.")

    def validate(self) -> None:
        at_least(self, "max_new_tokens", 1)
        at_least(self, "n", 1)
        at_least(self, "batch_size", 1)
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature!r}")
        in_range(self, "top_p", 0.0, 1.0)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`generate`."""
        return self.to_dict()


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompts: Iterable[Any],
    *,
    system: str | Sequence[str | None] | None = None,
    max_new_tokens: int = 64,
    n: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    chat: bool | str = "auto",
    progress: bool = True,
) -> list[Generation]:
    """Generate responses for ``prompts`` (``n`` rollouts each), batched and left-padded.

    (Long because the arguments are documented here; the body is one batch loop.)

    Args:
        prompts: user messages (strings), :class:`Prompt` objects or dicts (see :func:`as_prompts`).
        system: one system prompt for all, or one per prompt.
        max_new_tokens: generation length cap.
        n: rollouts per prompt (use ``do_sample=True`` for different rollouts).
        do_sample, temperature, top_p: sampling; greedy by default.
        seed: base seed for sampling.
        batch_size: rows per ``model.generate`` call (throughput grows with batch size on CPU too).
        chat: ``"auto"`` (template when present), True or False.

    Returns:
        ``[Generation]`` ordered by (prompt index, rollout).
    """
    from transformers import GenerationConfig

    plist = as_prompts(prompts, system)
    if not plist:
        return []
    for _name, flag, v in (
        ("n", "--n", n),
        ("max_new_tokens", "--max-new-tokens", max_new_tokens),
        ("batch_size", "--batch-size", batch_size),
    ):
        if v < 1:
            raise ConfigError(f"{flag} must be ≥ 1, got {v}")
    formatted = format_prompts(lm, plist, chat)
    items = [(i, r) for i in range(len(plist)) for r in range(n)]
    # longest first: padding is small within a batch, and memory peaks early
    items.sort(key=lambda ir: -len(formatted[ir[0]][1]))
    eos = _eos_ids(lm)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else eos[0]
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    results: dict[tuple[int, int], Generation] = {}
    batches = [items[k : k + batch_size] for k in range(0, len(items), batch_size)]
    bar = tqdm(total=len(items), desc="generate", unit="resp", disable=not progress, leave=False)
    t0 = time.time()
    new_tokens = 0
    for b, batch in enumerate(batches):
        seqs = [formatted[i][1] for i, _ in batch]
        input_ids, attn = left_pad(seqs, pad, lm.device)
        if do_sample:
            torch.manual_seed(seed + b)
        with hooks.batch_info(lm, row_ids=[i for i, _ in batch], prompt_lens=[len(s) for s in seqs]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = lm.model.generate(input_ids=input_ids, attention_mask=attn, generation_config=gen_cfg)
        gen = out[:, input_ids.shape[1] :].tolist()
        for (i, r), toks in zip(batch, gen):
            finished = False
            resp: list[int] = []
            for t in toks:
                if t in eos:
                    finished = True
                    break
                resp.append(t)
            new_tokens += len(resp) + int(finished)
            p = plist[i]
            results[(i, r)] = Generation(
                index=i,
                rollout=r,
                question=p.question,
                system=p.system,
                prompt=formatted[i][0],
                response=lm.tokenizer.decode(resp, skip_special_tokens=True),
                prompt_ids=list(formatted[i][1]),
                response_ids=resp,
                finished=finished,
                meta=dict(p.meta),
            )
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{new_tokens / max(time.time() - t0, 1e-9):.0f}")
    bar.close()
    return [results[(i, r)] for i in range(len(plist)) for r in range(n)]
