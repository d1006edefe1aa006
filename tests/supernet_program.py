"""The interpreter behind the random super-networks of tests/supernets.py: a module that runs a plain-data program.

The program and the module specs are drawn by the grammar in tests/supernets.py; this file only knows how to build
the modules, run the program (a Python loop over a static tuple, which torch.fx unrolls) and print it readably.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from blocks import channel_shuffle, drop_path, stochastic_depth  # the replicas: timm, torchvision

IN_CHANNELS = 3
INPUT_SHAPE = (2, IN_CHANNELS, 8, 8)

ModuleSpec = tuple[Any, ...]  # ("conv", c_in, c_out, k, bias) | ("bn", c, affine) | ("relu",) | ...

torch.fx.wrap("stochastic_depth")  # torchvision's fx-wrapped function (its qualified name is in otov3's table)


def _instantiate(spec: ModuleSpec) -> nn.Module:
    kind = spec[0]
    if kind == "conv":
        _, c_in, c_out, k, bias = spec
        return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
    if kind == "bn":
        _, c, affine = spec
        return nn.BatchNorm2d(c, affine=affine)
    if kind == "gn":
        _, groups, c, affine = spec
        return nn.GroupNorm(groups, c, affine=affine)
    if kind == "ln":
        _, c, affine = spec
        return nn.LayerNorm(c, elementwise_affine=affine)
    if kind == "linear":
        _, c_in, c_out, *bias = spec
        return nn.Linear(c_in, c_out, bias=bias[0] if bias else True)
    if kind == "mha":
        _, c, heads, bias = spec
        return nn.MultiheadAttention(c, heads, bias=bias, batch_first=True)
    simple = {
        "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.1), "silu": nn.SiLU, "gelu": nn.GELU,
        "maxpool": lambda: nn.MaxPool2d(3, stride=1, padding=1),
        "avgpool": lambda: nn.AvgPool2d(3, stride=1, padding=1),
        "gap": lambda: nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten, "dropout": lambda: nn.Dropout(spec[1]),
    }
    if kind in simple:
        return simple[kind]()
    raise ValueError(f"unknown module spec {spec!r}")


def randomize_norms_(model: nn.Module) -> None:
    """Non-trivial norm affine parameters and BN running statistics, so eval-mode checks mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm):
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        for gamma in model.scales.values():
            gamma.uniform_(0.5, 1.5)


