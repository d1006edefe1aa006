"""The torch.export capture backend (spec §2 "Capture backends"): aten op table, capture, fallback, sub-networks.

The aten entries of the op table are walked like the fx ones in test_search_space_units.py: every entry gets a
representative call in a one-op graph shaped as torch.export records it (data operands as placeholders,
parameters and buffers as `get_attr`), is classified through the real trace-graph builder, and its claims are
checked on real tensors (zeroing, zero-preserving, absorbing).
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Any

import pytest
import torch
import torch.fx
from torch import nn

import otov3.ops.aten  # noqa: F401  (fills the aten entries of the op table)
from otov3 import OTO, CaptureError
from otov3.capture.export_capture import _annotate
from otov3.capture.fx_capture import Captured
from otov3.capture.trace_graph import build_trace_graph
from otov3.graph.types import ChannelRule, JointRule, OpTraits, VertexKind
from otov3.ops.registry import table_entries
from otov3.subnet.dedupe import merge_duplicate_ops
from otov3.subnet.verify import relative_difference
from subnet_equivalence import load_generated, randomize_, zero_groups_

aten = torch.ops.aten

# --- the aten table walk ------------------------------------------------------------------------------------


class D:
    """A data operand (a placeholder): a float tensor of this shape, or integer indices below `high`."""

    def __init__(self, *shape: int, high: int | None = None, boolean: bool = False) -> None:
        self.shape, self.high, self.boolean = shape, high, boolean

    def make(self, generator: torch.Generator) -> torch.Tensor:
        if self.boolean:
            return torch.rand(self.shape, generator=generator) > 0.5
        if self.high is not None:
            return torch.randint(0, self.high, self.shape, generator=generator)
        return torch.randn(self.shape, generator=generator)


class P(D):
    """A trainable parameter operand (`get_attr`)."""


class Buf(D):
    """A buffer operand (`get_attr`), positive (running variances must be)."""

    def make(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.shape, generator=generator) + 0.5


X, Y = D(2, 4, 6, 6), D(2, 4, 6, 6)
X3, X3T, X2 = D(2, 5, 4), D(2, 4, 3), D(3, 4)
X1D, X5 = D(2, 4, 6), D(2, 4, 4, 4, 4)
MASK = D(2, 4, 6, 6, boolean=True)
Q, K, V = D(2, 2, 5, 4), D(2, 2, 5, 4), D(2, 2, 5, 4)

# op -> (args, kwargs) of one representative call; every aten key of the table must have one
SAMPLES: dict[Any, tuple[tuple, dict]] = {
    aten.conv1d.default: ((X1D, P(3, 4, 3), P(3)), {}),
    aten.conv2d.default: ((X, P(3, 4, 3, 3), P(3), [1, 1], [1, 1]), {}),
    aten.conv3d.default: ((X5, P(3, 4, 1, 1, 1)), {}),
    aten.conv1d.padding: ((X1D, P(3, 4, 3), P(3), [1], "same"), {}),
    aten.conv2d.padding: ((X, P(3, 4, 3, 3), None, [1, 1], "same"), {}),
    aten.conv3d.padding: ((X5, P(3, 4, 1, 1, 1), None, [1, 1, 1], "valid"), {}),
    aten.convolution.default: ((X, P(3, 4, 3, 3), P(3), [1, 1], [1, 1], [1, 1], False, [0, 0], 1), {}),
    aten._convolution.default: ((X, P(3, 4, 3, 3), P(3), [1, 1], [1, 1], [1, 1], False, [0, 0], 1, False, False,
                                 True, True), {}),
    aten.conv_transpose1d.default: ((X1D, P(4, 3, 3), P(3)), {}),
    aten.conv_transpose2d.input: ((X, P(4, 3, 3, 3), P(3)), {}),
    aten.conv_transpose3d.input: ((X5, P(4, 3, 1, 1, 1)), {}),
    aten.linear.default: ((X3, P(6, 4), P(6)), {}),
    aten.addmm.default: ((P(6), X2, P(4, 6)), {}),
    aten.mm.default: ((X2, D(4, 5)), {}),
    aten.matmul.default: ((X3, X3T), {}),
    aten.bmm.default: ((X3, X3T), {}),
    aten.baddbmm.default: ((D(2, 5, 3), X3, X3T), {}),
    aten.einsum.default: (("bij,bjk->bik", [X3, X3T]), {}),
    aten.stack.default: (([X, Y], 1), {}),
    aten.maximum.default: ((X, Y), {}),
    aten.minimum.default: ((X, Y), {}),
    aten.pow.Tensor_Tensor: ((X, Y), {}),
    aten.rsub.Tensor: ((X, Y), {}),
    aten.atan2.default: ((X, Y), {}),
    aten.embedding.default: ((P(10, 4), D(2, 5, high=10)), {}),
    aten.batch_norm.default: ((X, P(4), P(4), Buf(4), Buf(4), False, 0.1, 1e-5, False), {}),
    aten.native_batch_norm.default: ((X, P(4), P(4), Buf(4), Buf(4), False, 0.1, 1e-5), {}),
    aten._native_batch_norm_legit_no_training.default: ((X, P(4), P(4), Buf(4), Buf(4), 0.1, 1e-5), {}),
    aten._native_batch_norm_legit.default: ((X, P(4), P(4), Buf(4), Buf(4), True, 0.1, 1e-5), {}),
    aten.instance_norm.default: ((X, P(4), P(4), None, None, True, 0.1, 1e-5, False), {}),
    aten.group_norm.default: ((X, 2, P(4), P(4), 1e-5, False), {}),
    aten.layer_norm.default: ((X3, [4], P(4), P(4), 1e-5, False), {}),
    aten.native_layer_norm.default: ((X3, [4], P(4), P(4), 1e-5), {}),
    aten.rms_norm.default: ((X3, [4], P(4), 1e-6), {}),
    aten.native_group_norm.default: ((X, P(4), P(4), 2, 4, 36, 2, 1e-5), {}),
    aten.scaled_dot_product_attention.default: ((Q, K, V), {}),
    aten._scaled_dot_product_flash_attention_for_cpu.default: ((Q, K, V, 0.0, False), {}),
    aten._scaled_dot_product_efficient_attention.default: ((Q, K, V, None, False), {}),
    aten._scaled_dot_product_flash_attention.default: ((Q, K, V), {}),
    aten.add.Tensor: ((X, Y), {}),
    aten.add.Scalar: ((X, 2.0), {}),
    aten.sub.Tensor: ((X, Y), {}),
    aten.sub.Scalar: ((X, 2.0), {}),
    aten.rsub.Scalar: ((X, 1.0), {}),
    aten.cat.default: (([X, Y], 1), {}),
    aten.concat.default: (([X, Y], 1), {}),
    aten.mul.Tensor: ((X, Y), {}),
    aten.mul.Scalar: ((X, 2.0), {}),
    aten.div.Tensor: ((X, Y), {}),
    aten.div.Scalar: ((X, 2.0), {}),
    aten.div.Tensor_mode: ((X, Y), {"rounding_mode": "floor"}),
    aten.div.Scalar_mode: ((X, 2.0), {"rounding_mode": "floor"}),
    aten.pow.Tensor_Scalar: ((X, 2), {}),
    aten.pow.Scalar: ((2.0, X), {}),
    aten.where.self: ((MASK, X, Y), {}),
    aten.where.ScalarOther: ((MASK, X, 0.0), {}),
    aten.where.ScalarSelf: ((MASK, 0.0, X), {}),
    aten.where.Scalar: ((MASK, 1.0, 0.0), {}),
    aten.masked_fill.Scalar: ((X, MASK, 0.0), {}),
    aten.masked_fill.Tensor: ((X, MASK, Buf()), {}),
    aten.leaky_relu.default: ((X, 0.1), {}),
    aten.dropout.default: ((X, 0.5, False), {}),
    aten.feature_dropout.default: ((X, 0.5, False), {}),
    aten.alpha_dropout.default: ((X, 0.5, False), {}),
    aten.feature_alpha_dropout.default: ((X, 0.5, False), {}),
    aten.max_pool1d.default: ((X1D, [2]), {}),
    aten.max_pool2d.default: ((X, [2, 2]), {}),
    aten.max_pool3d.default: ((X5, [2, 2, 2]), {}),
    aten.avg_pool1d.default: ((X1D, [2]), {}),
    aten.avg_pool2d.default: ((X, [2, 2]), {}),
    aten.avg_pool3d.default: ((X5, [2, 2, 2]), {}),
    aten.adaptive_avg_pool1d.default: ((X1D, [2]), {}),
    aten.adaptive_avg_pool2d.default: ((X, [2, 2]), {}),
    aten.adaptive_avg_pool3d.default: ((X5, [2, 2, 2]), {}),
    aten._adaptive_avg_pool2d.default: ((X, [2, 2]), {}),
    aten.upsample_nearest1d.vec: ((X1D, None, [2.0]), {}),
    aten.upsample_nearest2d.vec: ((X, None, [2.0, 2.0]), {}),
    aten.upsample_nearest3d.vec: ((X5, None, [2.0, 2.0, 2.0]), {}),
    aten.upsample_linear1d.vec: ((X1D, None, False, [2.0]), {}),
    aten.upsample_bilinear2d.vec: ((X, None, False, [2.0, 2.0]), {}),
    aten.upsample_bicubic2d.vec: ((X, None, False, [2.0, 2.0]), {}),
    aten.upsample_trilinear3d.vec: ((X5, None, False, [2.0, 2.0, 2.0]), {}),
    aten.reflection_pad1d.default: ((X1D, [1, 1]), {}),
    aten.reflection_pad2d.default: ((X, [1, 1, 1, 1]), {}),
    aten.reflection_pad3d.default: ((X5, [1, 1, 1, 1, 1, 1]), {}),
    aten.replication_pad1d.default: ((X1D, [1, 1]), {}),
    aten.replication_pad2d.default: ((X, [1, 1, 1, 1]), {}),
    aten.replication_pad3d.default: ((X5, [1, 1, 1, 1, 1, 1]), {}),
    aten.view.default: ((X, [2, 4, 36]), {}),
    aten.reshape.default: ((X, [2, -1]), {}),
    aten._unsafe_view.default: ((X, [2, 144]), {}),
    aten.flatten.using_ints: ((X, 1), {}),
    aten.unflatten.int: ((X3, 2, [2, 2]), {}),
    aten.squeeze.dim: ((D(2, 1, 4), 1), {}),
    aten.squeeze.dims: ((D(2, 1, 4), [1]), {}),
    aten.squeeze.default: ((D(2, 1, 4),), {}),
    aten.unsqueeze.default: ((X, 1), {}),
    aten.expand.default: ((D(2, 4, 1, 1), [2, 4, 6, 6]), {}),
    aten.expand_as.default: ((D(2, 4, 1, 1), X), {}),
    aten.view_as.default: ((X, Y), {}),
    aten.reshape_as.default: ((X, Y), {}),
    aten._to_copy.default: ((X,), {"dtype": torch.float64}),
    aten.to.dtype: ((X, torch.float64), {}),
    aten.to.device: ((X, torch.device("cpu"), torch.float32), {}),
    aten.to.dtype_layout: ((X,), {"dtype": torch.float64, "layout": torch.strided, "device": torch.device("cpu")}),
    aten.to.other: ((X, Y), {}),
    aten.type_as.default: ((X, Y), {}),
    aten.mean.dim: ((X, [2, 3]), {}),
    aten.sum.dim_IntList: ((X, [2, 3]), {}),
    aten.amax.default: ((X, [2, 3]), {}),
    aten.amin.default: ((X, [2, 3]), {}),
    aten.var.correction: ((X, [2, 3]), {}),
    aten.std.correction: ((X, [2, 3]), {}),
    aten.norm.ScalarOpt_dim: ((X, 2, [2, 3]), {}),
    aten.permute.default: ((X, [0, 2, 3, 1]), {}),
    aten.transpose.int: ((X, 1, 2), {}),
    aten.t.default: ((X2,), {}),
    aten.swapaxes.default: ((X, 1, 2), {}),
    aten.movedim.int: ((X, 1, 3), {}),
    aten.select.int: ((X, 1, 0), {}),
    aten.slice.Tensor: ((X, 1, 0, 2), {}),
    aten.narrow.default: ((X, 1, 0, 2), {}),
    aten.index.Tensor: ((X, [D(3, high=2)]), {}),
    aten.index_select.default: ((X, 1, D(3, high=4)), {}),
    aten.gather.default: ((X, 1, D(2, 4, 6, 6, high=4)), {}),
    aten.repeat.default: ((X, [1, 2, 1, 1]), {}),
    aten.roll.default: ((X, [1], [1]), {}),
    aten.flip.default: ((X, [1]), {}),
    aten.tril.default: ((X2,), {}),
    aten.triu.default: ((X2,), {}),
    aten.unfold.default: ((X, 2, 2, 1), {}),
    aten.im2col.default: ((X, [2, 2], [1, 1], [0, 0], [1, 1]), {}),
    aten.pixel_shuffle.default: ((X, 2), {}),
    aten.pixel_unshuffle.default: ((X, 2), {}),
    aten.cumsum.default: ((X, 1), {}),
    aten.glu.default: ((X, 1), {}),
    aten.split.Tensor: ((X, 2, 1), {}),
    aten.split_with_sizes.default: ((X, [1, 3], 1), {}),
    aten.chunk.default: ((X, 2, 1), {}),
    aten.unbind.int: ((X, 1), {}),
    aten.tensor_split.sections: ((X, 2, 1), {}),
    aten.unsafe_split.Tensor: ((X, 2, 1), {}),
    aten.hardtanh.default: ((X,), {}),
    aten.clamp.default: ((X, -1.0, 1.0), {}),
    aten.clamp_min.default: ((X, 0.0), {}),
    aten.clamp_max.default: ((X, 0.5), {}),
    aten.constant_pad_nd.default: ((X, [1, 1]), {}),
    aten.pad.default: ((X, [1, 1], "constant", None), {}),
    aten.prelu.default: ((X, P(4)), {}),
    aten._prelu_kernel.default: ((X, P(4, 1, 1)), {}),
    aten.softmax.int: ((X, 1), {}),
    aten._softmax.default: ((X, 1, False), {}),
    aten.log_softmax.int: ((X, 1), {}),
    aten._log_softmax.default: ((X, 1, False), {}),
    aten.logsumexp.default: ((X, [1]), {}),
    aten.max_pool2d_with_indices.default: ((X, [2, 2]), {}),
    aten.adaptive_max_pool2d.default: ((X, [2, 2]), {}),
    aten.native_dropout.default: ((X, 0.5, False), {}),
    aten.one_hot.default: ((D(2, 5, high=5), 5), {}),
    aten.cumprod.default: ((X, 1), {}),
    aten.eq.Scalar: ((X, 0), {}), aten.ne.Scalar: ((X, 0), {}), aten.lt.Scalar: ((X, 0), {}),
    aten.le.Scalar: ((X, 0), {}), aten.gt.Scalar: ((X, 0), {}), aten.ge.Scalar: ((X, 0), {}),
    aten.__and__.Tensor: ((MASK, MASK), {}), aten.__or__.Tensor: ((MASK, MASK), {}),
    aten.bitwise_and.Tensor: ((MASK, MASK), {}), aten.bitwise_or.Tensor: ((MASK, MASK), {}),
    aten.bitwise_not.default: ((MASK,), {}),
    aten.any.dim: ((MASK, 1), {}), aten.all.dim: ((MASK, 1), {}),
    aten.new_ones.default: ((X, [2]), {}),
    aten.new_full.default: ((X, [2], 1.0), {}),
    aten.new_empty.default: ((X, [2]), {}),
    aten.new_zeros.default: ((X, [2]), {}),
    aten.full_like.default: ((X, 1.0), {}),
    aten.arange.default: ((5,), {}),
    aten.arange.start: ((1, 5), {}),
    aten.arange.start_step: ((1, 5, 2), {}),
    aten.ones.default: (([2, 3],), {}),
    aten.full.default: (([2, 3], 1.0), {}),
    aten.zeros.default: (([2, 3],), {}),
}
_BINARY = (aten.eq.Tensor, aten.ne.Tensor, aten.lt.Tensor, aten.le.Tensor, aten.gt.Tensor, aten.ge.Tensor,
           aten.logical_and.default, aten.logical_or.default)
SAMPLES.update({op: ((X, Y), {}) for op in _BINARY})
_UNARY_DEFAULTS = [op for op in (
    table_entries()["functions"]) if isinstance(op, torch._ops.OpOverload) and op not in SAMPLES]
SAMPLES.update({op: ((X,), {}) for op in _UNARY_DEFAULTS})  # relu, gelu, tanh, exp, clone, ... take one tensor


def _aten_entries() -> list[Any]:
    return [k for k in table_entries()["functions"] if isinstance(k, torch._ops.OpOverload)]


def _one_op_graph(op: Any, args: tuple, kwargs: dict, generator: torch.Generator):
    """A GraphModule that calls `op` once, parameters and buffers as `get_attr`, and its example inputs."""
    graph = torch.fx.Graph()
    root = nn.Module()
    inputs: list[torch.Tensor] = []
    counter = itertools.count()

    def place(value: Any) -> Any:
        if isinstance(value, list):
            return [place(v) for v in value]
        if isinstance(value, P):
            name = f"p{next(counter)}"
            root.register_parameter(name, nn.Parameter(value.make(generator)))
            return graph.get_attr(name)
        if isinstance(value, Buf):
            name = f"b{next(counter)}"
            root.register_buffer(name, value.make(generator))
            return graph.get_attr(name)
        if isinstance(value, D):
            inputs.append(value.make(generator))
            return graph.placeholder(f"x{len(inputs)}")
        return value

    node_args = tuple(place(a) for a in args)
    node_kwargs = {k: place(v) for k, v in kwargs.items()}
    node = graph.call_function(op, node_args, node_kwargs)
    graph.output(node)
    return torch.fx.GraphModule(root, graph), node, inputs


def _record(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> dict[str, Any]:
    values: dict[str, Any] = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            values[n.name] = out = super().run_node(n)
            return out

    with torch.no_grad():
        Rec(gm).run(*inputs)
    return values


def _all_zero(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool((value == 0).all())
    if isinstance(value, list | tuple):
        return all(_all_zero(v) for v in value)
    return value is None


def _classify(op: Any) -> tuple[torch.fx.GraphModule, torch.fx.Node, list[torch.Tensor], OpTraits, int]:
    args, kwargs = SAMPLES[op]
    gm, node, inputs = _one_op_graph(op, args, kwargs, torch.Generator().manual_seed(0))
    try:
        values = _record(gm, inputs)
    except (NotImplementedError, RuntimeError) as err:
        if "flash" in str(op) or "efficient" in str(op):
            pytest.skip(f"{op} has no CPU kernel here: {str(err).splitlines()[0][:80]}")
        raise
    _annotate(gm)
    if not inputs:  # a factory: never a data vertex, only its description is checked
        from otov3.ops.registry import OpContext, lookup

        handler = lookup(node, None)
        ctx = OpContext(node=node, module=None, in_shapes=(), out_shape=None, tensor_operands=0)
        return gm, node, inputs, handler.describe(ctx), handler.macs(ctx)
    trace = build_trace_graph(Captured(gm, tuple(inputs), {}, values, backend="export"), gm)
    vertex = trace.vertices[node.name]
    return gm, node, inputs, vertex.traits, vertex.macs


@pytest.mark.parametrize("op", _aten_entries(), ids=str)
def test_every_aten_table_entry_describes_a_representative_call_with_true_traits(op):
    assert op in SAMPLES, f"add a representative call for {op} to SAMPLES"
    gm, node, inputs, traits, macs = _classify(op)
    assert isinstance(traits, OpTraits) and isinstance(traits.kind, VertexKind)
    assert isinstance(traits.channel, ChannelRule)
    assert (traits.joint is not None) == (traits.kind is VertexKind.JOINT), "joints and only joints carry a rule"
    assert traits.joint is None or isinstance(traits.joint, JointRule)
    if traits.kind in (VertexKind.MERGE, VertexKind.UNKNOWN):
        assert isinstance(traits.reason, str) and traits.reason
    assert isinstance(macs, int) and macs >= 0
    params = dict(gm.named_parameters())
    assert set(traits.per_channel_params) <= set(params), "per-channel params must be the op's own parameters"
    if traits.zeroing:
        assert params, "a zeroing op must read trainable parameters"
        with torch.no_grad():
            for p in params.values():
                p.zero_()
        assert _all_zero(_record(gm, inputs)[node.name]), "zeroing op with zero parameters gave non-zero"
    floating = all(t.is_floating_point() for t in inputs)
    if traits.zero_preserving and floating and inputs:
        assert _all_zero(_record(gm, [torch.zeros_like(t) for t in inputs])[node.name]), "f(0) != 0"
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for position in traits.absorbing:  # a zero operand there gives a zero output, whatever the others
        operand = node.args[position]
        assert isinstance(operand, torch.fx.Node) and operand.op == "placeholder", "absorbing in a non-data operand"
        zeroed = [torch.zeros_like(t) if p is operand else t for p, t in zip(placeholders, inputs, strict=True)]
        assert _all_zero(_record(gm, zeroed)[node.name]), f"not absorbing in operand {position}"


def test_stems_read_their_weights_as_side_parameters_and_can_have_input_channels_cut():
    for op in (aten.conv2d.default, aten.linear.default, aten.addmm.default):
        args, kwargs = SAMPLES[op]
        if op is aten.linear.default:
            args = (X2, P(6, 4), P(6))  # channels can only be cut on 2-D inputs
        gm, node, inputs = _one_op_graph(op, args, kwargs, torch.Generator().manual_seed(0))
        values = _record(gm, inputs)
        _annotate(gm)
        vertex = build_trace_graph(Captured(gm, tuple(inputs), {}, values, backend="export"), gm).vertices[node.name]
        assert vertex.traits.kind is VertexKind.STEM and vertex.traits.zeroing, op
        assert vertex.traits.channel is ChannelRule.CONSUME, op
        assert set(vertex.params) == {"p0", "p1"} or set(vertex.params) == {"p0", "p2"}, (op, vertex.params)
        assert vertex.macs > 0, op


def test_a_buffer_bias_keeps_a_linear_map_from_being_zeroing():
    gm, node, inputs = _one_op_graph(aten.linear.default, (X3, P(6, 4), Buf(6)), {}, torch.Generator())
    values = _record(gm, inputs)
    _annotate(gm)
    vertex = build_trace_graph(Captured(gm, tuple(inputs), {}, values, backend="export"), gm).vertices[node.name]
    assert not vertex.traits.zeroing


# --- capture ------------------------------------------------------------------------------------------------


class Branches(nn.Module):
    """stem, then relu(y + a(y) + b(y)) with a and b Conv-BN branches (two GeZIGs), then a linear head."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.b = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return torch.relu(y + self.a(y) + self.b(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class ShapeChecked(Branches):
    """Checks its input resolution in Python: fx cannot branch on a traced shape."""

    resolution = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] == x.shape[3] == self.resolution, "wrong resolution"
        return self.head(self.features(x).mean((2, 3)))


