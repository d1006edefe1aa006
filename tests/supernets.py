"""Random super-networks for property tests: small DAGs drawn from a recursive grammar (hypothesis).

Grammar (every tensor keeps the input's spatial size, so any earlier value can feed any branch):

    net    := stem block{1..3} head
    stem   := Conv(3 -> w)-BN-ReLU
    block  := chain | add | cat | gate          (nesting depth <= 3)
    chain  := [MaxPool|AvgPool 3x3 s1 p1] unit{1..2}
    unit   := Conv(k=1|3)[-BN][-ReLU]  |  [BN-]ReLU-Conv      (post- or pre-activation)
    add    := sum of 2..4 branches of one width, optional identity skip, optional shared-weight twin branch,
              some branches ending in sigmoid
    cat    := torch.cat(dim=1) of 2..4 branches of random widths, optional identity operand, optional BN after
    gate   := y * sigmoid(Conv(y)[-BN])
    head   := AdaptiveAvgPool2d(1)-Flatten-Linear

A branch reads the block's input, or now and then any earlier value (shared inputs, long skips). The model holds
an `nn.ModuleDict` and a plain-data `program`; `forward` interprets the program with a Python loop over a static
tuple, which torch.fx unrolls. Module specs are drawn first and instantiated under a drawn seed, so an example is
reproducible bit for bit (hypothesis can replay and shrink it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from hypothesis import strategies as st
from torch import nn

IN_CHANNELS = 3
INPUT_SHAPE = (2, IN_CHANNELS, 8, 8)
NUM_CLASSES = 3
KINDS = ("chain", "add", "cat", "gate")
MAX_MODULES = 32  # budget: past it every block is a single conv, which keeps each example at a few ms

ModuleSpec = tuple[Any, ...]  # ("conv", c_in, c_out, k, bias) | ("bn", c, affine) | ("relu",) | ...


def _instantiate(spec: ModuleSpec) -> nn.Module:
    kind = spec[0]
    if kind == "conv":
        _, c_in, c_out, k, bias = spec
        return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
    if kind == "bn":
        _, c, affine = spec
        return nn.BatchNorm2d(c, affine=affine)
    if kind == "relu":
        return nn.ReLU()
    if kind == "maxpool":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if kind == "avgpool":
        return nn.AvgPool2d(3, stride=1, padding=1)
    if kind == "gap":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "flatten":
        return nn.Flatten()
    if kind == "linear":
        _, c_in, c_out = spec
        return nn.Linear(c_in, c_out)
    raise ValueError(f"unknown module spec {spec!r}")


def _randomize_norms_(model: nn.Module) -> None:
    """Non-trivial BN affine parameters and running statistics, so eval-mode checks mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)


