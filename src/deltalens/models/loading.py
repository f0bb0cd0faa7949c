"""``deltalens.load(spec)`` → :class:`LoadedModel`.

Specs, tried in this order:

1. a bundled name (``smollm2-135m-instruct``, ``gemma3-270m``) — see :mod:`.bundled`;
2. a path to a ``.gguf`` file;
3. a local Hugging Face model directory (``config.json`` inside);
4. a hub id (``org/name``) — looked up in the local HF cache first (works offline when
   the files are there), then on the hub.

GGUF weights (bundled or not) are de-quantised once and cached as an ordinary HF
directory (``config.json``, tokenizer files, ``model.safetensors``) under
``$DELTALENS_CACHE/models/`` (default ``~/.cache/deltalens``); later loads read that
directory and take about a second. ``trust_remote_code`` is off unless asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelSpecError
from ..io import sha256_file
from .arch import Arch
from .bundled import BUNDLED

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_root() -> Path:
    """``$DELTALENS_CACHE`` or ``~/.cache/deltalens``."""
    env = os.environ.get("DELTALENS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "deltalens"
    return root


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError(f"device '{device}' requested but CUDA is not available on this machine")
    return dev


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU, bfloat16 on CUDA (float16 where bf16 is unsupported)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelSpecError(f"unknown dtype '{dtype}'; valid: auto, {', '.join(sorted(_DTYPES))}") from None


def _chat_token_types(tokenizer: Any) -> dict[str, int]:
    """Token types of the chat template's generation prompt, as offsets from the prompt end.

    The generation prompt is the suffix the template adds with ``add_generation_prompt``.
    ``asst`` is its role token (``assistant``/``model``), ``endheader`` an end-of-header
    special token (Llama 3's ``<|end_header_id|>``), ``newline`` the first newline-only
    token after the role.
    """
    if not getattr(tokenizer, "chat_template", None):
        return {}
    msgs = [{"role": "user", "content": "Hello there"}]
    try:
        with_gen = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    except Exception:  # a template that cannot render a plain user turn
        return {}
    full = tokenizer(with_gen, add_special_tokens=False)["input_ids"]
    base = tokenizer(without, add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(full), len(base)) and full[k] == base[k]:
        k += 1
    tail = full[k:]
    n = len(tail)
    pieces = [tokenizer.decode([tid]) for tid in tail]
    ends = []
    pos = 0
    for p in pieces:
        pos += len(p)
        ends.append(pos)
    text = "".join(pieces)
    out: dict[str, int] = {}
    role_end = -1
    for role in ("assistant", "model"):
        at = text.find(role)
        if at >= 0:
            role_end = at + len(role)
            break
    if role_end < 0:
        return out
    # the role word may span several tokens ('ass' + 'istant'): take the one that ends it
    asst = next(i for i, e in enumerate(ends) if e >= role_end)
    out["asst"] = asst - n
    for i in range(asst + 1, n):
        piece = pieces[i]
        if (
            "endheader" not in out
            and "newline" not in out
            and ("end_header" in piece or "header" in piece.lower())
        ):
            out["endheader"] = i - n
        elif "newline" not in out and piece and set(piece) <= {"\n", "\r"}:
            out["newline"] = i - n
    return out


@dataclass(eq=False)
class LoadedModel:
    """A Hugging Face causal LM, its tokenizer and an :class:`Arch` resolving its sites."""

    model: nn.Module
    tokenizer: Any
    spec: str = "<in-memory>"
    name: str = "<in-memory>"
    source_dir: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arch = Arch(self.model)
        tok = self.tokenizer
        if tok is not None:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "left"
        self.model.eval()

    # ---- basic facts -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.arch.n_layers

    @property
    def d_model(self) -> int:
        return self.arch.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return int(self.arch.unembed.weight.shape[0])

    @property
    def config(self) -> Any:
        return self.model.config

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.name!r}, family={self.arch.family}, layers={self.n_layers}, "
            f"d_model={self.d_model}, dtype={self.dtype}, device={self.device})"
        )

    # ---- chat --------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @cached_property
    def token_types(self) -> dict[str, int]:
        """Chat token types (``asst``, ``endheader``, ``newline``) → offset from the prompt end."""
        return _chat_token_types(self.tokenizer)

    def format_chat(self, user: str, system: str | None = None) -> str:
        """The prompt string for one user turn (and optional system prompt), ending with the
        generation prompt. Without a chat template: ``system + "\\n\\n" + user``."""
        if not self.has_chat_template:
            return f"{system}\n\n{user}" if system else user
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        try:
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception:
            if not system:
                raise
            # templates without a system role (e.g. Gemma): prepend it to the user turn
            msgs = [{"role": "user", "content": f"{system}\n\n{user}"}]
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, formatted: bool = False) -> list[int]:
        """Token ids of ``text``. ``formatted=True`` for chat-formatted strings (they already
        contain their special tokens); otherwise the tokenizer's BOS handling applies."""
        return list(self.tokenizer(text, add_special_tokens=not formatted)["input_ids"])

    def token_str(self, ids: list[int] | torch.Tensor) -> list[str]:
        """Readable strings of single tokens (for tables and heatmap labels)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # ---- weights -------------------------------------------------------------------------
    @cached_property
    def weights_hash(self) -> str:
        """sha256 (first 16 hex digits) of the weights: of the safetensors files when loaded
        from disk (memoised per file size and mtime), else of the parameters in memory."""
        if "weights_sha256" in self.meta:
            return str(self.meta["weights_sha256"])[:16]
        files = sorted(self.source_dir.glob("*.safetensors")) if self.source_dir else []
        if files:
            h = hashlib.sha256()
            for f in files:
                h.update(_memo_file_hash(f).encode())
            return h.hexdigest()[:16]
        h = hashlib.sha256()
        for name, p in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def logits(self, x: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
        """Logit lens of residual-stream vectors: ``unembed(final_norm(x))``."""
        return self.arch.logits(x, apply_norm=apply_norm)

    @classmethod
    def wrap(cls, model: nn.Module, tokenizer: Any, name: str = "<in-memory>") -> LoadedModel:
        """Wrap an already constructed HF model (e.g. a tiny random model in tests)."""
        return cls(model=model, tokenizer=tokenizer, spec=name, name=name)


def _memo_file_hash(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_root() / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = sha256_file(path)
    memo[key] = digest
    with contextlib.suppress(OSError):
        from ..io import write_json

        write_json(memo_path, memo)
    return digest


# ---- GGUF ------------------------------------------------------------------------------


def _gguf_cache_dir(gguf: Path, name: str) -> Path:
    st = gguf.stat()
    fp = hashlib.sha256(
        f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_FORMAT}".encode()
    ).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_root() / "models" / f"{safe}-{fp}"


def _convert_gguf(gguf: Path, target: Path, name: str) -> None:
    """De-quantise a GGUF file into a normal HF directory at ``target`` (atomically)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.info("de-quantising %s (first load only)", gguf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        # the weights are de-quantised: a GGUF quantization_config would make transformers treat
        # the cached directory as quantized (and refuse to fine-tune it)
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            with contextlib.suppress(Exception):
                model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # Tied weights share storage; safetensors refuses shared tensors, and
        # from_pretrained re-ties them, so only the first name of each storage is written.
        seen: set[int] = set()
        tensors = {}
        for k, v in model.state_dict().items():
            ptr = v.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            tensors[k] = v.detach().contiguous()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        meta = {
            "deltalens_cache_format": CACHE_FORMAT,
            "name": name,
            "source_gguf": str(gguf),
            "source_sha256": sha256_file(gguf),
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
            "converted_in_s": round(time.time() - t0, 2),
        }
        (tmp / "deltalens.json").write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_dir(
    path: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    local_files_only: bool = False,
    revision: str | None = None,
    tokenizer: Any = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str] | None = None,
) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    if revision:
        kw["revision"] = revision
    with warnings.catch_warnings(), _quiet_progress():
        warnings.simplefilter("ignore")
        if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
            tok = tokenizer
        elif tokenizer is not None:
            tok = AutoTokenizer.from_pretrained(str(local_dir(tokenizer)), local_files_only=True)
        elif Path(path).is_dir() and not has_tokenizer_files(path):
            raise ModelSpecError(
                f"{path} has no tokenizer files (intermediate training checkpoints often ship none); pass "
                "tokenizer= (the CLI's --tokenizer) with a model or directory whose tokenizer to use"
            )
        else:
            tok = AutoTokenizer.from_pretrained(path, **kw)
        extra: dict[str, Any] = {}
        if Path(path).is_dir():
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(path, **kw)
            qc = getattr(cfg, "quantization_config", None)
            method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
            if str(getattr(method, "value", method)) == "gguf":
                # a de-quantised GGUF cache written by an older deltalens: plain float weights
                delattr(cfg, "quantization_config")
                extra["config"] = cfg
        if device_map is not None:  # layers spread over GPUs (and CPU) by accelerate
            extra["device_map"] = device_map
            if max_memory:
                extra["max_memory"] = max_memory
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw, **extra)
    if device_map is None:
        model.to(device)
    return model, tok


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "tiktoken.model",
)


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    """Whether a model directory ships a tokenizer (any of :data:`TOKENIZER_FILES`)."""
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


