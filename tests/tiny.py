"""Tiny random models and a tiny real tokenizer, built offline from configs.

The tokenizer is a byte-level BPE trained (in a fraction of a second) on a few
paragraphs, with a ChatML chat template, so chat formatting, token types and
generation run exactly as with a real instruct model.
"""

from __future__ import annotations

import functools

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "What is the capital of France? The capital of France is Paris.",
    "I love reading books about science, history and art. Reading is fun!",
    "def add(a, b):\n    return a + b\nprint(add(1, 2))",
    "You are a helpful assistant. Answer the question briefly and politely.",
    "Why is the sky blue? Light scatters in the air, and blue light scatters most.",
    "Tell me a story about a brave mouse who lived in a big old house.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. Symbols: + - * / = ( ) [ ] { } ; : , .",
    "assistant user system hello there good morning thanks please yes no maybe",
]

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "gpt_neox", "phi3")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def tiny_config(family: str, vocab: int, n_layers: int = 4, d: int = 64):
    import transformers as tf

    common = dict(
        vocab_size=vocab,
        num_hidden_layers=n_layers,
        hidden_size=d,
        intermediate_size=2 * d,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "qwen3":
        return tf.Qwen3Config(**common, head_dim=16)
    if family == "gemma2":
        return tf.Gemma2Config(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=32)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=32)
    if family == "phi3":
        return tf.Phi3Config(**common, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_layer=n_layers, n_embd=d, n_head=4, n_positions=256)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            vocab_size=vocab,
            num_hidden_layers=n_layers,
            hidden_size=d,
            num_attention_heads=4,
            intermediate_size=2 * d,
            max_position_embeddings=256,
        )
    raise ValueError(family)


def tiny_model(family: str = "llama", n_layers: int = 4, d: int = 64, seed: int = 0):
    """A LoadedModel with random weights (float32, eval mode, eager attention)."""
    from transformers import AutoModelForCausalLM

    from deltalens.models.loading import LoadedModel

    tok = tiny_tokenizer()
    cfg = tiny_config(family, len(tok), n_layers, d)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    # scale up weights a bit so activations and logits are not all ~0
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(2.0)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return LoadedModel.wrap(model, tok, name=f"tiny-{family}")


def save_tiny(lm, path) -> str:
    """Save a tiny LoadedModel as a normal HF directory (weights + tokenizer); returns the path."""
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)
