"""Hugging Face transformers end to end: search space, exact sub-networks, H2SPG training, reloadable artefacts.

Tiny random-init configurations (never `from_pretrained`, no downloads): Llama (grouped-query attention, gated MLP,
RMSNorm, rotary embeddings), GPT-2 (Conv1D projections, fused qkv), BERT (post-LN) and ViT, each with the eager
and the SDPA attention implementation. None of them can be traced by torch.fx, so `OTO(model, inputs)` captures
them with non-strict torch.export; every attention sublayer and every MLP sublayer is a GeZIG.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from otov3 import OTO  # noqa: E402
from otov3.subnet.verify import relative_difference  # noqa: E402

transformers.utils.logging.set_verbosity_error()  # tiny vocabularies make the configs warn about token ids

LAYERS = 2
VOCAB = 100
SEQ = 8


def _llama(impl: str) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, use_cache=False, attn_implementation=impl,
    )
    return transformers.LlamaForCausalLM(config)


def _gpt2(impl: str) -> nn.Module:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=32,
                                     use_cache=False, attn_implementation=impl)
    return transformers.GPT2LMHeadModel(config)


def _bert(impl: str) -> nn.Module:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                                     num_labels=3, attn_implementation=impl)
    return transformers.BertForSequenceClassification(config)


def _vit(impl: str) -> nn.Module:
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=LAYERS,
                                    num_attention_heads=4, intermediate_size=64, num_labels=3,
                                    attn_implementation=impl)
    return transformers.ViTForImageClassification(config)


# name -> (factory, input kind, the attention and MLP output projections of layer {i})
MODELS: dict[str, tuple[Callable[[str], nn.Module], str, str, str]] = {
    "llama": (_llama, "tokens", "model.layers.{i}.self_attn.o_proj", "model.layers.{i}.mlp.down_proj"),
    "gpt2": (_gpt2, "tokens", "transformer.h.{i}.attn.c_proj", "transformer.h.{i}.mlp.c_proj"),
    "bert": (_bert, "tokens", "bert.encoder.layer.{i}.attention.output.dense", "bert.encoder.layer.{i}.output.dense"),
    "vit": (_vit, "pixels", "vit.layers.{i}.attention.o_proj", "vit.layers.{i}.mlp.fc2"),
}
# parameters of the sublayers of layer {i}: none may survive when every GeZIG is removed (q, k, v, the gate and
# up projections become dead code)
SUBLAYERS: dict[str, tuple[str, ...]] = {
    "llama": ("model.layers.{i}.self_attn.", "model.layers.{i}.mlp."),
    "gpt2": ("transformer.h.{i}.attn.", "transformer.h.{i}.mlp."),
    "bert": ("bert.encoder.layer.{i}.attention.self.", "bert.encoder.layer.{i}.attention.output.dense.",
             "bert.encoder.layer.{i}.intermediate.", "bert.encoder.layer.{i}.output.dense."),
    "vit": ("vit.layers.{i}.attention.", "vit.layers.{i}.mlp."),
}
CASES = [(name, impl) for name in MODELS for impl in ("eager", "sdpa")]


def _inputs(kind: str, generator: torch.Generator, batch: int = 2, padded: bool = False) -> dict[str, torch.Tensor]:
    if kind == "pixels":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}
    ids = torch.randint(0, VOCAB, (batch, SEQ), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, -3:] = 0  # the last sequence is padded: the mask path matters
    return {"input_ids": ids, "attention_mask": mask}


def _outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs)
    return [out.logits]


class Built:
    """A model, its OTO and a copy of its initial weights (tests restore them after zeroing groups)."""

    def __init__(self, name: str, impl: str) -> None:
        self.name = name
        factory, self.kind, self.attention, self.mlp = MODELS[name]
        torch.manual_seed(0)
        self.model = factory(impl).eval()
        self.example = _inputs(self.kind, torch.Generator().manual_seed(0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.oto = OTO(self.model, self.example)
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}

    def restore(self) -> None:
        self.model.load_state_dict(self.initial)


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{i}" for n, i in CASES])
def built(request) -> Built:
    return Built(*request.param)


def test_every_attention_and_every_mlp_sublayer_is_a_gezig(built):
    oto = built.oto
    assert oto.capture_backend == "export"
    assert "torch.fx could not trace" in oto.space.captured.fallback_reason
    assert len(oto.groups) == 2 * LAYERS, [g.name for g in oto.groups]
    members = [set(g.name.split("+")) for g in oto.groups]
    for i in range(LAYERS):
        for output_projection in (built.attention.format(i=i), built.mlp.format(i=i)):
            assert sum(output_projection in m for m in members) == 1, (output_projection, [g.name for g in oto.groups])


def test_every_valid_zero_set_gives_an_exact_smaller_subnetwork(built):
    oto, model = built.oto, built.model
    n = len(oto.groups)
    tried = 0
    try:
        for r in range(1, n + 1):
            for combo in itertools.combinations(range(n), r):
                if not oto.is_valid_indices(combo):
                    continue
                built.restore()
                with torch.no_grad():
                    for i in combo:
                        for s in oto.groups[i].slices:
                            s.view().zero_()
                subnet = oto.construct_subnet()  # verifies too; the check below is independent of it
                assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in model.parameters())
                if r == n:
                    prefixes = [t.format(i=i) for t in SUBLAYERS[built.name] for i in range(LAYERS)]
                    left = [k for k, _ in subnet.named_parameters() if k.startswith(tuple(prefixes))]
                    assert not left, left
                generator = torch.Generator().manual_seed(100 + tried)
                for batch in (1, 3):  # other batch sizes than the example's, padded masks
                    inputs = _inputs(built.kind, generator, batch=batch, padded=True)
                    diff = relative_difference(_outputs(model, inputs), _outputs(subnet, inputs))
                    assert diff <= 1e-5, (combo, batch, diff)
                tried += 1
    finally:
        built.restore()
    assert tried >= n  # at least every single GeZIG


def _train(model: nn.Module, kind: str, optimizer: torch.optim.Optimizer, steps: int) -> float:
    generator = torch.Generator().manual_seed(1)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        inputs = _inputs(kind, generator, batch=8)
        logits = model(**inputs).logits
        if logits.dim() == 3:  # next-token prediction on random tokens
            ids = inputs["input_ids"]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        else:  # a label computable from the input
            first = inputs["input_ids"][:, 0] if "input_ids" in inputs else (inputs["pixel_values"].mean((1, 2, 3)) > 0)
            loss = F.cross_entropy(logits, first.long() % 3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.item()


_FRESH_PROCESS_CHECK = textwrap.dedent("""
    import importlib.util, sys, torch
    out_dir = sys.argv[1]
    spec = importlib.util.spec_from_file_location("generated_subnet", f"{out_dir}/subnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.SubNet()
    net.load_state_dict(torch.load(f"{out_dir}/state_dict.pt", weights_only=True))
    net.eval()
    case = torch.load(f"{out_dir}/case.pt", weights_only=True)
    with torch.no_grad():
        got = net(**case["inputs"]).logits
    ref = case["logits"]
    diff = float((got - ref).abs().max() / ref.abs().max())
    assert "otov3" not in sys.modules, "the generated source must not need otov3"
    assert diff <= 1e-5, diff
    print("ok", diff)
""")


@pytest.mark.parametrize("name", list(MODELS))
def test_h2spg_zeroes_k_sublayers_and_the_subnetwork_artefacts_reload(name, tmp_path: Path):
    factory, kind, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = factory("sdpa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oto = OTO(model, _inputs(kind, torch.Generator().manual_seed(0)))
    optimizer = oto.h2spg(variant="adamw", lr=3e-3, target_group_sparsity=2, warmup_steps=10, hybrid_steps=30)
    loss = _train(model, kind, optimizer, steps=45)
    assert math.isfinite(loss)
    zero = oto.zero_groups()
    assert len(zero) == 2, [g.name for g in zero]

    subnet = oto.construct_subnet(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["removed_groups"] == [g.name for g in zero]
    assert summary["params_after"] < summary["params_before"]
    state = torch.load(tmp_path / "state_dict.pt", weights_only=True)
    assert set(state) == set(subnet.state_dict())
    skipped = summary.get("skipped", {})
    for artefact, file in (("onnx", "subnet.onnx"), ("source", "subnet.py")):
        assert (tmp_path / file).exists() or skipped.get(artefact), f"{file} missing without a reason"
    if not (tmp_path / "subnet.py").exists():
        return
    inputs = _inputs(kind, torch.Generator().manual_seed(5), batch=3, padded=True)
    torch.save({"inputs": inputs, "logits": _outputs(model, inputs)[0]}, tmp_path / "case.pt")
    run = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_CHECK, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