@contextlib.contextmanager
def _quiet_progress() -> Any:
    """Silence transformers' per-load "Loading weights" bar (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def bundled_names() -> list[str]:
    return list(BUNDLED)


def _gguf_of(spec: str) -> tuple[Path | None, str]:
    """The GGUF file behind a bundled name or a ``.gguf`` path (``None`` otherwise), and a name."""
    if spec in BUNDLED:
        return BUNDLED[spec].gguf_path(cache_root()), spec
    if spec.lower().endswith(".gguf"):
        p = Path(spec).expanduser()
        if not p.is_file():
            raise ModelSpecError(f"GGUF file not found: {p}")
        return p.resolve(), p.stem
    return None, spec


def local_dir(spec: str | os.PathLike | LoadedModel) -> Path:
    """The local Hugging Face directory (``config.json`` + safetensors) holding a spec's weights,
    without loading the model: a bundled name or ``.gguf`` file gives its de-quantised cache
    (built on first use), a directory itself, a hub id its local snapshot, a
    :class:`LoadedModel` the directory it was loaded from.

    Raises:
        ModelSpecError: nothing on disk holds these weights (e.g. an in-memory model).
    """
    if isinstance(spec, LoadedModel):
        if spec.source_dir is None:
            raise ModelSpecError(
                f"model '{spec.name}' was not loaded from a directory; save it with save_pretrained first"
            )
        return Path(spec.source_dir)
    spec_s = str(spec)
    gguf, name = _gguf_of(spec_s)
    if gguf is not None:
        target = _gguf_cache_dir(gguf, name)
        if not (target / "model.safetensors").exists():
            _convert_gguf(gguf, target, name)
        return target
    p = Path(spec_s).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelSpecError(
                f"{p} is a directory but has no config.json; not a Hugging Face model directory"
            )
        return p.resolve()
    if "/" in spec_s and not spec_s.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec_s, local_files_only=True))
        except Exception:
            pass
    raise ModelSpecError(
        f"no local model directory for '{spec_s}': give a bundled name ({', '.join(BUNDLED)}), a .gguf file, "
        "a model directory, or a hub id that is in the local cache"
    )


def load(
    spec: str | os.PathLike | LoadedModel,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    tokenizer: Any = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str] | None = None,
) -> LoadedModel:
    """Load a causal LM by spec (bundled name, ``.gguf`` file, local directory or hub id).

    Args:
        spec: what to load (see module docstring); a :class:`LoadedModel` is returned as is.
        dtype: ``auto`` (float32 on CPU, bfloat16 on CUDA) or a dtype name / ``torch.dtype``.
        device: ``None``/``auto`` picks CUDA when present, else CPU.
        trust_remote_code: passed to ``from_pretrained``; off by default (no remote code runs).
        revision: hub revision for hub ids.
        tokenizer: for a directory, a tokenizer object or a spec whose tokenizer to use instead
            of the directory's own (checkpoints often ship none).
        device_map: for a model that does not fit one GPU: ``"auto"`` (or an accelerate
            device map) spreads its layers over the GPUs, then CPU memory; inputs go to the
            device of the first layer. Hooks, early exit and capture work unchanged.
        max_memory: with ``device_map``, the memory each device may take, e.g.
            ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}`` (:func:`deltalens.scale.memory.parse_max_memory`
            reads the CLI's ``0=70GiB,1=70GiB,cpu=200GiB``).

    Raises:
        ModelSpecError: the spec names nothing loadable (the message lists bundled names).
    """
    if isinstance(spec, LoadedModel):
        return spec
    spec_s = str(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)

    gguf, name = _gguf_of(spec_s)

    if gguf is not None:
        target = _gguf_cache_dir(gguf, name)
        if not (target / "model.safetensors").exists():
            _convert_gguf(gguf, target, name)
        model, tok = _load_dir(
            str(target), dtype=dt, device=dev, trust_remote_code=False, local_files_only=True
        )
        meta = json.loads((target / "deltalens.json").read_text())
        return LoadedModel(model, tok, spec=spec_s, name=name, source_dir=target, meta=meta)

    p = Path(spec_s).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelSpecError(
                f"{p} is a directory but has no config.json; not a Hugging Face model directory"
            )
        model, tok = _load_dir(
            str(p),
            dtype=dt,
            device=dev,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            tokenizer=tokenizer,
            device_map=device_map,
            max_memory=max_memory,
        )
        return LoadedModel(model, tok, spec=spec_s, name=p.name, source_dir=p.resolve())
    if spec_s.startswith((".", "/", "~")) or os.sep in spec_s and spec_s.count("/") > 1:
        raise ModelSpecError(f"no such model directory or file: {spec_s}")

    hint = (
        f"unknown model '{spec_s}': not a bundled name ({', '.join(BUNDLED)}), a .gguf file or a local "
        "model directory"
    )
    if "/" not in spec_s:
        raise ModelSpecError(hint)
    errors = []
    for local_only in (True, False):
        try:
            model, tok = _load_dir(
                spec_s,
                dtype=dt,
                device=dev,
                trust_remote_code=trust_remote_code,
                local_files_only=local_only,
                revision=revision,
                device_map=device_map,
                max_memory=max_memory,
            )
            src = None
            with contextlib.suppress(Exception):
                from huggingface_hub import snapshot_download

                src = Path(snapshot_download(spec_s, local_files_only=True, revision=revision))
            return LoadedModel(model, tok, spec=spec_s, name=spec_s.split("/")[-1], source_dir=src)
        except (OSError, ValueError) as exc:
            errors.append(str(exc).splitlines()[0])
    raise ModelSpecError(f"{hint}, and the hub id could not be loaded ({errors[-1]})")
