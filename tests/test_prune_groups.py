"""Pruning mode's channel groups (spec §4): OTOv2's DemoNet gives exactly the groups of §4.3, each special case of
§4.2 behaves as specified, and every unprunable node group says why. Both capture backends."""

from __future__ import annotations

import warnings
from fractions import Fraction

import pytest
import torch
from torch import nn

from otov3 import OTO
from otov3.errors import ConstructionError, SearchSpaceError
from otov3.graph.types import IN, OUT, ChannelRule, JointRule, OpTraits, TraceGraph, Vertex, VertexKind
from otov3.graph.zig import partition_channels
from otov3.graph.zig_layout import Layout, Seg, reshape_layout
from otov3.graph.zig_ops import ChannelKind, ChannelOp
from otov3.space import GroupKind
from prune_nets import (
    Attention,
    DemoNet,
    DepthwiseNet,
    EmbeddingNet,
    FlattenNet,
    GroupNormNet,
    MHANet,
    MoreUnprunable,
    TransposeNet,
    Unprunable,
)
from subnet_equivalence import zero_groups_

BACKENDS = ["fx", "export"]
X = torch.randn(2, 3, 8, 8)


def prune(model: nn.Module, x=X, capture: str = "fx", **kw) -> OTO:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OTO(model, x, mode="prune", capture=capture, **kw)


def node_groups(oto: OTO) -> dict[str, object]:
    return {oto._prune.names[g.id]: g for g in oto._prune.node_groups}


def members(g) -> list[tuple[str, int, int]]:
    return [(m.param, m.dim, m.off) for m in g.members]


# --- spec §4.3: OTOv2's DemoNet -----------------------------------------------------------------------------


@pytest.mark.parametrize("capture", BACKENDS)
def test_demonet_has_exactly_the_node_groups_of_spec_4_3_with_concat_offsets(capture):
    oto = prune(DemoNet(), capture=capture)
    ng = node_groups(oto)
    assert list(ng) == ["conv1", "conv2+conv3", "conv5", "gemm1", "gemm2"]
    a, b, d, e, f = ng.values()
    assert (a.channels, b.channels, d.channels, e.channels) == (64, 128, 256, 128)
    assert members(a) == [("conv1.weight", 0, 0), ("conv1.bias", 0, 0), ("bn1.weight", 0, 0), ("bn1.bias", 0, 0),
                          ("bn4.weight", 0, 0), ("bn4.bias", 0, 0)]  # auxiliary BN4[0:64]
    assert set(members(b)) == {("conv2.weight", 0, 0), ("conv2.bias", 0, 0), ("conv3.weight", 0, 0),
                               ("conv3.bias", 0, 0), ("bn2.weight", 0, 0), ("bn2.bias", 0, 0), ("bn3.weight", 0, 0),
                               ("bn3.bias", 0, 0), ("bn4.weight", 0, 64), ("bn4.bias", 0, 64)}  # BN4[64:192]
    assert members(d) == [("conv5.weight", 0, 0), ("conv5.bias", 0, 0)]
    assert members(e) == [("gemm1.weight", 0, 0), ("gemm1.bias", 0, 0)]
    assert not f.prunable and f.reason == "its channels reach the model output"
    assert all(g.prunable for g in (a, b, d, e))
    assert len(oto.groups) == 64 + 128 + 256 + 128
    g = oto.group("conv2+conv3:7")
    assert g.kind is GroupKind.CHANNEL and g.removable and not g.is_gezig and g.node_group == b.id
    spans = {(s.name, s.index.start, s.index.stop) for s in g.slices}
    assert ("bn4.weight", 71, 72) in spans and ("conv3.weight", 7, 8) in spans
    assert g.numel() == 2 * (64 * 9 + 1) + 2 + 2 + 2


def test_demonet_construction_cuts_the_concat_offsets_in_conv5():
    model = DemoNet().eval()
    oto = prune(model)
    zero_groups_([oto.group("conv1:3"), oto.group("conv2+conv3:5"), oto.group("conv5:0")])
    sub = oto.construct_subnet()
    assert sub.conv5.weight.shape == (255, 190, 3, 3) and sub.bn4.num_features == 190
    assert sub.conv2.weight.shape == (127, 63, 3, 3) and sub.gemm1.weight.shape == (128, 255)
    kept = [*range(3), *range(4, 64), *(64 + j for j in range(128) if j != 5)]
    assert torch.equal(sub.bn4.weight, model.bn4.weight.detach()[kept])


