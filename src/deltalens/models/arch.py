"""Architecture table: where each family keeps its layers, embedding, norms and heads.

deltalens hooks unmodified Hugging Face modules. This table is the only place that
knows module paths. For each family it gives:

* ``backbone`` — the base model inside the ``*ForCausalLM`` (``model``, ``transformer``…);
* ``layers``, ``embed``, ``final_norm`` — relative to the backbone; ``unembed`` relative
  to the top model;
* ``attn``, ``mlp`` — the attention and MLP modules relative to a decoder layer;
* ``attn_out``, ``mlp_out`` — the module whose *output is what the block adds to the
  residual stream*. For most families that is the attention/MLP module itself; Gemma 2/3
  apply a post-norm first, so there it is ``post_attention_layernorm`` /
  ``post_feedforward_layernorm``;
* ``params`` — weight names per component (relative to a layer) used by weight diffs;
  ``conv1d`` lists components stored as ``[in, out]`` (GPT-2's ``Conv1D``) rather
  than ``nn.Linear``'s ``[out, in]``.

Sites and the one layer convention (also in :mod:`deltalens.hooks`): layers are 0-based
decoder blocks; ``resid_pre`` of layer L is the block's input (= HF
``hidden_states[L]``), ``resid`` of layer L is its output (= HF ``hidden_states[L+1]``,
except that HF replaces the last entry with the final-norm output).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SiteError

COMPONENTS = ("embed", "resid_pre", "resid", "attn_out", "mlp_out")

_LLAMA_PARAMS = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "input_norm": "input_layernorm.weight",
    "post_attn_norm": "post_attention_layernorm.weight",
}


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_types: tuple[str, ...]
    backbone: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    unembed: str
    attn: str
    mlp: str
    attn_out: str
    mlp_out: str
    params: dict[str, str] = field(default_factory=dict)
    conv1d: frozenset[str] = frozenset()
    parallel_residual: bool = False
    # name of the global parameters (relative to the top model) for weight diffs
    embed_param: str = ""
    unembed_param: str = "lm_head.weight"
    final_norm_param: str = ""


ARCH_TABLE: tuple[ArchSpec, ...] = (
    ArchSpec(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "olmo2", "granite"),
        backbone=("model",),
        layers="layers",
        embed="embed_tokens",
        final_norm="norm",
        unembed="lm_head",
        attn="self_attn",
        mlp="mlp",
        attn_out="self_attn",
        mlp_out="mlp",
        params={**_LLAMA_PARAMS, "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"},
        embed_param="model.embed_tokens.weight",
        final_norm_param="model.norm.weight",
    ),
    ArchSpec(
        family="gemma",
        model_types=("gemma2", "gemma3", "gemma3_text"),
        backbone=("model.language_model", "model"),
        layers="layers",
        embed="embed_tokens",
        final_norm="norm",
        unembed="lm_head",
        attn="self_attn",
        mlp="mlp",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        params={
            **_LLAMA_PARAMS,
            "pre_mlp_norm": "pre_feedforward_layernorm.weight",
            "post_mlp_norm": "post_feedforward_layernorm.weight",
            "q_norm": "self_attn.q_norm.weight",
            "k_norm": "self_attn.k_norm.weight",
        },
        embed_param="model.embed_tokens.weight",
        final_norm_param="model.norm.weight",
    ),
    ArchSpec(
        family="phi3",
        model_types=("phi3",),
        backbone=("model",),
        layers="layers",
        embed="embed_tokens",
        final_norm="norm",
        unembed="lm_head",
        attn="self_attn",
        mlp="mlp",
        attn_out="self_attn",
        mlp_out="mlp",
        params={
            "qkv": "self_attn.qkv_proj.weight",
            "o": "self_attn.o_proj.weight",
            "gate_up": "mlp.gate_up_proj.weight",
            "down": "mlp.down_proj.weight",
            "input_norm": "input_layernorm.weight",
            "post_attn_norm": "post_attention_layernorm.weight",
        },
        embed_param="model.embed_tokens.weight",
        final_norm_param="model.norm.weight",
    ),
    ArchSpec(
        family="gpt2",
        model_types=("gpt2",),
        backbone=("transformer",),
        layers="h",
        embed="wte",
        final_norm="ln_f",
        unembed="lm_head",
        attn="attn",
        mlp="mlp",
        attn_out="attn",
        mlp_out="mlp",
        params={
            "qkv": "attn.c_attn.weight",
            "o": "attn.c_proj.weight",
            "up": "mlp.c_fc.weight",
            "down": "mlp.c_proj.weight",
            "input_norm": "ln_1.weight",
            "post_attn_norm": "ln_2.weight",
        },
        conv1d=frozenset({"qkv", "o", "up", "down"}),
        embed_param="transformer.wte.weight",
        final_norm_param="transformer.ln_f.weight",
    ),
    ArchSpec(
        family="gpt_neox",
        model_types=("gpt_neox",),
        backbone=("gpt_neox",),
        layers="layers",
        embed="embed_in",
        final_norm="final_layer_norm",
        unembed="lm_head",
        attn="attention",
        mlp="mlp",
        attn_out="attention",
        mlp_out="mlp",
        params={
            "qkv": "attention.query_key_value.weight",
            "o": "attention.dense.weight",
            "up": "mlp.dense_h_to_4h.weight",
            "down": "mlp.dense_4h_to_h.weight",
            "input_norm": "input_layernorm.weight",
            "post_attn_norm": "post_attention_layernorm.weight",
        },
        parallel_residual=True,
        embed_param="gpt_neox.embed_in.weight",
        final_norm_param="gpt_neox.final_layer_norm.weight",
    ),
)

SUPPORTED_MODEL_TYPES = tuple(t for spec in ARCH_TABLE for t in spec.model_types)


def _get(root: nn.Module, path: str) -> nn.Module | None:
    mod: nn.Module | None = root
    for part in path.split("."):
        if mod is None or not hasattr(mod, part):
            return None
        mod = getattr(mod, part)
    return mod


def spec_for(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` for a HF causal LM (by ``config.model_type``).

    Unknown model types that look Llama-like (``model.layers[i].self_attn`` and ``.mlp``)
    fall back to the Llama entry with a warning; anything else is refused.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in ARCH_TABLE:
        if model_type in spec.model_types:
            return spec
    llama = ARCH_TABLE[0]
    layers = _get(model, "model.layers")
    if (
        isinstance(layers, nn.ModuleList)
        and len(layers)
        and hasattr(layers[0], "self_attn")
        and hasattr(layers[0], "mlp")
    ):
        warnings.warn(
            f"model_type '{model_type}' is not in deltalens's architecture table; treating it as Llama-like "
            "(model.layers[i].self_attn / .mlp). Check captured activations against output_hidden_states.",
            stacklevel=3,
        )
        return llama
    raise SiteError(
        f"model_type '{model_type}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


class Arch:
    """Resolves sites and named modules of one loaded model."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.spec = spec_for(model)
        backbone = None
        for path in self.spec.backbone:
            backbone = _get(model, path)
            if backbone is not None and _get(backbone, self.spec.layers) is not None:
                self.backbone_path = path
                break
        if backbone is None:
            raise SiteError(
                f"could not find the backbone of {type(model).__name__} (tried {self.spec.backbone})"
            )
        self.backbone: nn.Module = backbone
        layers = _get(backbone, self.spec.layers)
        assert isinstance(layers, nn.ModuleList)
        self.layers: nn.ModuleList = layers
        self.embed: nn.Module = self._need(backbone, self.spec.embed, "embedding")
        self.final_norm: nn.Module = self._need(backbone, self.spec.final_norm, "final norm")
        self.unembed: nn.Module = self._need(model, self.spec.unembed, "unembedding")

    @staticmethod
    def _need(root: nn.Module, path: str, what: str) -> nn.Module:
        mod = _get(root, path)
        if mod is None:
            raise SiteError(f"could not resolve the {what} module '{path}' in {type(root).__name__}")
        return mod

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        for key in ("hidden_size", "n_embd", "d_model"):
            if hasattr(cfg, key):
                return int(getattr(cfg, key))
        return int(self.embed.weight.shape[1])

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise SiteError(f"layer must be an integer, got {layer!r}")
        n = self.n_layers
        if not -n <= layer < n:
            raise SiteError(
                f"layer {layer} is out of range: this model has {n} layers "
                f"(valid: 0..{n - 1}, or {-n}..-1 counting from the end)"
            )
        return layer % n

    def layer(self, layer: int) -> nn.Module:
        return self.layers[self.check_layer(layer)]

    def attn(self, layer: int) -> nn.Module:
        return self._need(self.layer(layer), self.spec.attn, "attention")

    def mlp(self, layer: int) -> nn.Module:
        return self._need(self.layer(layer), self.spec.mlp, "MLP")

    def module_for(self, layer: int, component: str) -> tuple[nn.Module, str]:
        """The module to hook for a site and the hook kind: ``"forward"`` (edit the output)
        or ``"pre"`` (edit the first input)."""
        if component not in COMPONENTS:
            raise SiteError(f"unknown component '{component}'; valid: {', '.join(COMPONENTS)}")
        if component == "embed":
            return self.embed, "forward"
        blk = self.layer(layer)
        if component == "resid_pre":
            return blk, "pre"
        if component == "resid":
            return blk, "forward"
        if component == "attn_out":
            return self._need(blk, self.spec.attn_out, "attention output"), "forward"
        return self._need(blk, self.spec.mlp_out, "MLP output"), "forward"

    def branch_input(self, layer: int, branch: str) -> nn.Module:
        """The norm module whose input is what a sub-block reads from the residual stream:
        ``branch="attn"`` (the attention's input norm), ``"mlp"`` (the MLP's input norm) or
        ``"logits"`` (the final norm; ``layer`` ignored)."""
        if branch == "logits":
            return self.final_norm
        if branch not in ("attn", "mlp"):
            raise SiteError(f"unknown branch '{branch}'; valid: attn, mlp, logits")
        params = self.spec.params
        key = (
            "input_norm"
            if branch == "attn"
            else ("pre_mlp_norm" if "pre_mlp_norm" in params else "post_attn_norm")
        )
        return self._need(self.layer(layer), params[key].rsplit(".", 1)[0], f"{branch} input norm")

    def head_projection(self, layer: int) -> tuple[nn.Module, torch.Tensor, int] | None:
        """The attention output projection of a layer, its per-head weights ``[H, head_dim, d]``
        (``out_h = z_h @ W[h]``, query heads, so grouped-query attention needs nothing special)
        and ``H``; ``None`` where heads are not separable in the residual stream (a post-norm
        after the projection, as in Gemma 2/3)."""
        if self.spec.attn_out != self.spec.attn or "o" not in self.spec.params:
            return None
        mod = self._need(
            self.layer(layer), self.spec.params["o"].rsplit(".", 1)[0], "attention output projection"
        )
        cfg = self.model.config
        H = int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_head", 0)) or 0)
        if H <= 0:
            return None
        w = mod.weight  # Linear: [d, H*hd]; GPT-2 Conv1D: [H*hd, d]
        wt = w if "o" in self.spec.conv1d else w.T
        if wt.shape[0] % H:
            return None
        return mod, wt.reshape(H, wt.shape[0] // H, wt.shape[1]), H

    def norms(self, layer: int) -> list[nn.Module]:
        """The normalisation modules of a decoder layer that act on the residual stream or a
        sub-block's output (RMSNorm / LayerNorm; the attention's q/k norms are left out)."""
        blk = self.layer(layer)
        attn = self._need(blk, self.spec.attn, "attention")
        inner = {id(m) for m in attn.modules()}
        return [
            m
            for m in blk.modules()
            if id(m) not in inner and (isinstance(m, nn.LayerNorm) or "RMSNorm" in type(m).__name__)
        ]

    def qk_projections(self, layer: int) -> list[tuple[nn.Module, int | None]]:
        """Modules whose output holds a layer's queries and keys: ``(module, n)`` where the
        first ``n`` output features are queries and keys (``None``: all of it). Freezing
        them freezes the attention pattern. Refused for fused per-head layouts (GPT-NeoX)."""
        attn = self.attn(layer)
        if hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
            return [(attn.q_proj, None), (attn.k_proj, None)]
        cfg = self.model.config
        if hasattr(attn, "qkv_proj"):  # Phi-3: [q | k | v]
            H, KV = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
            hd = attn.qkv_proj.out_features // (H + 2 * KV)
            return [(attn.qkv_proj, (H + KV) * hd)]
        if hasattr(attn, "c_attn"):  # GPT-2: [q | k | v], each d_model wide
            return [(attn.c_attn, 2 * self.d_model)]
        raise SiteError(
            f"{type(attn).__name__}: cannot separate queries and keys from values (fused per-head layout); "
            "attribution graphs support Llama-, Gemma-, Phi-3- and GPT-2-style attention"
        )

    def param_names(self, layer: int) -> dict[str, str]:
        """Full parameter names of the layer's weights that exist in this model, by component."""
        layer = self.check_layer(layer)
        prefix = f"{self.backbone_path}.{self.spec.layers}.{layer}."
        names = dict(self.model.named_parameters())
        return {comp: prefix + p for comp, p in self.spec.params.items() if prefix + p in names}

    def logits(self, x: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
        """Logit lens: ``unembed(final_norm(x))`` (``apply_norm=False`` skips the norm)."""
        if apply_norm:
            x = self.final_norm(x)
        out = self.unembed(x)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            out = torch.tanh(out / cap) * cap
        return out
