"""Memory estimates per stage, printed before long runs (estimates, not measurements).

All sizes in bytes; ``b(dtype)`` is the dtype's width (4 float32, 2 bfloat16/float16).

- **weights**: ``P · b(model dtype)``, ``P`` counted exactly from the model (or from its config
  on the meta device, :func:`count_params_from_config`, without loading any weights).
- **capture** (one forward, no KV cache, stopped after the deepest site): weights plus the
  largest transient of one decoder layer, ``B·T·(4·d + 2·I)·b`` (residual stream, attention
  output and the MLP's gate/up activations) plus eager attention scores ``B·H·T²·b``, plus the
  captured rows of one batch ``B·T·d·S·4`` (``S`` sites, float32 on the host) and one store shard
  buffer.
- **generation**: weights plus the KV cache ``2·L·H_kv·d_head·R·(T_prompt + T_new)·b`` for
  ``R`` rows.
- **SAE training**: parameters ``2·d_in·d_sae + d_sae + d_in`` in float32, ×4 for the
  gradients and Adam's two moments, plus the batch's pre-activations ``B·d_sae·4`` (twice: the
  ReLU/TopK input and its gradient).

Under ``device_map`` the weights are split over the devices; the transient terms sit on the
device of the layer that runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

GiB = 2**30


def dtype_bytes(dtype: torch.dtype | str) -> int:
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            dtype.replace("torch.", ""), torch.float32
        )
    return torch.finfo(dtype).bits // 8


@dataclass
class ModelShape:
    """What the estimates need from a decoder-only model."""

    n_params: int
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    vocab: int
    name: str = ""

    @classmethod
    def from_config(cls, cfg: Any, n_params: int | None = None, name: str = "") -> ModelShape:
        d = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        return cls(
            n_params=int(n_params if n_params is not None else count_params_from_config(cfg)),
            n_layers=int(cfg.num_hidden_layers),
            d_model=d,
            d_mlp=int(getattr(cfg, "intermediate_size", 4 * d)),
            n_heads=heads,
            n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            d_head=int(getattr(cfg, "head_dim", None) or d // heads),
            vocab=int(cfg.vocab_size),
            name=name or str(getattr(cfg, "model_type", "")),
        )

    @classmethod
    def of(cls, lm: Any) -> ModelShape:
        """The shape of a loaded model (``LoadedModel``)."""
        n = sum(p.numel() for p in lm.model.parameters())
        return cls.from_config(lm.model.config, n, name=lm.name)


def count_params_from_config(cfg: Any) -> int:
    """Exact parameter count of ``AutoModelForCausalLM.from_config(cfg)``, built on the meta
    device (no memory is allocated, nothing is downloaded)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    seen: set[int] = set()
    n = 0
    for p in model.parameters():  # tied embeddings count once
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


@dataclass
class Estimate:
    """A stage's estimated peak memory, by term (bytes)."""

    stage: str
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.terms.values()))

    def line(self) -> str:
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in self.terms.items())
        return f"memory estimate ({self.stage}): {_fmt(self.total)} = {parts}"


def _fmt(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= 0.1 * GiB else f"{n / 2**20:.0f} MiB"


def estimate_capture(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    n_sites: int = 1,
    dtype: torch.dtype | str = torch.float32,
    deepest_layer: int | None = None,
    shard_mb: float = 64.0,
) -> Estimate:
    """See the module docstring (capture)."""
    b = dtype_bytes(dtype)
    B, T = batch_size, seq_len
    act = B * T * (4 * shape.d_model + 2 * shape.d_mlp) * b + B * shape.n_heads * T * T * b
    rows = B * T * shape.d_model * n_sites * 4
    return Estimate(
        "capture",
        {
            "weights": shape.n_params * b,
            "activations": act,
            "captured rows": rows,
            "store buffer": shard_mb * 2**20 * max(1, n_sites),
        },
    )


def estimate_generation(
    shape: ModelShape,
    *,
    rows: int,
    prompt_len: int,
    new_tokens: int,
    dtype: torch.dtype | str = torch.bfloat16,
) -> Estimate:
    """See the module docstring (generation)."""
    b = dtype_bytes(dtype)
    kv = 2 * shape.n_layers * shape.n_kv_heads * shape.d_head * rows * (prompt_len + new_tokens) * b
    logits = rows * shape.vocab * 4
    return Estimate("generation", {"weights": shape.n_params * b, "KV cache": kv, "logits": logits})


def estimate_sae(d_in: int, d_sae: int, batch_size: int) -> Estimate:
    """See the module docstring (SAE training)."""
    p = (2 * d_in * d_sae + d_sae + d_in) * 4
    return Estimate(
        "SAE training",
        {
            "parameters": p,
            "gradients + Adam": 3 * p,
            "batch": 2 * batch_size * d_sae * 4 + batch_size * d_in * 4,
        },
    )


def parse_max_memory(text: str | None) -> dict[Any, str] | None:
    """``"0=70GiB,1=70GiB,cpu=200GiB"`` → ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``."""
    if not text:
        return None
    out: dict[Any, str] = {}
    for part in text.split(","):
        dev, sep, amount = part.strip().partition("=")
        if not sep or not amount.strip() or not dev.strip():
            raise ConfigError(f"--max-memory: expected device=amount (e.g. 0=70GiB,cpu=200GiB), got {part!r}")
        dev = dev.strip()
        key: Any = int(dev) if dev.isdigit() else dev
        if not isinstance(key, int) and key not in ("cpu", "disk", "mps") and not key.startswith("cuda"):
            raise ConfigError(f"--max-memory: unknown device {dev!r} (a GPU index, cpu or disk)")
        out[key] = amount.strip()
    return out


#: the seeds' 8B-class models, from their published config.json (no download needed)
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "Qwen/Qwen2.5-7B": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}


def known_shape(name: str) -> ModelShape:
    from transformers import AutoConfig

    kw = dict(KNOWN_CONFIGS[name])
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    return ModelShape.from_config(cfg, name=name)


def table(names: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Estimates for the :data:`KNOWN_CONFIGS` models under typical settings (docs/scale.md)."""
    rows = []
    for name in names or KNOWN_CONFIGS:
        s = known_shape(name)
        cap = estimate_capture(s, batch_size=16, seq_len=512, dtype=torch.bfloat16)
        gen = estimate_generation(s, rows=256, prompt_len=128, new_tokens=64)
        sae = estimate_sae(s.d_model, 16 * s.d_model, 4096)
        rows.append(
            {
                "model": name,
                "params": s.n_params,
                "weights_bf16": s.n_params * 2,
                "capture_bs16_T512_bf16": cap.total,
                "generation_256rows_192tok_bf16": gen.total,
                "sae_x16_batch4096": sae.total,
            }
        )
    return rows


if __name__ == "__main__":  # python -m deltalens.scale.memory
    for r in table():
        print(
            f"{r['model']}: {r['params'] / 1e9:.2f} B params; weights (bf16) {_fmt(r['weights_bf16'])}; "
            f"capture (batch 16 × 512 tokens) {_fmt(r['capture_bs16_T512_bf16'])}; "
            f"generation (256 rows × 192 tokens) {_fmt(r['generation_256rows_192tok_bf16'])}; "
            f"SAE ×16 (batch 4096) {_fmt(r['sae_x16_batch4096'])}"
        )