def rearrange_tokens(x: torch.Tensor) -> torch.Tensor:
    """'b c h w -> b (h w) c', checked against the input like einops does (fx cannot take len of a shape)."""
    if len(x.shape) != 4:
        raise ValueError(f"pattern 'b c h w' does not match {len(x.shape)} dims")
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).transpose(1, 2)


class Rearranged(Branches):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(rearrange_tokens(self.features(x)).mean(1))


class Wrapper(nn.Module):
    """A wrapper that re-binds `forward` on the instance (fx traces the class's forward, which it lacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Branches()
        self.forward = self.model.forward


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: neither backend can capture it
            return x
        return -x


class DataDependent(Branches):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.features(x)).mean((2, 3)))


def _x(batch: int = 2, size: int = 8) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _oto(model: nn.Module, example: Any, **kw) -> OTO:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OTO(model, example, **kw)


def _assert_every_valid_zero_set_is_exact(model: nn.Module, example: Any, *, capture: str = "export",
                                          expect_backend: str = "export") -> OTO:
    """Build the OTO; for every valid set of GeZIGs zero it on a copy and compare the sub-network's outputs."""
    model = randomize_(model.eval())
    oto = _oto(model, example, capture=capture)
    assert oto.capture_backend == expect_backend
    n = len(oto.groups)
    args = example if isinstance(example, tuple) else (example,)
    for r in range(1, n + 1):
        for combo in itertools.combinations(range(n), r):
            if not oto.is_valid_indices(combo):
                continue
            copy_ = copy.deepcopy(model)
            other = _oto(copy_, example, capture=capture)
            zero_groups_([other.groups[i] for i in combo])
            subnet = other.construct_subnet()
            assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in copy_.parameters())
            generator = torch.Generator().manual_seed(7)
            for _ in range(2):
                fresh = tuple(torch.randn(a.shape, generator=generator) for a in args)
                with torch.no_grad():
                    ref, got = copy_(*fresh), subnet(*fresh)
                diff = relative_difference([ref] if isinstance(ref, torch.Tensor) else list(ref),
                                           [got] if isinstance(got, torch.Tensor) else list(got))
                assert diff <= 1e-5, (combo, diff)
    return oto


