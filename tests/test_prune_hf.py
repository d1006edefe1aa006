"""Pruning mode on tiny Hugging Face transformers (captured through torch.export): whole attention heads where q/k/v
are separate Linears (BERT), MLP hidden units everywhere (BERT; GPT-2's Conv1D/addmm; Llama's gated MLP), and
random zero channel groups give exact, slimmer sub-networks. What cannot be followed (GPT-2's split of c_attn,
Llama's grouped-query heads, the residual streams behind LayerNorm/RMSNorm) is kept whole with a reason."""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from otov3 import OTO  # noqa: E402
from prune_nets import zero_random_  # noqa: E402

transformers.utils.logging.set_verbosity_error()


def _bert() -> torch.nn.Module:
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, num_labels=3, attn_implementation="eager"))


def _gpt2() -> torch.nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=1, n_head=4, n_positions=32, use_cache=False, attn_implementation="eager"))


def _llama() -> torch.nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, use_cache=False, attn_implementation="eager"))


MODELS = {
    "bert": (_bert, {"bert.encoder.layer.0.attention.self.query+bert.encoder.layer.0.attention.self.key+"
                     "bert.encoder.layer.0.attention.self.value": (4, 8), "bert.encoder.layer.0.intermediate.dense":
                     (64, 1)}, "bert.encoder.layer.0.output.dense"),
    "gpt2": (_gpt2, {"transformer.h.0.mlp.c_fc": (128, 1)}, "transformer.h.0.attn.c_attn"),
    "llama": (_llama, {"model.layers.0.mlp.gate_proj+model.layers.0.mlp.up_proj": (64, 1)},
              "model.layers.0.self_attn.q_proj"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_heads_and_hidden_units_are_groups_and_random_zero_sets_are_exact(name):
    factory, prunable, kept = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    generator = torch.Generator().manual_seed(0)
    example = {"input_ids": torch.randint(0, 100, (2, 8), generator=generator),
               "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oto = OTO(model, example, mode="prune")
    groups = {oto._prune.names[g.id]: g for g in oto._prune.node_groups}
    for group, (count, unit) in prunable.items():
        assert groups[group].prunable and (groups[group].num_groups, groups[group].unit) == (count, unit), group
    assert not groups[kept].prunable and groups[kept].reason
    zero = zero_random_(oto, 0.4)
    before = sum(p.numel() for p in model.parameters())
    sub = oto.construct_subnet()  # verified against the super-network (relative 1e-5) before it is returned
    assert sum(p.numel() for p in sub.parameters()) < before and zero
    inputs = {"input_ids": torch.randint(0, 100, (3, 8), generator=generator),
              "attention_mask": torch.ones(3, 8, dtype=torch.long)}
    inputs["attention_mask"][-1, -3:] = 0
    with torch.no_grad():
        ref, got = model(**inputs).logits, sub(**inputs).logits
    assert (ref - got).abs().max() <= 1e-5 * max(float(ref.abs().max()), 1e-6)
