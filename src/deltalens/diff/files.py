"""Model weights on disk, read one tensor (or one block of rows) at a time.

:class:`SafetensorsFile` parses the safetensors header itself and reads tensor bytes with
``os.pread`` — no memory map — so reading every tensor of two models one after the other
keeps the resident set at roughly one tensor per model, not the whole files (pages of a
memory-mapped file stay resident while the map is open).

:class:`ModelFiles` is a model directory (``config.json`` + ``*.safetensors``) with its
architecture entry from :mod:`deltalens.models.arch`: which tensors belong to which layer
and component, whether the embeddings are tied, and how to decode token ids.
:func:`check_compatible` refuses pairs of models that cannot be diffed, naming what
differs.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import DataFormatError, ModelMismatchError
from ..models.arch import ARCH_TABLE, ArchSpec

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile:
    """Header and positioned reads of one ``.safetensors`` file (no memory map)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            if e["dtype"] not in _DTYPES:
                raise DataFormatError(f"{self.path}: tensor '{name}' has unsupported dtype {e['dtype']}")
            b, end = e["data_offsets"]
            self.entries[name] = (e["dtype"], tuple(int(s) for s in e["shape"]), int(b), int(end))

    def keys(self) -> list[str]:
        return list(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor ``name`` (or rows ``rows`` of its first axis), as stored (dtype kept)."""
        dt, shape, begin, end = self.entries[name]
        dtype = _DTYPES[dt]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if rows is not None and len(shape) >= 1:
            lo, hi, _ = rows.indices(shape[0])
            row_bytes = itemsize * int(torch.tensor(shape[1:]).prod().item()) if len(shape) > 1 else itemsize
            begin, end = begin + lo * row_bytes, begin + hi * row_bytes
            shape = (max(hi - lo, 0), *shape[1:])
        n = end - begin
        buf = bytearray(n)
        if n:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                view = memoryview(buf)
                got = 0
                while got < n:
                    k = os.preadv(fd, [view[got:]], self._start + begin + got)
                    if k <= 0:
                        raise DataFormatError(f"{self.path}: truncated tensor '{name}'")
                    got += k
            finally:
                os.close(fd)
        if not n:
            return torch.zeros(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def _arch_spec(model_type: str | None) -> ArchSpec:
    for spec in ARCH_TABLE:
        if model_type in spec.model_types:
            return spec
    return ARCH_TABLE[0]  # Llama-like fallback, as models.arch.spec_for does


def _text_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten multimodal configs (Gemma 3 keeps the LM under ``text_config``)."""
    out = dict(cfg)
    if isinstance(cfg.get("text_config"), Mapping):
        out.update(cfg["text_config"])
        out.setdefault("model_type", cfg.get("model_type"))
    return out


_SHAPE_KEYS = (
    ("d_model", ("hidden_size", "n_embd", "d_model")),
    ("layers", ("num_hidden_layers", "n_layer", "num_layers")),
    ("d_mlp", ("intermediate_size", "n_inner", "ffn_dim")),
    ("heads", ("num_attention_heads", "n_head")),
    ("kv_heads", ("num_key_value_heads",)),
    ("head_dim", ("head_dim",)),
)


def shape_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture facts that two diffable models must share (vocabulary excluded)."""
    cfg = _text_config(config)
    out: dict[str, Any] = {
        "architecture": _arch_spec(cfg.get("model_type")).family,
        "model_type": cfg.get("model_type"),
    }
    for name, keys in _SHAPE_KEYS:
        out[name] = next((cfg[k] for k in keys if cfg.get(k) is not None), None)
    return out


def config_dict(x: Any) -> dict[str, Any]:
    """The config of a :class:`ModelFiles`, a LoadedModel, an HF model/config or a dict."""
    if isinstance(x, ModelFiles):
        return x.config
    if isinstance(x, Mapping):
        return dict(x)
    model = getattr(x, "model", x)
    cfg = getattr(model, "config", model)
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    raise TypeError(f"cannot read a config from {type(x).__name__}")


def check_compatible(a: Any, b: Any, names: tuple[str, str] = ("base", "fine-tuned")) -> None:
    """Refuse two models that cannot be diffed tensor by tensor.

    They must share architecture family, width, depth, MLP width and head layout; the
    vocabulary may differ (added tokens are compared on the shared rows).

    Raises:
        ModelMismatchError: naming each differing field with both values.
    """
    sa, sb = shape_summary(config_dict(a)), shape_summary(config_dict(b))
    diffs = []
    if sa["architecture"] != sb["architecture"]:
        diffs.append(f"architecture ({sa['model_type']} vs {sb['model_type']})")
    for key, _ in _SHAPE_KEYS:
        if sa[key] is not None and sb[key] is not None and sa[key] != sb[key]:
            diffs.append(f"{key} ({sa[key]} vs {sb[key]})")
    if diffs:
        raise ModelMismatchError(
            f"cannot diff {names[0]} and {names[1]}: they differ in {', '.join(diffs)}; a diff needs the same "
            "architecture and shapes (only the vocabulary may differ)"
        )


class ModelFiles:
    """A model directory read tensor by tensor (see the module docstring).

    Args:
        spec: a bundled name, ``.gguf`` file, model directory, cached hub id or a
            LoadedModel that was loaded from a directory (see :func:`deltalens.models.local_dir`).
    """

    def __init__(self, spec: Any):
        from ..models.loading import LoadedModel, local_dir

        self.spec = spec.spec if isinstance(spec, LoadedModel) else str(spec)
        self.dir = local_dir(spec)
        self.name = (
            spec.name
            if isinstance(spec, LoadedModel)
            else (self.spec if not Path(self.spec).exists() else self.dir.name)
        )
        cfg_path = self.dir / "config.json"
        try:
            self.config: dict[str, Any] = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataFormatError(f"{cfg_path}: cannot read the model config ({exc})") from None
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise DataFormatError(
                f"{self.dir}: no .safetensors weights (deltalens diffs safetensors only; convert .bin weights "
                "with save_pretrained(safe_serialization=True))"
            )
        self.files = [SafetensorsFile(f) for f in files]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for k in f:
                self._where[k] = f
        tc = _text_config(self.config)
        self.model_type = tc.get("model_type")
        self.arch = _arch_spec(self.model_type)
        self.layers_prefix = self._find_layers_prefix()
        self.tokenizer_dir: Path | None = None  # where token strings come from (set on first use)

    # ---- tensors ---------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def read(self, name: str, rows: slice | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._where[name].read(name, rows).to(dtype)

    def row_blocks(self, name: str, max_elems: int) -> Iterator[slice]:
        shape = self.shape(name)
        if not shape:
            yield slice(None)
            return
        per_row = max(1, int(torch.tensor(shape[1:]).prod().item()) if len(shape) > 1 else 1)
        step = max(1, max_elems // per_row)
        for lo in range(0, shape[0], step):
            yield slice(lo, min(lo + step, shape[0]))

    # ---- architecture ----------------------------------------------------------------------
    def _find_layers_prefix(self) -> str:
        keys = self._where
        for bb in (*self.arch.backbone, "", "model", "transformer"):
            prefix = f"{bb}.{self.arch.layers}" if bb else self.arch.layers
            if any(k.startswith(prefix + ".0.") for k in keys):
                return prefix
        return f"{self.arch.backbone[0]}.{self.arch.layers}"

    @cached_property
    def _param_components(self) -> dict[str, str]:
        return {v: k for k, v in self.arch.params.items()}

    def classify(self, name: str) -> tuple[int | None, str]:
        """``(layer, component)`` of a tensor: ``q, k, v, o, gate, up, down, qkv, gate_up`` and
        norm names for layer weights (other layer tensors keep their relative name, e.g.
        ``self_attn.q_proj.bias``); ``(None, "embed" | "unembed" | "final_norm" | name)`` otherwise."""
        if name.startswith(self.layers_prefix + "."):
            idx, _, rel = name[len(self.layers_prefix) + 1 :].partition(".")
            if idx.isdigit():
                return int(idx), self._param_components.get(rel, rel)
        if name == self.embed_key:
            return None, "embed"
        if name == self.arch.unembed_param:
            return None, "unembed"
        if name == self.final_norm_key:
            return None, "final_norm"
        return None, name

    def param(self, layer: int, component: str) -> str | None:
        """Full tensor name of a layer component, if this model has it."""
        rel = self.arch.params.get(component)
        if rel is None:
            return None
        name = f"{self.layers_prefix}.{int(layer)}.{rel}"
        return name if name in self._where else None

    def _global(self, param: str) -> str | None:
        if not param:
            return None
        if param in self._where:
            return param
        # the backbone prefix may differ (GPT-2 checkpoints without "transformer.")
        bb = self.layers_prefix.rsplit(".", 1)[0] if "." in self.layers_prefix else ""
        tail = param.split(".", 1)[1] if "." in param else param
        for cand in (f"{bb}.{tail}" if bb else tail, tail):
            if cand in self._where:
                return cand
        return None

    @cached_property
    def embed_key(self) -> str | None:
        return self._global(self.arch.embed_param)

    @cached_property
    def final_norm_key(self) -> str | None:
        return self._global(self.arch.final_norm_param)

    @cached_property
    def final_norm_bias_key(self) -> str | None:
        k = self.final_norm_key
        if k and k.endswith(".weight"):
            b = k[: -len("weight")] + "bias"
            return b if b in self._where else None
        return None

    @property
    def tied(self) -> bool:
        """True when the unembedding is the embedding matrix (no separate ``lm_head`` tensor)."""
        return self.arch.unembed_param not in self._where

    @property
    def unembed_key(self) -> str | None:
        """The tensor used as unembedding: ``lm_head.weight``, or the embedding when tied."""
        return self.arch.unembed_param if not self.tied else self.embed_key

    @property
    def n_layers(self) -> int:
        return int(shape_summary(self.config)["layers"] or 0)

    @property
    def d_model(self) -> int:
        return int(shape_summary(self.config)["d_model"] or 0)

    @property
    def vocab_rows(self) -> int:
        k = self.unembed_key
        return int(self.shape(k)[0]) if k else 0

    @property
    def norm_eps(self) -> float:
        tc = _text_config(self.config)
        for k in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps"):
            if tc.get(k) is not None:
                return float(tc[k])
        return 1e-5

    @cached_property
    def weights_hash(self) -> str:
        import hashlib

        from ..models.loading import _memo_file_hash

        meta = self.dir / "deltalens.json"
        if meta.exists():
            try:
                return str(json.loads(meta.read_text())["weights_sha256"])[:16]
            except (KeyError, json.JSONDecodeError):
                pass
        h = hashlib.sha256()
        for f in self.files:
            h.update(_memo_file_hash(f.path).encode())
        return h.hexdigest()[:16]

    @cached_property
    def provenance(self) -> dict[str, Any] | None:
        p = self.dir / "provenance.json"
        if p.exists():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return None
        return None

    # ---- tokens ----------------------------------------------------------------------------
    @property
    def has_tokenizer(self) -> bool:
        """Whether token strings can be decoded (this directory's tokenizer, or one set with
        :meth:`use_tokenizer`)."""
        return self._decoder is not None

    def use_tokenizer(self, source: Any) -> None:
        """Decode token ids with another tokenizer: a :class:`ModelFiles`, a model spec or a
        directory (checkpoints often ship no tokenizer files)."""
        from ..models.loading import local_dir

        d = source.dir if isinstance(source, ModelFiles) else local_dir(source)
        self.__dict__["_decoder"] = _load_decoder(Path(d))
        self.tokenizer_dir = Path(d)

    @cached_property
    def _decoder(self) -> Any:
        self.tokenizer_dir = self.dir
        return _load_decoder(self.dir)

    def token_str(self, ids: list[int]) -> list[str]:
        """Readable strings of single token ids (``<id N>`` for ids the tokenizer lacks, and for
        every id when there is no tokenizer)."""
        dec = self._decoder
        out = []
        for i in ids:
            try:
                s = dec.decode([int(i)], skip_special_tokens=False) if dec is not None else ""
            except Exception:
                s = ""
            out.append(s if s != "" else f"<id {int(i)}>")
        return out

    def __repr__(self) -> str:
        return f"ModelFiles({str(self.dir)!r}, {self.model_type}, layers={self.n_layers}, d={self.d_model})"


def _load_decoder(d: Path) -> Any:
    """The tokenizer of a model directory for decoding, or ``None`` when it ships none."""
    from ..models.loading import has_tokenizer_files

    if not has_tokenizer_files(d):
        return None
    tj = d / "tokenizer.json"
    if tj.exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tj))
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError):
        return None


def n_layers_of(spec: Any) -> int:
    """The depth of a model from its ``config.json``, without loading it (for parsing ``--layers``)."""
    from ..models.loading import LoadedModel, local_dir

    if isinstance(spec, LoadedModel):
        return spec.n_layers
    cfg_path = local_dir(spec) / "config.json"
    try:
        return int(shape_summary(json.loads(cfg_path.read_text()))["layers"] or 0)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{cfg_path}: cannot read the model config ({exc})") from None