@pytest.mark.parametrize("cls", [ShapeChecked, Rearranged, Wrapper])
def test_auto_falls_back_to_export_for_models_fx_cannot_trace_with_the_right_gezigs_and_exact_subnets(cls):
    torch.manual_seed(0)
    oto = _assert_every_valid_zero_set_is_exact(cls(), _x(), capture="auto")
    prefix = "model." if cls is Wrapper else ""
    assert [g.name for g in oto.groups] == [f"{prefix}a.0+{prefix}a.1", f"{prefix}b.0+{prefix}b.1"]
    assert "torch.fx could not trace" in oto.space.captured.fallback_reason
    assert "Captured with torch.export" in oto.summary()


def test_fx_and_export_find_the_same_groups_on_a_traceable_model():
    torch.manual_seed(0)
    model = Branches().eval()
    by_fx, by_export = _oto(model, _x(), capture="fx"), _oto(model, _x(), capture="export")
    assert by_fx.capture_backend == "fx" and by_export.capture_backend == "export"
    for a, b in ((by_fx.groups, by_export.groups), (by_fx.complementary, by_export.complementary)):
        assert [g.name for g in a] == [g.name for g in b]
        assert [sorted(g.param_names()) for g in a] == [sorted(g.param_names()) for g in b]
    assert "Captured with torch.fx." in by_fx.summary()