# --- spec §4.2 special cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", BACKENDS)
def test_depthwise_conv_joins_its_producers_group_and_keeps_groups_equal_to_channels(capture):
    oto = prune(DepthwiseNet(), capture=capture)
    conv = node_groups(oto)["conv.0"]
    assert conv.prunable and {m.param for m in conv.members} >= {"dw.weight", "dw.bias",
                                                                                  "bn.weight", "conv.1.weight"}
    zero_groups_([oto.group("conv.0:1"), oto.group("conv.0:4")])
    sub = oto.construct_subnet()
    if capture == "fx":
        assert (sub.dw.groups, sub.dw.in_channels, sub.dw.out_channels) == (4, 4, 4)


@pytest.mark.parametrize("capture", BACKENDS)
def test_flatten_then_linear_cuts_a_block_of_features_per_channel(capture):
    model = FlattenNet()
    oto = prune(model, capture=capture)
    zero_groups_([oto.group("conv.0:2")])
    sub = oto.construct_subnet()
    weight = dict(sub.named_parameters())["fc1.weight"]
    assert weight.shape == (7, 64)
    assert torch.equal(weight, torch.cat([model.fc1.weight[:, :32], model.fc1.weight[:, 48:]], 1).detach())


@pytest.mark.parametrize("capture", BACKENDS)
def test_groupnorm_channels_go_in_whole_groups_and_a_misaligned_groupnorm_keeps_its_operands(capture):
    oto = prune(GroupNormNet(), capture=capture)
    ng = node_groups(oto)
    assert ng["conv"].unit == 2 and ng["conv"].num_groups == 4
    assert [s.index for s in oto.group("conv:1").slices if s.name == "gn.weight"] == [slice(2, 4)]
    assert not ng["a"].prunable and "normalises groups of 3 channels" in ng["a"].reason
    zero_groups_([oto.group("conv:1")])
    sub = oto.construct_subnet()
    if capture == "fx":
        assert (sub.gn.num_groups, sub.gn.num_channels) == (3, 6)


@pytest.mark.parametrize("capture", BACKENDS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "matmul"])
def test_attention_heads_and_mlp_hidden_units_are_groups_and_the_residual_stream_is_kept(capture, sdpa):
    oto = prune(Attention(sdpa=sdpa), torch.randn(2, 5, 8), capture=capture)
    ng = node_groups(oto)
    heads = ng["q+k+v"]
    assert heads.prunable and (heads.num_groups, heads.unit) == (2, 4)
    assert ng["fc1"].prunable and ng["fc1"].num_groups == 12
    assert not ng["o"].prunable and not ng["fc2"].prunable
    head = oto.group("q+k+v:1")
    assert {(s.name, s.index.start, s.index.stop) for s in head.slices} == {
        (f"{p}.{t}", 4, 8) for p in "qkv" for t in ("weight", "bias")}
    zero_groups_([head, oto.group("fc1:3")])
    sub = oto.construct_subnet()
    assert dict(sub.named_parameters())["o.weight"].shape == (8, 4)


def test_multihead_attention_module_is_kept_with_a_reason_under_fx_and_cut_exactly_under_export():
    x = torch.randn(2, 5, 4)
    inp = node_groups(prune(MHANet(), x))["inp"]
    assert not inp.prunable and "nn.MultiheadAttention" in inp.reason
    model = MHANet().eval()
    oto = prune(model, x, capture="export")  # aten ops: the packed in-projection is an ordinary consumer
    zero_groups_([oto.group("inp:2"), oto.group("inp:5")])
    sub = oto.construct_subnet()
    assert dict(sub.named_parameters())["attn.in_proj_weight"].shape == (24, 6)


@pytest.mark.parametrize("capture", BACKENDS)
def test_conv_transpose_rows_are_weight_dim_1_and_a_layerscale_is_per_channel(capture):
    model = TransposeNet()
    oto = prune(model, capture=capture)
    g = oto.group("up:2")
    dims = {s.name: (s.dim, s.index) for s in g.slices}
    assert dims == {"up.weight": (1, slice(2, 3)), "up.bias": (0, slice(2, 3)), "gamma": (0, slice(2, 3))}
    zero_groups_([g])
    sub = oto.construct_subnet()
    assert dict(sub.named_parameters())["up.weight"].shape == (3, 5, 2, 2)


def test_embedding_columns_are_channels():
    oto = prune(EmbeddingNet(), torch.randint(0, 11, (2, 5)))
    g = oto.group("emb:4")
    assert [(s.name, s.dim, s.index) for s in g.slices] == [("emb.weight", 1, slice(4, 5))]
    zero_groups_([g])
    assert oto.construct_subnet().emb.embedding_dim == 5