class RandomSupernet(nn.Module):
    """A super-network that runs a static `program` over the modules in `ops`.

    Program instructions (each appends one value; value 0 is the input, the last value is the output):
        ("module", name, src), ("sigmoid", src), ("relu", src), ("add", srcs), ("cat", srcs), ("mul", a, b).

    Attributes:
        program: the wiring, plain data.
        sigmoid_inputs: module names whose output goes straight into a sigmoid (a branch end or a gate).
        mul_inputs: module names whose output goes straight into an activation-by-activation Mul.
        shared: module names applied more than once (shared weights).
    """

    def __init__(
        self,
        specs: dict[str, ModuleSpec],
        program: tuple[tuple[Any, ...], ...],
        *,
        sigmoid_inputs: tuple[str, ...] = (),
        mul_inputs: tuple[str, ...] = (),
        shared: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleDict({name: _instantiate(spec) for name, spec in specs.items()})
        self.specs = dict(specs)
        self.program = program
        self.sigmoid_inputs = sigmoid_inputs
        self.mul_inputs = mul_inputs
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = [x]
        for instr in self.program:
            op = instr[0]
            if op == "module":
                env.append(self.ops[instr[1]](env[instr[2]]))
            elif op == "sigmoid":
                env.append(torch.sigmoid(env[instr[1]]))
            elif op == "relu":
                env.append(torch.relu(env[instr[1]]))
            elif op == "add":
                y = env[instr[1][0]]
                for i in instr[1][1:]:
                    y = y + env[i]
                env.append(y)
            elif op == "cat":
                env.append(torch.cat([env[i] for i in instr[1]], dim=1))
            elif op == "mul":
                env.append(env[instr[1]] * env[instr[2]])
        return env[-1]

    def describe(self) -> str:
        """The program as readable assignments, e.g. ``v3 = conv2(v1)  # ('conv', 4, 6, 3, True)``."""
        lines = []
        for i, instr in enumerate(self.program, start=1):
            op = instr[0]
            if op == "module":
                lines.append(f"v{i} = {instr[1]}(v{instr[2]})  # {self.specs[instr[1]]}")
            elif op in ("sigmoid", "relu"):
                lines.append(f"v{i} = {op}(v{instr[1]})")
            elif op in ("add", "cat"):
                lines.append(f"v{i} = {op}({', '.join(f'v{j}' for j in instr[1])})")
            else:
                lines.append(f"v{i} = v{instr[1]} * v{instr[2]}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        body = "\n  ".join(self.describe().splitlines())
        return f"RandomSupernet(seed={getattr(self, 'seed', None)},\n  {body}\n)"


@dataclass
class _Builder:
    """Draws one program. Values are indices into the interpreter's `env` list."""

    draw: Callable[[st.SearchStrategy[Any]], Any]
    specs: dict[str, ModuleSpec] = field(default_factory=dict)
    program: list[tuple[Any, ...]] = field(default_factory=list)
    widths: list[int] = field(default_factory=lambda: [IN_CHANNELS])
    producers: list[str | None] = field(default_factory=lambda: [None])
    sigmoid_inputs: list[str] = field(default_factory=list)
    mul_inputs: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)

    # --- primitives -------------------------------------------------------------------------------------

    def chance(self, percent: int) -> bool:
        # Shrinks towards 0, i.e. towards "feature absent", so failing examples shrink to small programs.
        return self.draw(st.integers(0, 99)) >= 100 - percent

    def width(self) -> int:
        return self.draw(st.integers(2, 8))

    def emit(self, instr: tuple[Any, ...], width: int, producer: str | None = None) -> int:
        self.program.append(instr)
        self.widths.append(width)
        self.producers.append(producer)
        return len(self.widths) - 1

    def module(self, prefix: str, spec: ModuleSpec, src: int, width: int) -> int:
        name = f"{prefix}{len(self.specs)}"
        self.specs[name] = spec
        return self.emit(("module", name, src), width, name)

    def reuse(self, name: str, src: int) -> int:
        if name not in self.shared:
            self.shared.append(name)
        width = self.widths[src] if self.specs[name][0] != "conv" else self.specs[name][2]
        return self.emit(("module", name, src), width, name)

    def sigmoid(self, src: int) -> int:
        if self.producers[src] is not None:
            self.sigmoid_inputs.append(self.producers[src])
        return self.emit(("sigmoid", src), self.widths[src])

    def relu(self, src: int) -> int:
        if self.chance(50):
            return self.module("relu", ("relu",), src, self.widths[src])
        return self.emit(("relu", src), self.widths[src])

    def over_budget(self) -> bool:
        return len(self.specs) >= MAX_MODULES

    def source(self, default: int) -> int:
        """The block input, or now and then any earlier value (shared inputs across blocks)."""
        if len(self.widths) > 1 and self.chance(15):
            return self.draw(st.integers(0, len(self.widths) - 1))
        return default

    # --- grammar ----------------------------------------------------------------------------------------

    def unit(self, src: int, out_w: int) -> int:
        """Conv[-BN][-ReLU] (post-activation) or [BN-]ReLU-Conv (pre-activation)."""
        k = self.draw(st.sampled_from((1, 3)))
        bias = self.chance(50)
        if not self.over_budget() and self.chance(25):
            cur = src
            if self.chance(70):
                cur = self.module("bn", ("bn", self.widths[cur], self.chance(85)), cur, self.widths[cur])
            cur = self.relu(cur)
            return self.module("conv", ("conv", self.widths[cur], out_w, k, bias), cur, out_w)
        cur = self.module("conv", ("conv", self.widths[src], out_w, k, bias), src, out_w)
        if not self.over_budget() and self.chance(75):
            cur = self.module("bn", ("bn", out_w, self.chance(85)), cur, out_w)
        if not self.over_budget() and self.chance(75):
            cur = self.relu(cur)
        return cur

    def chain(self, src: int, out_w: int) -> int:
        cur = src
        if not self.over_budget() and self.chance(25):
            kind = self.draw(st.sampled_from(("maxpool", "avgpool")))
            cur = self.module(kind, (kind,), cur, self.widths[cur])
        n = 1 if self.over_budget() else self.draw(st.integers(1, 2))
        for i in range(n):
            cur = self.unit(cur, out_w if i == n - 1 else self.width())
        return cur

    def block(self, src: int, depth: int, out_w: int | None = None, *, kinds: tuple[str, ...] = KINDS) -> int:
        kind = "chain" if depth <= 0 or self.over_budget() else self.draw(st.sampled_from(kinds))
        if kind == "cat" and out_w is not None and out_w < 2:
            kind = "chain"
        if kind == "add":
            return self.add(src, depth, out_w)
        if kind == "cat":
            return self.cat(src, depth, out_w)
        if kind == "gate":
            return self.gate(src, out_w)
        return self.chain(src, out_w if out_w is not None else self.width())

    def add(self, src: int, depth: int, out_w: int | None) -> int:
        if out_w is None:
            out_w = self.widths[src] if self.chance(40) else self.width()
        operands = []
        twin: tuple[int, list[str]] | None = None  # (input width, module names) of a plain chain branch
        for _ in range(self.draw(st.integers(2, 4))):
            bsrc = self.source(src)
            if twin is None and not self.over_budget() and self.chance(30):
                start = len(self.program)
                out = self.chain(bsrc, out_w)
                names = [instr[1] for instr in self.program[start:]]
                if all(instr[0] == "module" for instr in self.program[start:]):
                    twin = (self.widths[bsrc], names)
            else:
                out = self.block(bsrc, depth - 1, out_w)
            if self.chance(15):
                out = self.sigmoid(out)
            operands.append(out)
        if twin is not None and self.chance(40):  # shared weights: the same chain modules on another input
            candidates = [i for i, w in enumerate(self.widths) if w == twin[0]]
            cur = self.draw(st.sampled_from(candidates))
            for name in twin[1]:
                cur = self.reuse(name, cur)
            operands.append(cur)
        if self.widths[src] == out_w and self.chance(50):
            operands.insert(self.draw(st.integers(0, len(operands))), src)  # identity skip
        out = self.emit(("add", tuple(operands)), out_w)
        return self.relu(out) if self.chance(30) else out

    def cat(self, src: int, depth: int, out_w: int | None) -> int:
        n = self.draw(st.integers(2, 4))
        if out_w is None:
            parts = [self.width() for _ in range(n)]
        else:
            n = min(n, out_w)
            cuts = sorted(self.draw(st.lists(st.integers(1, out_w - 1), min_size=n - 1, max_size=n - 1,
                                             unique=True)))
            parts = [b - a for a, b in zip([0, *cuts], [*cuts, out_w], strict=True)]
        operands = [self.block(self.source(src), depth - 1, w) for w in parts]
        if out_w is None and self.chance(30):
            operands.insert(self.draw(st.integers(0, len(operands))), src)  # identity operand (DenseNet)
        out = self.emit(("cat", tuple(operands)), sum(self.widths[i] for i in operands))
        if not self.over_budget() and self.chance(40):  # DenseNet transition: Concat -> BN -> ReLU -> (conv)
            out = self.module("bn", ("bn", self.widths[out], True), out, self.widths[out])
        return self.relu(out) if self.chance(30) else out

    def gate(self, src: int, out_w: int | None) -> int:
        y = src if out_w is None or out_w == self.widths[src] else self.unit(src, out_w)
        w = self.widths[y]
        g = self.module("conv", ("conv", w, w, 1, self.chance(50)), y, w)
        if self.chance(40):
            g = self.module("bn", ("bn", w, True), g, w)
        s = self.sigmoid(g)
        if self.producers[y] is not None:
            self.mul_inputs.append(self.producers[y])
        return self.emit(("mul", y, s) if self.chance(50) else ("mul", s, y), w)

    def network(self) -> None:
        w = self.width()
        cur = self.module("conv", ("conv", IN_CHANNELS, w, 3, self.chance(50)), 0, w)
        cur = self.module("bn", ("bn", w, True), cur, w)
        cur = self.relu(cur)
        cur = self.block(cur, self.draw(st.integers(1, 3)), kinds=("add", "cat"))  # at least one joint
        for _ in range(self.draw(st.integers(0, 2))):
            cur = self.block(cur, self.draw(st.integers(1, 3)))
        w = self.widths[cur]
        cur = self.module("gap", ("gap",), cur, w)
        cur = self.module("flatten", ("flatten",), cur, w)
        self.module("fc", ("linear", w, NUM_CLASSES), cur, NUM_CLASSES)


class Example(NamedTuple):
    """`(model, example_input)`; the repr shows the program, not the tensor (for hypothesis' failure reports)."""

    model: RandomSupernet
    example_input: torch.Tensor

    def __repr__(self) -> str:
        return f"Example(model={self.model!r}, example_input=<randn{tuple(self.example_input.shape)}>)"


@st.composite
def random_supernets(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Example:
    """A random super-network (train mode) and an example input of shape `INPUT_SHAPE`, as an `Example`.

    Unpack it as ``model, x = example``. Parameters and input come from a drawn seed (``model.seed``).
    """
    builder = _Builder(draw)
    builder.network()
    seed = draw(st.integers(0, 2**16))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RandomSupernet(
            builder.specs,
            tuple(builder.program),
            sigmoid_inputs=tuple(dict.fromkeys(builder.sigmoid_inputs)),
            mul_inputs=tuple(dict.fromkeys(builder.mul_inputs)),
            shared=tuple(builder.shared),
        )
        _randomize_norms_(model)
        x = torch.randn(INPUT_SHAPE)
    model.seed = seed
    return Example(model, x)