def test_auto_uses_fx_when_it_can():
    oto = _oto(Branches(), _x())
    assert oto.capture_backend == "fx" and oto.space.captured.fallback_reason is None


def test_export_groups_hold_the_users_live_parameters_and_the_model_is_left_unchanged():
    torch.manual_seed(0)
    model = Branches()
    model.train()
    model.a[1].eval()  # a frozen-statistics BN inside a training model keeps its own flag
    flags = [m.training for m in model.modules()]
    before = {n: (id(t), t.clone()) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    oto = _oto(model, _x(), capture="export")
    assert [m.training for m in model.modules()] == flags
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hooks
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert before[name][0] == id(tensor) and torch.equal(before[name][1], tensor), name
    params = dict(model.named_parameters())
    for group in (*oto.groups, *oto.complementary):
        for s in group.slices:
            assert s.param is params[s.name]
    gm = oto.space.captured.gm
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target in params:
            assert gm.get_parameter(node.target) is params[node.target]
    assert not any(n.op == "call_module" for n in gm.graph.nodes), "export's guard module is removed"


class TwoInputs(nn.Module):
    """Positional pair in, tuple out."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = Branches(), Branches()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.left(x), self.right(y) + self.left(y)


class KeywordsToDict(nn.Module):
    """Keyword inputs in, a dict out."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Branches()

    def forward(self, pixels: torch.Tensor, scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.body(pixels)
        return {"logits": logits, "scaled": logits * scale}


def test_subnetworks_take_the_same_inputs_and_return_the_same_structure():
    torch.manual_seed(0)
    _assert_every_valid_zero_set_is_exact(TwoInputs(), (_x(), _x()))

    model = randomize_(KeywordsToDict().eval())
    example = {"pixels": _x(), "scale": torch.rand(2, 3)}
    oto = _oto(model, example, capture="export")
    zero_groups_(oto.groups[:1])
    subnet = oto.construct_subnet()
    with torch.no_grad():
        ref, got = model(**example), subnet(**example)
    assert isinstance(got, dict) and list(got) == list(ref)
    assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)


def test_export_subnetworks_take_other_batch_sizes_and_resolutions():
    torch.manual_seed(0)
    model = randomize_(Branches().eval())
    oto = _oto(model, _x(), capture="export")
    zero_groups_(oto.groups[:1])
    subnet = oto.construct_subnet()
    for x in (_x(batch=1), _x(batch=3, size=12)):
        with torch.no_grad():
            assert torch.allclose(model(x), subnet(x), atol=1e-6)
    report = oto.compression_report()  # counts MACs on one sample
    assert report["params_after"] < report["params_before"] and 0 < report["macs_after"] < report["macs_before"]


class InPlace(nn.Module):
    """In-place ops torch.export keeps: ReLU(inplace=True) and `+=` on fresh results, and one on a slice."""

    def __init__(self, on_a_view: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 2)
        self.on_a_view = on_a_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.stem(x))
        z = self.a(y)
        z += self.b(y)
        if self.on_a_view:
            z[:, :2].relu_()  # mutates z through a view: the graph must be functionalized
        return self.head(z.mean((2, 3)))