class RandomSupernet(nn.Module):
    """A super-network that runs a static `program` over the modules in `ops` and the factors in `scales`.

    Program instructions (each appends one value; value 0 is the input, the last value is the output):
        ("module", name, src), ("mha", name, src) (self-attention, output only),
        ("sigmoid" | "relu" | "silu" | "softmax" | "mean" | "tokens" | "transpose", src),
        ("add" | "cat", srcs), ("mul" | "matmul", a, b), ("scale", param, src, gamma_first),
        ("drop_path" | "stochastic_depth", src, p), ("div", src, constant),
        ("chunk", src, parts), ("split", src, sizes), ("item", src, i),
        ("shuffle", src, groups), ("untokens", src, channels).

    Attributes:
        program: the wiring, plain data.
        joint_sigmoid_inputs: module names whose output goes through a sigmoid straight into a joint (a branch
            that ends in a sigmoid: never removable).
        shared: module names with parameters applied more than once (shared weights).
        features: grammar features the example draws (``"glu"``, ``"layerscale"``...), set by the strategy.
    """

    def __init__(
        self,
        specs: dict[str, ModuleSpec],
        program: tuple[tuple[Any, ...], ...],
        *,
        scales: dict[str, int] | None = None,
        joint_sigmoid_inputs: tuple[str, ...] = (),
        shared: tuple[str, ...] = (),
        features: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleDict({name: _instantiate(spec) for name, spec in specs.items()})
        self.scales = nn.ParameterDict({name: nn.Parameter(torch.ones(c, 1, 1)) for name, c in (scales or {}).items()})
        self.specs = dict(specs)
        self.program = program
        self.joint_sigmoid_inputs = joint_sigmoid_inputs
        self.shared = shared
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: list[Any] = [x]
        for instr in self.program:
            op, a = instr[0], instr[1]
            if op == "module":
                y = self.ops[a](env[instr[2]])
            elif op == "mha":
                h = env[instr[2]]
                y = self.ops[a](h, h, h, need_weights=False)[0]
            elif op == "sigmoid":
                y = torch.sigmoid(env[a])
            elif op == "relu":
                y = torch.relu(env[a])
            elif op == "silu":
                y = F.silu(env[a])
            elif op == "softmax":
                y = env[a].softmax(dim=-1)
            elif op == "mean":
                y = env[a].mean((2, 3), keepdim=True)
            elif op == "add":
                y = env[a[0]]
                for i in a[1:]:
                    y = y + env[i]
            elif op == "cat":
                y = torch.cat([env[i] for i in a], dim=1)
            elif op == "mul":
                y = env[a] * env[instr[2]]
            elif op == "matmul":
                y = env[a] @ env[instr[2]]
            elif op == "div":
                y = env[a] / instr[2]
            elif op == "scale":
                gamma = self.scales[a]
                y = gamma * env[instr[2]] if instr[3] else env[instr[2]] * gamma
            elif op == "drop_path":
                y = drop_path(env[a], instr[2], self.training)
            elif op == "stochastic_depth":
                y = stochastic_depth(env[a], instr[2], "row", self.training)
            elif op == "chunk":
                y = env[a].chunk(instr[2], 1)
            elif op == "split":
                y = env[a].split(list(instr[2]), 1)
            elif op == "item":
                y = env[a][instr[2]]
            elif op == "shuffle":
                y = channel_shuffle(env[a], instr[2])
            elif op == "tokens":
                y = env[a].flatten(2).transpose(1, 2)
            elif op == "transpose":
                y = env[a].transpose(1, 2)
            elif op == "untokens":
                y = env[a].transpose(1, 2).reshape(-1, instr[2], *INPUT_SHAPE[2:])
            else:
                raise ValueError(f"unknown instruction {instr!r}")
            env.append(y)
        return env[-1]

    def describe(self) -> str:
        """The program as readable assignments, e.g. ``v3 = conv2(v1)  # ('conv', 4, 6, 3, True)``."""
        return "\n".join(f"v{i} = {_describe(self, instr)}" for i, instr in enumerate(self.program, start=1))

    def __repr__(self) -> str:
        body = "\n  ".join(self.describe().splitlines())
        return f"RandomSupernet(seed={getattr(self, 'seed', None)},\n  {body}\n)"


def _describe(model: RandomSupernet, instr: tuple[Any, ...]) -> str:
    op, a = instr[0], instr[1]
    if op == "module":
        return f"{a}(v{instr[2]})  # {model.specs[a]}"
    if op == "mha":
        return f"{a}(v{instr[2]}, v{instr[2]}, v{instr[2]})[0]  # {model.specs[a]}"
    if op in ("add", "cat"):
        return f"{op}({', '.join(f'v{j}' for j in a)})"
    if op == "mul":
        return f"v{a} * v{instr[2]}"
    if op == "matmul":
        return f"v{a} @ v{instr[2]}"
    if op == "div":
        return f"v{a} / {instr[2]:.4g}"
    if op == "scale":
        c = model.scales[a].shape[0]
        return f"{a} * v{instr[2]}  # gamma ({c}, 1, 1)" if instr[3] else f"v{instr[2]} * {a}  # gamma ({c}, 1, 1)"
    if op in ("drop_path", "stochastic_depth"):
        return f"{op}(v{a}, p={instr[2]}, training)"
    if op in ("chunk", "split"):
        return f"v{a}.{op}({instr[2]}, dim=1)"
    if op == "item":
        return f"v{a}[{instr[2]}]"
    if op == "shuffle":
        return f"channel_shuffle(v{a}, groups={instr[2]})"
    if op == "tokens":
        return f"v{a}.flatten(2).transpose(1, 2)"
    if op == "untokens":
        return f"v{a}.transpose(1, 2).reshape(-1, {instr[2]}, {INPUT_SHAPE[2]}, {INPUT_SHAPE[3]})"
    if op == "mean":
        return f"v{a}.mean((2, 3), keepdim=True)"
    return f"{op}(v{a})"  # sigmoid, relu, silu, softmax, transpose


class Example(NamedTuple):
    """`(model, example_input)`; the repr shows the program, not the tensor (for hypothesis' failure reports)."""

    model: RandomSupernet
    example_input: torch.Tensor

    def __repr__(self) -> str:
        return f"Example(model={self.model!r}, example_input=<randn{tuple(self.example_input.shape)}>)"