@pytest.mark.parametrize("capture", BACKENDS)
def test_every_unprunable_node_group_names_its_reason(capture):
    oto = prune(Unprunable(), torch.randn(2, 3, 6, 6), capture=capture)
    reasons = {name: g.reason for name, g in node_groups(oto).items()}
    assert "chunk/split" in reasons["glu"]
    assert "mixes channels" in reasons["shuf"]  # the channel shuffle's view
    assert "does not map zero to zero" in reasons["sig"] and "sigmoid" in reasons["sig"]
    assert "grouped convolution (groups=2)" in reasons["grouped"]
    assert "no group owns" in reasons["res"]  # an Add fed by the model input
    assert "frozen" in reasons["frozen"]
    assert reasons["fc"] == "its channels reach the model output"
    assert {g.node_group for g in oto.groups} == {node_groups(oto)["mix"].id}
    comp = {g.name: g.reason for g in oto.complementary}
    assert comp["glu"] == reasons["glu"]


@pytest.mark.parametrize("capture", BACKENDS)
def test_unknown_ops_shared_weights_and_channels_without_a_stem_are_kept_with_their_reasons(capture):
    oto = prune(MoreUnprunable(), capture=capture)
    reasons = {name: g.reason for name, g in node_groups(oto).items()}
    assert "table" in reasons["odd"] and "cumsum" in reasons["odd"]
    assert "'shared.weight' is also used where its channels are not followed" in reasons["a"]
    rest = {g.name: g for g in oto.complementary}["<not channel-prunable>"]
    assert {s.name for s in rest.slices} >= {"bn0.weight", "bn0.bias"} and "no node group" in rest.reason


def test_group_divisible_keeps_small_node_groups_and_rounds_kept_channels_up():
    oto = prune(DemoNet(), group_divisible=64)
    ng = node_groups(oto)
    assert not ng["conv1"].prunable and "group_divisible=64" in ng["conv1"].reason
    zero_groups_([oto.group(f"conv5:{j}") for j in range(10)])
    sub = oto.construct_subnet()
    assert sub.conv5.out_channels == 256  # 246 kept, rounded up to 256
    zero_groups_([oto.group(f"conv5:{j}") for j in range(10, 70)])
    assert oto.construct_subnet().conv5.out_channels == 192


def test_mode_and_group_divisible_are_validated_and_removal_keeps_a_channel_per_node_group():
    with pytest.raises(ValueError, match="mode must be 'erase'.*'prune'"):
        OTO(DemoNet(), X, mode="channels")
    with pytest.raises(ValueError, match="group_divisible must be a positive integer"):
        OTO(DemoNet(), X, mode="prune", group_divisible=0)
    oto = prune(DepthwiseNet())
    conv = [g for g in oto.groups if g.name.startswith("conv.0:")]
    assert oto.is_valid_removal(conv[:-1]) and not oto.is_valid_removal(conv)
    assert oto.is_valid_indices([0, 1])
    with pytest.raises(SearchSpaceError, match="not removable"):
        oto.is_valid_removal([oto.complementary[0]])
    zero_groups_(conv)
    with pytest.raises(ConstructionError, match="Keep at least one channel group"):
        oto.construct_subnet()


def test_summary_and_visualize_show_the_channel_groups(tmp_path):
    oto = prune(DemoNet())
    zero_groups_([oto.group("conv5:3")])
    text = oto.summary()
    assert "conv2+conv3" in text and "128 x 1" in text and "prunable (1 zero)" in text
    assert "kept: its channels reach the model output" in text and "576 channel groups" in text
    files = oto.visualize(tmp_path, svg=False)
    dot = (tmp_path / "channel_groups.dot").read_text()
    assert any(f.name == "channel_groups.dot" for f in files) and "[conv2+conv3]" in dot and "dashed" in dot
    assert repr(oto) == "OTO(DemoNet, mode='prune', channel_groups=576)"


def test_complementary_and_channel_groups_cover_every_trainable_scalar_once():
    model = DemoNet()
    oto = prune(model)
    cover = {n: torch.zeros_like(p, dtype=torch.int64) for n, p in model.named_parameters()}
    for g in (*oto.groups, *oto.complementary):
        for s in g.slices:
            view = cover[s.name] if s.index is None else cover[s.name].narrow(s.dim, s.index.start,
                                                                               s.index.stop - s.index.start)
            view.add_(1)
    assert all(bool((c == 1).all()) for c in cover.values())


# --- the graph layer alone (no torch): hand-built trace graphs ---------------------------------------------

STEM = OpTraits(VertexKind.STEM, zeroing=True, channel=ChannelRule.CONSUME)
BN = OpTraits(VertexKind.ACCESSORY, zeroing=True, channel=ChannelRule.PASS)
ADD = OpTraits(VertexKind.JOINT, joint=JointRule.ADD, zero_preserving=True)
CAT = OpTraits(VertexKind.JOINT, joint=JointRule.CAT, zero_preserving=True)
SIG = OpTraits(VertexKind.ACCESSORY)