@pytest.mark.parametrize("on_a_view", [False, True])
def test_in_place_operations_become_functional_and_the_subnetwork_is_exact(on_a_view):
    torch.manual_seed(0)
    oto = _assert_every_valid_zero_set_is_exact(InPlace(on_a_view), _x(), capture="export")
    mutable = [n for n in oto.space.captured.gm.graph.nodes
               if isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable]
    assert not mutable
    assert len(oto.groups) == 2


def test_duplicate_merging_flops_and_pictures_work_on_export_graphs(tmp_path):
    torch.manual_seed(0)
    model = randomize_(Branches().eval())
    oto = _oto(model, _x(), capture="export")
    zero_groups_(oto.groups[:1])
    unmerged = oto.construct_subnet(merge_duplicates=False)
    merged = copy.deepcopy(unmerged)
    assert merge_duplicate_ops(merged) >= 0
    with torch.no_grad():
        assert torch.equal(merged(_x()), unmerged(_x()))
    subnet = oto.construct_subnet()
    files = oto.visualize(tmp_path, svg=False)
    assert {f.name for f in files} >= {"trace_graph.dot", "dependency_graph.dot", "subnet_graph.dot"}
    assert "conv2d" in (tmp_path / "trace_graph.dot").read_text()
    assert subnet is not None


