"""Random super-networks for property tests: small DAGs drawn from a recursive grammar (hypothesis).

Grammar (every map keeps the input's spatial size, so any earlier map can feed any branch):

    net    := stem block{1..3} head
    stem   := Conv(3 -> w)-BN-ReLU
    block  := chain | add | cat | gate | split | attn          (nesting depth <= 3)
    chain  := [MaxPool|AvgPool 3x3 s1 p1] unit{1..2}
    unit   := Conv(k=1|3)[-BN][-act]  |  [BN-]act-Conv      (post- or pre-activation)
    act    := nn.ReLU() | torch.relu | the one nn.LeakyReLU instance every block may reuse
    add    := sum of 2..4 branches of one width, optional identity skip, optional shared-weight twin branch
    branch := (block | glu | gmlp) [se] [layerscale] [drop] [sigmoid]
    glu    := g, v = Conv(2w).chunk|split(2, 1); v * sigmoid(g)
    gmlp   := down(silu(gate(x)) * up(x))                       (1x1 convs, no bias on down)
    se     := y * sigmoid(fc2(relu(fc1(avgpool(y)))))          (squeeze-and-excitation at the branch end)
    scale  := gamma * y                                         (LayerScale, gamma of shape (C, 1, 1))
    drop   := drop_path(y) | stochastic_depth(y) | Dropout(y)  (own timm-style function traced through, or the
              fx-wrapped torchvision stand-in of tests/blocks.py; identity in eval mode)
    cat    := torch.cat(dim=1) of 2..4 branches, optional identity operand, then optional channel shuffle, then
              optional BN or GroupNorm (whose groups mostly coincide with the branch boundaries), optional act
    gate   := y * sigmoid(Conv(y)[-BN])
    split  := a, b = x.chunk|split(2, 1); cat(block(a) | a, block(b)) [channel shuffle]
    attn   := tokens(x) (N, HW, C); 1..2 pre-LN sublayers t + f(LN(t)), f := dot-product attention of
              nn.Linear q/k/v/proj | nn.MultiheadAttention | Linear-GELU-Linear; back to (N, C, H, W)
    head   := AdaptiveAvgPool2d(1)-Flatten-Linear

A branch reads the block's input, or now and then any earlier map (shared inputs, long skips). The model
(tests/supernet_program.py) holds an `nn.ModuleDict`, an `nn.ParameterDict` of LayerScale factors and a plain-data
`program`; `forward` interprets the program with a Python loop over a static tuple, which torch.fx unrolls. Module
specs are drawn first and instantiated under a drawn seed, so an example is reproducible bit for bit (hypothesis can
replay and shrink it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import event
from hypothesis import strategies as st

from supernet_program import IN_CHANNELS, INPUT_SHAPE, Example, ModuleSpec, RandomSupernet, randomize_norms_

NUM_CLASSES = 3
KINDS = ("chain", "add", "cat", "gate", "split", "attn")
MAX_MODULES = 32  # budget: past it every block is a single conv, which keeps each example at a few ms
SHARED_ACT = "act"  # the one parameter-free module instance that several places call
NON_AFFINE_GROUPNORM = True  # GroupNorm(affine=False) after a concat, drawn 20 % of the time


@dataclass
class _Builder:
    """Draws one program. Values are indices into the interpreter's `env` list.

    `widths[i]` is the channel count of value i when it is an (N, C, H, W) map; None for tokens and tuples,
    which only their own block reads.
    """

    draw: Callable[[st.SearchStrategy[Any]], Any]
    specs: dict[str, ModuleSpec] = field(default_factory=dict)
    scales: dict[str, int] = field(default_factory=dict)
    program: list[tuple[Any, ...]] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=lambda: [IN_CHANNELS])
    producers: list[str | None] = field(default_factory=lambda: [None])
    joint_sigmoid_inputs: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)  # grammar features drawn, for coverage statistics

    # --- primitives -------------------------------------------------------------------------------------

    def note(self, feature: str) -> None:
        if feature not in self.features:
            self.features.append(feature)

    def chance(self, percent: int) -> bool:
        # Shrinks towards 0, i.e. towards "feature absent", so failing examples shrink to small programs.
        return self.draw(st.integers(0, 99)) >= 100 - percent

    def width(self) -> int:
        return self.draw(st.integers(2, 8))

    def emit(self, instr: tuple[Any, ...], width: int | None, producer: str | None = None) -> int:
        self.program.append(instr)
        self.widths.append(width)
        self.producers.append(producer)
        return len(self.widths) - 1

    def module(self, prefix: str, spec: ModuleSpec, src: int, width: int | None) -> int:
        name = f"{prefix}{len(self.specs)}"
        self.specs[name] = spec
        return self.emit(("module", name, src), width, name)

    def reuse(self, name: str, src: int) -> int:
        if name not in self.shared:
            self.shared.append(name)
        width = self.widths[src] if self.specs[name][0] != "conv" else self.specs[name][2]
        return self.emit(("module", name, src), width, name)

    def sigmoid(self, src: int) -> int:
        return self.emit(("sigmoid", src), self.widths[src])

    def relu(self, src: int) -> int:
        """nn.ReLU, torch.relu, or the one LeakyReLU instance shared by every block (parameter-free reuse)."""
        how = self.draw(st.integers(0, 9))
        if how >= 8:
            if SHARED_ACT not in self.specs:
                self.specs[SHARED_ACT] = ("lrelu",)
            else:
                self.note("reused parameter-free module")
            return self.emit(("module", SHARED_ACT, src), self.widths[src], SHARED_ACT)
        if how >= 4:
            return self.module("relu", ("relu",), src, self.widths[src])
        return self.emit(("relu", src), self.widths[src])

    def over_budget(self) -> bool:
        return len(self.specs) >= MAX_MODULES

    def source(self, default: int) -> int:
        """The block input, or now and then any earlier map (shared inputs across blocks)."""
        if len(self.widths) > 1 and self.chance(15):
            return self.draw(st.sampled_from([i for i, w in enumerate(self.widths) if w is not None]))
        return default

    def parts(self, total: int, n: int, unit: int = 1) -> list[int]:
        """`total` cut into `n` (or fewer) positive parts, each a multiple of `unit`."""
        units = total // unit
        n = min(n, units)
        cuts = sorted(self.draw(st.lists(st.integers(1, units - 1), min_size=n - 1, max_size=n - 1, unique=True)))
        return [unit * (b - a) for a, b in zip([0, *cuts], [*cuts, units], strict=True)]

    # --- grammar ----------------------------------------------------------------------------------------

    def unit(self, src: int, out_w: int) -> int:
        """Conv[-BN][-act] (post-activation) or [BN-]act-Conv (pre-activation)."""
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
        if kind in ("cat", "split") and out_w is not None and out_w < 2:
            kind = "chain"
        self.note(kind)
        if kind == "add":
            return self.add(src, depth, out_w)
        if kind == "cat":
            return self.cat(src, depth, out_w)
        if kind == "gate":
            return self.gate(src, out_w)
        if kind == "split":
            return self.split(src, depth, out_w)
        if kind == "attn":
            return self.attention(src, depth, out_w)
        return self.chain(src, out_w if out_w is not None else self.width())

    def branch(self, src: int, depth: int, out_w: int) -> int:
        """One operand of a residual sum: a block, a GLU or a gated MLP, then optional end pieces."""
        shape = 0 if self.over_budget() else self.draw(st.integers(0, 19))
        if shape >= 17:
            out = self.glu(src, out_w)
        elif shape >= 14:
            out = self.gated_mlp(src, out_w)
        else:
            out = self.block(src, depth - 1, out_w)
        ended = False
        if not self.over_budget() and self.chance(12):
            out, ended = self.squeeze_excite(out), True
            self.note("squeeze-excite")
        if self.chance(15):  # LayerScale: gamma read straight from a ParameterDict in forward
            self.note("layerscale")
            name = f"gamma{len(self.scales)}"
            self.scales[name] = out_w
            out, ended = self.emit(("scale", name, out, self.chance(70)), out_w), True
        how = next((h for h in ("drop_path", "stochastic_depth", "dropout") if self.chance(6)), None)
        if how is not None:
            p = self.draw(st.sampled_from((0.1, 0.25)))
            self.note(how)
            if how == "dropout":
                out = self.module("dropout", ("dropout", p), out, out_w)
            else:
                out = self.emit((how, out, p), out_w)
            ended = True
        if not ended and self.chance(15):
            out = self.joint_sigmoid(out)
        return out

    def joint_sigmoid(self, src: int) -> int:
        """A branch that ends in a sigmoid (recorded by producer, unless that module is called elsewhere too)."""
        if self.producers[src] not in (None, SHARED_ACT):
            self.joint_sigmoid_inputs.append(self.producers[src])
        return self.sigmoid(src)

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
                if all(instr[0] == "module" and instr[1] != SHARED_ACT for instr in self.program[start:]):
                    twin = (self.widths[bsrc], names)
                if self.chance(15):
                    out = self.joint_sigmoid(out)
            else:
                out = self.branch(bsrc, depth, out_w)
            operands.append(out)
        if twin is not None and self.chance(40):  # shared weights: the same chain modules on another input
            candidates = [i for i, w in enumerate(self.widths) if w == twin[0]]
            cur = self.draw(st.sampled_from(candidates))
            self.note("shared weights")
            for name in twin[1]:
                cur = self.reuse(name, cur)
            operands.append(cur)
        if self.widths[src] == out_w and self.chance(50):
            operands.insert(self.draw(st.integers(0, len(operands))), src)  # identity skip
        out = self.emit(("add", tuple(operands)), out_w)
        return self.relu(out) if self.chance(30) else out

    def cat(self, src: int, depth: int, out_w: int | None) -> int:
        n = self.draw(st.integers(2, 4))
        group = self.draw(st.sampled_from((1, 2, 3, 4))) if not self.over_budget() and self.chance(30) else 0
        aligned = group > 0 and not self.chance(20)  # GroupNorm groups on the branch boundaries, mostly
        unit = group if aligned and (out_w is None or (out_w % group == 0 and out_w >= 2 * group)) else 1
        if out_w is None:
            parts = [unit * self.draw(st.integers(max(1, 2 // unit), max(1, 8 // unit))) for _ in range(n)]
        else:
            parts = self.parts(out_w, n, unit)
        operands = [self.block(self.source(src), depth - 1, w) for w in parts]
        if out_w is None and self.chance(30):
            operands.insert(self.draw(st.integers(0, len(operands))), src)  # identity operand (DenseNet)
        return self.after_cat(self.emit(("cat", tuple(operands)), sum(self.widths[i] for i in operands)), group)

    def after_cat(self, out: int, group: int = 0) -> int:
        """Optional channel shuffle, then BN (DenseNet transition) or GroupNorm, then an activation."""
        w = self.widths[out]
        shuffles = [g for g in (2, 3, 4) if w % g == 0 and w > g]
        if shuffles and self.chance(20):
            out = self.emit(("shuffle", out, self.draw(st.sampled_from(shuffles))), w)
            self.note("channel shuffle")
        if group and w % group == 0 and not self.over_budget():
            self.note("groupnorm over cat")
            affine = not NON_AFFINE_GROUPNORM or self.chance(80)
            out = self.module("gn", ("gn", w // group, w, affine), out, w)
        elif not self.over_budget() and self.chance(40):
            out = self.module("bn", ("bn", w, True), out, w)
        return self.relu(out) if self.chance(30) else out

    def gate(self, src: int, out_w: int | None) -> int:
        y = src if out_w is None or out_w == self.widths[src] else self.unit(src, out_w)
        w = self.widths[y]
        g = self.module("conv", ("conv", w, w, 1, self.chance(50)), y, w)
        if self.chance(40):
            g = self.module("bn", ("bn", w, True), g, w)
        s = self.sigmoid(g)
        return self.emit(("mul", y, s) if self.chance(50) else ("mul", s, y), w)

    def squeeze_excite(self, y: int) -> int:
        """`y * sigmoid(fc2(relu(fc1(avgpool(y)))))`, the fcs as 1x1 convs (1x1 values: no other block reads them)."""
        w = self.widths[y]
        r = self.draw(st.integers(1, max(1, w // 2)))
        pooled = self.module("gap", ("gap",), y, None) if self.chance(60) else self.emit(("mean", y), None)
        h = self.relu(self.module("conv", ("conv", w, r, 1, True), pooled, None))
        s = self.sigmoid(self.module("conv", ("conv", r, w, 1, True), h, None))
        return self.emit(("mul", y, s) if self.chance(70) else ("mul", s, y), w)

    def glu(self, src: int, out_w: int) -> int:
        """`g, v = conv(x).chunk(2, 1); v * sigmoid(g)`."""
        self.note("glu")
        k = self.draw(st.sampled_from((1, 3)))
        both = self.module("conv", ("conv", self.widths[src], 2 * out_w, k, self.chance(50)), src, 2 * out_w)
        halves = self.emit(("chunk", both, 2) if self.chance(50) else ("split", both, (out_w, out_w)), None)
        g, v = self.emit(("item", halves, 0), out_w), self.emit(("item", halves, 1), out_w)
        s = self.sigmoid(g)
        return self.emit(("mul", v, s) if self.chance(50) else ("mul", s, v), out_w)

    def gated_mlp(self, src: int, out_w: int) -> int:
        """`down(silu(gate(x)) * up(x))` with 1x1 convs and no bias on down."""
        self.note("gated mlp")
        w, hidden = self.widths[src], self.width()
        gate = self.module("conv", ("conv", w, hidden, 1, self.chance(50)), src, hidden)
        gate = self.module("silu", ("silu",), gate, hidden) if self.chance(50) else self.emit(("silu", gate), hidden)
        up = self.module("conv", ("conv", w, hidden, 1, self.chance(50)), src, hidden)
        prod = self.emit(("mul", gate, up) if self.chance(50) else ("mul", up, gate), hidden)
        return self.module("conv", ("conv", hidden, out_w, 1, False), prod, out_w)

    def split(self, src: int, depth: int, out_w: int | None) -> int:
        """`a, b = x.chunk|split(2, 1)`, each half through its own block (or one kept as is), then cat."""
        w = self.widths[src]
        if w < 2:
            src = self.unit(src, self.width())
            w = self.widths[src]
        if w % 2 == 0 and self.chance(50):
            sizes = (w // 2, w // 2)
            halves = self.emit(("chunk", src, 2), None)
        else:
            first = self.draw(st.integers(1, w - 1))
            sizes = (first, w - first)
            halves = self.emit(("split", src, sizes), None)
        items = [self.emit(("item", halves, i), sizes[i]) for i in range(2)]
        keep = self.draw(st.sampled_from((0, 1))) if self.chance(30) else None  # ShuffleNet keeps one half
        if out_w is not None and keep is not None and out_w - sizes[keep] < 1:
            keep = None
        if out_w is None:
            targets = [sizes[i] if i == keep or self.chance(50) else self.width() for i in range(2)]
        elif keep is not None:
            targets = [sizes[keep] if i == keep else out_w - sizes[keep] for i in range(2)]
        else:
            targets = self.parts(out_w, 2)
        outs = [items[i] if i == keep else self.block(items[i], depth - 1, targets[i]) for i in range(2)]
        return self.after_cat(self.emit(("cat", tuple(outs)), sum(targets)))

    def attention(self, src: int, depth: int, out_w: int | None) -> int:
        """Token attention over the flattened map: pre-LN sublayers `t + f(LN(t))`, then back to a map."""
        if out_w is not None and out_w != self.widths[src]:
            src = self.unit(src, out_w)
        c = self.widths[src]
        t = self.emit(("tokens", src), None)
        for _ in range(self.draw(st.integers(1, 2))):
            h = self.module("ln", ("ln", c, self.chance(85)), t, None)
            kind = self.draw(st.sampled_from(("dot", "mha", "mlp")))
            self.note(f"attn {kind}")
            if kind == "mha":
                heads = self.draw(st.sampled_from([n for n in (1, 2) if c % n == 0]))
                o = self.emit(("mha", self.add_spec("mha", ("mha", c, heads, self.chance(80))), h), None)
            elif kind == "mlp":
                hidden = self.width()
                o = self.module("linear", ("linear", c, hidden, self.chance(70)), h, None)
                o = self.module("gelu", ("gelu",), o, None)
                o = self.module("linear", ("linear", hidden, c, self.chance(70)), o, None)
            else:
                d, dv = self.width(), self.width()
                q = self.module("linear", ("linear", c, d, self.chance(50)), h, None)
                k = self.module("linear", ("linear", c, d, self.chance(50)), h, None)
                v = self.module("linear", ("linear", c, dv, self.chance(50)), h, None)
                scores = self.emit(("matmul", q, self.emit(("transpose", k), None)), None)
                att = self.emit(("softmax", self.emit(("div", scores, math.sqrt(d)), None)), None)
                o = self.module("linear", ("linear", dv, c, self.chance(70)), self.emit(("matmul", att, v), None),
                                None)
            t = self.emit(("add", (t, o)), None)
        return self.emit(("untokens", t, c), c)

    def add_spec(self, prefix: str, spec: ModuleSpec) -> str:
        name = f"{prefix}{len(self.specs)}"
        self.specs[name] = spec
        return name

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


@st.composite
def random_supernets(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Example:
    """A random super-network (train mode) and an example input of shape `INPUT_SHAPE`, as an `Example`.

    Unpack it as ``model, x = example``. Parameters and input come from a drawn seed (``model.seed``).
    """
    builder = _Builder(draw)
    builder.network()
    for feature in builder.features:  # coverage, shown by pytest --hypothesis-show-statistics
        event(feature)
    seed = draw(st.integers(0, 2**16))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RandomSupernet(
            builder.specs,
            tuple(builder.program),
            scales=builder.scales,
            joint_sigmoid_inputs=tuple(dict.fromkeys(builder.joint_sigmoid_inputs)),
            shared=tuple(builder.shared),
            features=tuple(builder.features),
        )
        randomize_norms_(model)
        x = torch.randn(INPUT_SHAPE)
    model.seed = seed
    return Example(model, x)
