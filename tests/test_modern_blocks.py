"""Today's building blocks (issue 10's table), as small replicas: each found as GeZIGs, each exactly removable.

For every replica: the GeZIG count, zero-invariance of every GeZIG in train and eval mode, and an exact, smaller
sub-network for every valid zero set tried (up to 10 per model, greedy like H2SPG's search). Then the specific
claims: what is cut and what is zero-filled, no false "unused" warnings, recurrent modules exported.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blocks as B
import otov3
from equivalence import assert_zero_invariant
from otov3 import OTO
from subnet_equivalence import assert_subnet_equivalent, count, load_generated, randomize_, zero_groups_

X = (2, 3, 16, 16)

# name -> (factory, number of GeZIGs)
REPLICAS = {
    "convnext_layerscale_stochastic_depth": (B.ConvNeXtNet, 3),
    "se_gate_at_branch_end_droppath": (B.SENet, 3),
    "split_halves_glu_gated_mlp": (B.SplitGLUNet, 4),
    "vit_multihead_attention": (B.ViTNet, 4),
    "swin_wrapped_window_attention": (B.SwinNet, 4),
    "shufflenet_chunk_channel_shuffle": (B.ShuffleNet, 3),
    "densenet_dense_block": (B.DenseNet, 4),
    "lstm_inside": (lambda: B.RecurrentNet(nn.LSTM), 2),
    "gru_inside": (lambda: B.RecurrentNet(nn.GRU), 2),
    "parameter_free_module_reused": (B.SharedActivationNet, 7),
    "shared_conv_on_concats": (B.SharedConvOnConcatNet, 6),
    "groupnorm_over_concat": (B.GroupNormConcatNet, 4),
}


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_(REPLICAS[name][0](), seed=seed)


def _oto(model: nn.Module) -> OTO:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unused parameter" or other warning on any replica
        return OTO(model, torch.randn(*X))


def _valid_zero_sets(oto: OTO, limit: int = 10, seed: int = 0) -> list[tuple[int, ...]]:
    n = len(oto.groups)
    sets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    random.Random(seed).shuffle(sets)
    return [s for s in sets if oto.is_valid_indices(s)][:limit]


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_has_the_expected_gezigs_each_zero_invariant(name):
    model = _build(name)
    oto = _oto(model)
    assert len(oto.groups) == REPLICAS[name][1], oto.summary()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    covered = sum(g.numel() for g in (*oto.groups, *oto.complementary))
    assert covered == trainable, "the partition must cover every trainable scalar exactly once"
    for g in oto.groups:
        for train_mode in (True, False):
            assert_zero_invariant(model, torch.randn(*X), g.name, torch.randn(*X), train_mode)


@pytest.mark.parametrize("name", REPLICAS)
def test_every_valid_zero_set_tried_builds_an_exact_smaller_subnet(name):
    reference = _build(name)
    chosen = _valid_zero_sets(_oto(copy.deepcopy(reference)))
    assert chosen, "a replica must offer at least one valid removal"
    for indices in chosen:
        model = copy.deepcopy(reference)
        oto = _oto(model)
        zero_groups_([oto.groups[i] for i in indices])
        subnet = oto.construct_subnet()
        assert_subnet_equivalent(model, subnet, (torch.randn(*X),), super_gm=oto.space.captured.gm)
        assert count(subnet) < count(model)


def test_layerscale_and_stochastic_depth_are_inside_the_convnext_block_group():
    oto = _oto(_build("convnext_layerscale_stochastic_depth"))
    names = [g.name for g in oto.groups]
    assert all(f"blocks.{i}.layer_scale" in names[i] and f"blocks.{i}.block.1" in names[i] for i in range(3)), names
    ops = {oto.space.trace.vertices[v].op for g in oto.groups for v in g.vertices}
    assert {"stochastic_depth", "layer_norm", "mul"} <= ops, ops


def test_multihead_attention_weights_are_used_and_the_pre_norm_goes_with_the_sublayer():
    oto = _oto(_build("vit_multihead_attention"))
    assert [g.name for g in oto.groups] == ["ln1.0+attn.0", "ln2.0+mlp.0.0+mlp.0.2", "ln1.1+attn.1",
                                            "ln2.1+mlp.1.0+mlp.1.2"]
    assert all(g.name != "<unused>" for g in oto.complementary)


def test_densenet_layer_removal_cuts_the_later_layers_leading_norm_and_conv():
    model = _build("densenet_dense_block")
    oto = _oto(model)
    first = oto.groups[0]
    aux = {(s.name, s.index.start, s.index.stop) for s in first.slices if s.index is not None}
    # layer 0's 4 channels sit at [6, 10) of every later layer's concat: their BN slices are its auxiliary members
    assert {("layers.1.norm1.weight", 6, 10), ("layers.3.norm1.bias", 6, 10), ("norm.weight", 6, 10)} <= aux
    zero_groups_([first])
    subnet = oto.construct_subnet()
    assert subnet.get_submodule("layers.1.norm1").num_features == 6
    assert subnet.get_submodule("layers.3.conv1").in_channels == 14
    assert not hasattr(subnet.layers, "0") or not hasattr(subnet.layers[0], "conv2")


def test_groupnorm_keeps_whole_groups_and_zero_fills_a_branch_that_would_split_one():
    model = _build("groupnorm_over_concat")
    oto = _oto(model)
    zero_groups_([oto.group("a.0+a.1"), oto.group("c.0+c.1")])
    subnet = oto.construct_subnet()
    gn = subnet.get_submodule("gn")
    assert (gn.num_channels, gn.num_groups) == (8, 2), "8 whole channels of 2 groups removed with branch a"
    gn2 = subnet.get_submodule("gn2")
    assert (gn2.num_channels, gn2.num_groups) == (12, 2), "branch c's 4 channels split a group: zero block fed"
    assert not hasattr(subnet, "c"), "the zero-filled branch's operations are gone"


def test_shared_conv_is_never_cut_and_removal_never_refused():
    model = _build("shared_conv_on_concats")
    oto = _oto(model)
    zero_groups_([oto.groups[0], oto.groups[3]])
    subnet = oto.construct_subnet()
    assert subnet.get_submodule("shared").in_channels == 8


def test_channel_shuffle_branch_is_removed_by_feeding_the_concat_zeros():
    model = _build("shufflenet_chunk_channel_shuffle")
    oto = _oto(model)
    zero_groups_([oto.groups[1]])
    subnet = oto.construct_subnet()
    assert not any(name.startswith("units.1.branch") for name, _ in subnet.named_parameters())
    # the zero block takes its sizes from the kept operand, so other batch sizes and resolutions work too
    assert_subnet_equivalent(model, subnet, (torch.randn(3, 3, 24, 20),))


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_recurrent_module_is_kept_used_and_exported(kind, tmp_path):
    model = randomize_(B.RecurrentNet(kind))
    oto = _oto(model)
    rnn = next(g for g in oto.complementary if g.name == "rnn")
    assert "no op that outputs zero" in rnn.reason
    zero_groups_([oto.group("post.0")])
    subnet = oto.construct_subnet(tmp_path / "out")
    state = torch.load(tmp_path / "out" / "state_dict.pt", weights_only=True)
    assert state.keys() == subnet.state_dict().keys()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["files"]["state_dict"] == "state_dict.pt"
    assert summary["files"]["source"] == "subnet.py", summary  # nn.LSTM/GRU rebuild from RNNBase's arguments
    rebuilt = load_generated(tmp_path / "out" / "subnet.py").SubNet()
    rebuilt.load_state_dict(state)
    assert_subnet_equivalent(model, rebuilt, (torch.randn(*X),))


class _Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x) if x.dim() < 0 else F.silu(x)  # data-dependent enough that a user registers it


class _SwishNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.act = _Swish()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.act(self.branch(x)))


def test_register_op_declares_a_custom_module_so_the_branch_becomes_a_gezig():
    import otov3.ops.registry as registry

    model = _SwishNet()
    saved = dict(registry._BY_MODULE)
    try:
        otov3.register_op(_Swish, zero_preserving=True, channels="pass")
        oto = OTO(model, torch.randn(*X))
        assert [g.name for g in oto.groups] == ["branch"]
        assert any(oto.space.trace.vertices[v].op == "_Swish" for v in oto.groups[0].vertices)
        zero_groups_(oto.groups)
        assert_subnet_equivalent(model, oto.construct_subnet(), (torch.randn(*X),))
    finally:
        registry._BY_MODULE.clear()
        registry._BY_MODULE.update(saved)


def test_an_unknown_op_reason_names_it_and_points_to_register_op():
    def mystery(x: torch.Tensor) -> torch.Tensor:
        return x.erfinv()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return y + self.b(y).tanh().erfinv()

    oto = OTO(Net(), torch.randn(*X))
    reasons = " ".join(g.reason or "" for g in oto.complementary)
    assert "'erfinv'" in reasons and "register_op" in reasons, reasons


def test_register_op_rejects_bad_declarations():
    with pytest.raises(ValueError, match="kind must be one of"):
        otov3.register_op(_Swish, kind="activation")
    with pytest.raises(ValueError, match="channels must be one of"):
        otov3.register_op(_Swish, channels="maybe")
    with pytest.raises(ValueError, match="consume"):
        otov3.register_op(_Swish, channels="consume")