def test_export_subnetwork_artefacts_reload(tmp_path):
    torch.manual_seed(0)
    model = randomize_(Branches().eval())
    oto = _oto(model, _x(), capture="export")
    zero_groups_(oto.groups[:1])
    subnet = oto.construct_subnet(tmp_path)
    state = torch.load(tmp_path / "state_dict.pt", weights_only=True)
    assert set(state) == set(subnet.state_dict())
    assert (tmp_path / "summary.json").exists()
    if (tmp_path / "subnet.py").exists():
        rebuilt = load_generated(tmp_path / "subnet.py").SubNet()
        rebuilt.load_state_dict(state)
        rebuilt.eval()
        x = _x(batch=3)
        with torch.no_grad():
            assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
    else:
        import json

        skipped = json.loads((tmp_path / "summary.json").read_text()).get("skipped", {})
        assert "source" in skipped and skipped["source"], "a missing subnet.py must come with a reason"


# --- failures -------------------------------------------------------------------------------------------------


def test_a_model_neither_backend_captures_gets_one_message_naming_both_the_module_and_what_to_try():
    with pytest.raises(CaptureError) as info:
        _oto(DataDependent(), _x())
    message = str(info.value)
    assert "torch.fx" in message and "torch.export" in message
    assert "'gate' (Gate)" in message
    assert "leaf_modules" in message and "otov3.register_op" in message