def _trace(*spec: tuple[str, OpTraits, tuple[str, ...], int]) -> TraceGraph:
    verts, succ, pred = {}, {IN: []}, {}
    shapes = {IN: (1, 3, 4, 4)}
    for name, traits, src, ch in spec:
        shapes[name] = (1, ch, 4, 4)
        verts[name] = Vertex(name, name, traits, inputs=src, in_shapes=tuple(shapes[s] for s in src),
                             out_shape=shapes[name])
        for s in dict.fromkeys(src):
            succ.setdefault(s, []).append(name)
            pred.setdefault(name, []).append(s)
    last = spec[-1][0]
    succ.setdefault(last, []).append(OUT)
    pred[OUT] = [last]
    return TraceGraph(verts, {k: tuple(v) for k, v in succ.items()}, {k: tuple(v) for k, v in pred.items()})


def _stem(name: str) -> ChannelOp:
    return ChannelOp(ChannelKind.STEM, out_rows=((f"{name}.w", 0),), in_cols=((f"{name}.w", 1),))


def test_pure_partition_ties_adds_places_concat_blocks_and_stops_at_a_sigmoid():
    trace = _trace(("a", STEM, (IN,), 4), ("b", STEM, ("a",), 3), ("c", STEM, ("a",), 3), ("add", ADD, ("b", "c"), 3),
                   ("cat", CAT, ("a", "add"), 7), ("bn", BN, ("cat",), 7), ("s", STEM, ("bn",), 2),
                   ("sig", SIG, ("s",), 2), ("head", STEM, ("sig",), 2))
    ops = {n: _stem(n) for n in ("a", "b", "c", "s", "head")}
    ops |= {"add": ChannelOp(ChannelKind.ELEMENTWISE), "cat": ChannelOp(ChannelKind.CAT, dims=(1,)),
            "bn": ChannelOp(ChannelKind.PER_CHANNEL, per_channel=(("bn.g", 0),)),
            "sig": ChannelOp(ChannelKind.ELEMENTWISE)}
    params = {"a.w", "b.w", "c.w", "s.w", "head.w", "bn.g"}
    groups = {g.stems: g for g in partition_channels(trace, ops, trainable=params).groups}
    assert [(m.param, m.off) for m in groups[("a",)].members] == [("a.w", 0), ("bn.g", 0)]
    assert [(m.param, m.off) for m in groups[("b", "c")].members] == [("b.w", 0), ("c.w", 0), ("bn.g", 4)]
    assert groups[("a",)].prunable and groups[("b", "c")].prunable
    assert not groups[("s",)].prunable and "'sig' (sig) does not map zero to zero" in groups[("s",)].reason
    assert groups[("head",)].reason == "its channels reach the model output"


def test_reshape_layouts_follow_flattens_and_head_splits_and_refuse_interleaving():
    lay = Layout(1, (Seg(0, 0, 4), Seg(None, 4, 2)))
    flat, _ = reshape_layout(lay, (2, 6, 3, 3), (2, 54))
    assert flat == Layout(1, (Seg(0, 0, 36, Fraction(9)), Seg(None, 36, 18, Fraction(9))))
    heads, packed = reshape_layout(Layout(2, (Seg(0, 0, 8),)), (2, 5, 8), (2, 5, 2, 4))
    assert packed == 4 and heads == Layout(2, (Seg(0, 0, 2, Fraction(1, 4)),))
    assert reshape_layout(Layout(2, (Seg(0, 0, 4),)), (2, 6, 4), (2, 24))[0] is None  # (N, T, C) -> (N, T*C)


def test_a_batch_one_dummy_keeps_channels_on_dim_1_through_pool_flatten_linear():
    """(1, C, 1, 1) -> (1, C): dim 0 has the same prefix product as dim 1, but the channels stay on dim 1, so the
    last conv before an `AdaptiveAvgPool2d(1) -> Flatten -> Linear` head is prunable whatever the batch."""
    split = Layout(1, (Seg(0, 8, Fraction(1), 0),))
    assert reshape_layout(split, (1, 8, 1, 1), (1, 8))[0].axis == 1
    assert reshape_layout(split, (2, 8, 1, 1), (2, 8))[0].axis == 1
    counts = []
    for batch in (1, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(8, 4))
        oto = OTO(model, torch.randn(batch, 3, 8, 8), mode="prune")
        counts.append(len(oto.groups))
    assert counts == [8, 8]
