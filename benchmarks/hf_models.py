"""Hugging Face models for the benchmarks: random-init configurations (no downloads), at two sizes.

`tiny` matches the test configurations (hidden 32, 2 layers); `small` is large enough for latency to mean
something on a CPU (hidden 256, 4 layers, 128 tokens). Imported by the benchmark scripts only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SIZES = {
    "tiny": {"hidden": 32, "ffn": 64, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 100, "seq": 8, "image": 16,
             "patch": 4},
    "small": {"hidden": 256, "ffn": 1024, "layers": 4, "heads": 8, "kv_heads": 4, "vocab": 1000, "seq": 128,
              "image": 64, "patch": 8},
}


def available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _models(s: dict[str, int], impl: str) -> dict[str, Callable[[], nn.Module]]:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    return {
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], max_position_embeddings=2 * s["seq"],
            use_cache=False, attn_implementation=impl)),
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=s["vocab"], n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"],
            n_positions=2 * s["seq"], use_cache=False, attn_implementation=impl)),
        "bert": lambda: transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], intermediate_size=s["ffn"], max_position_embeddings=2 * s["seq"],
            num_labels=3, attn_implementation=impl)),
        "vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
            image_size=s["image"], patch_size=s["patch"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], intermediate_size=s["ffn"], num_labels=3, attn_implementation=impl)),
    }


def hf_cases(size: str = "tiny", batch: int = 2, impl: str = "sdpa") -> list[tuple[str, nn.Module, dict]]:
    """(label, model in eval mode, keyword inputs) for Llama, GPT-2, BERT and ViT."""
    s = SIZES[size]
    generator = torch.Generator().manual_seed(0)
    cases = []
    for name, make in _models(s, impl).items():
        torch.manual_seed(0)
        model = make().eval()
        if name == "vit":
            inputs = {"pixel_values": torch.randn(batch, 3, s["image"], s["image"], generator=generator)}
        else:
            ids = torch.randint(0, s["vocab"], (batch, s["seq"]), generator=generator)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        cases.append((f"HF {name} ({size}, {impl})", model, inputs))
    return cases