def test_export_failure_names_the_innermost_module():
    with pytest.raises(CaptureError, match=r"failed inside module 'gate' \(Gate\).*leaf_modules"):
        _oto(DataDependent(), _x(), capture="export")


def test_fx_failure_suggests_the_export_backend():
    with pytest.raises(CaptureError, match=r"torch\.fx capture failed.*capture='export'"):
        _oto(ShapeChecked(), _x(), capture="fx")


def test_an_unknown_capture_backend_is_refused_with_the_choices():
    with pytest.raises(CaptureError, match=r"capture must be one of 'auto', 'fx', 'export', got 'dynamo'"):
        _oto(Branches(), _x(), capture="dynamo")


class Bessel(Branches):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.special.bessel_j0(self.features(x)).mean((2, 3)))


def test_an_aten_op_missing_from_the_table_is_unknown_with_a_reason_that_names_it():
    oto = _oto(Bessel(), _x(), capture="export")
    unknown = [v for v in oto.space.trace.vertices.values() if v.traits.kind is VertexKind.UNKNOWN]
    assert len(unknown) == 1
    assert "special_bessel_j0" in unknown[0].traits.reason and "otov3.register_op" in unknown[0].traits.reason


def test_a_batch_one_dummy_still_gives_a_subnetwork_for_other_batch_sizes():
    torch.manual_seed(0)
    model = randomize_(Rearranged().eval())  # reshapes with sizes read from the input: static sizes would stick
    oto = _oto(model, _x(batch=1), capture="export")
    zero_groups_(oto.groups[:1])
    subnet = oto.construct_subnet()
    for x in (_x(batch=1), _x(batch=3), _x(batch=2, size=10)):
        with torch.no_grad():
            assert torch.allclose(model(x), subnet(x), atol=1e-6)
