"""Pruning mode side by side with the official only-train-once 3.0.1: node groups, channel groups, build time.

Both libraries run in one process, so this needs a side venv holding the official wheel next to otov3 (the
project's venv stays clean; the wheel declares graphviz and pydot too, which graph construction does not need):

    python3 -m venv /work/oto-official && /work/oto-official/bin/pip install torch==2.13.0 onnx packaging
    /work/oto-official/bin/pip install --no-deps only-train-once==3.0.1   # or the downloaded wheel's path
    /work/oto-official/bin/pip install --no-deps -e .
    /work/oto-official/bin/python benchmarks/official_comparison.py [MODEL ...] [--detail]

For each model (random init, seed 0; a dummy input of batch 1, the zoo's, unless `--batch`) the official
`OTO(copy, x)` (its pruning mode: ONNX-optimised TorchScript trace, pruning dependency graph, trainability) and
otov3's `OTO(copy, x, mode="prune")` each build on their own deep copy (the official library puts the model in
eval mode and keeps it), after one untimed forward pass (the first run of new conv shapes is slow). Build times are
the best of `--repeats` builds, one build when the first takes over 60 s. Counted on the official side: its
parameter groups (node groups holding trainable parameters) and, as its HESSO counts them, the prunable
non-auxiliary ones and their `num_groups` (ZIGs); on otov3's side: all node groups, the prunable ones and
`len(oto.groups)`. "identical" counts prunable node groups that both libraries form from exactly the same
parameters with the same number of groups; `--detail` lists the others on stderr, with otov3's reasons for the node
groups it keeps whole. A model the official library cannot build is reported as "fails: <reason>".

only-train-once 3.0.1 imports `torch.onnx._globals` and calls `torch.onnx._optimize_graph`, which torch 2.x moved
under `torch.onnx._internal.torchscript_exporter`; `_patch_torch_for_official` aliases them before the import
(the installed package is not edited). Importing it sets the TorchScript exporter's opset to 16 for the process.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import signal
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from otov3 import OTO
from otov3.zoo import create_supernet, get_supernet_spec

# ---------------------------------------------------------------------------------------------------- models


def _cbr(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), act())


def _head(c: int, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(c, classes)))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs and an identity or 1x1-conv shortcut, added."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetStyle(nn.Module):
    """A CIFAR ResNet-14: stem, three stages of two basic blocks (16, 32, 64 channels), pooled linear head."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = _cbr(3, widths[0])
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(c, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = _head(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class VGGStyle(nn.Module):
    """A small VGG: conv-BN-ReLU stacks and max-pools, a 2x2 adaptive pool, flatten, a three-layer MLP head."""

    def __init__(self, cfg: tuple = (16, 16, "M", 32, 32, "M", 64, 64, "M")) -> None:
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_cbr(c, v))
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * 4, 128), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(128, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class InceptionBlock(nn.Module):
    """GoogLeNet's block: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | maxpool-1x1, concatenated along channels."""

    def __init__(self, c_in: int, b1: int, b2: tuple[int, int], b3: tuple[int, int], b4: int) -> None:
        super().__init__()
        self.b1 = _cbr(c_in, b1, 1)
        self.b2 = nn.Sequential(_cbr(c_in, b2[0], 1), _cbr(b2[0], b2[1]))
        self.b3 = nn.Sequential(_cbr(c_in, b3[0], 1), _cbr(b3[0], b3[1]), _cbr(b3[1], b3[1]))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(c_in, b4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class InceptionStyle(nn.Module):
    """Stem, two Inception blocks with a max-pool between them, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 32), nn.MaxPool2d(2))
        self.block1 = InceptionBlock(32, 16, (16, 24), (8, 12), 12)  # 64 channels out
        self.pool = nn.MaxPool2d(2)
        self.block2 = InceptionBlock(64, 24, (24, 32), (12, 16), 16)  # 88 channels out
        self.head = _head(88)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.pool(self.block1(self.stem(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; added to the input when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.body = nn.Sequential(
            _cbr(c_in, hidden, 1, act=nn.ReLU6),
            _cbr(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetStyle(nn.Module):
    """MobileNetV2 in small: stem, a depthwise-separable block, five inverted residuals, 1x1 conv, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, 3, 2, act=nn.ReLU6)
        self.separable = nn.Sequential(_cbr(16, 16, 3, groups=16, act=nn.ReLU6), nn.Conv2d(16, 16, 1, bias=False),
                                       nn.BatchNorm2d(16))
        self.blocks = nn.Sequential(InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4),
                                    InvertedResidual(24, 32, 2, 4), InvertedResidual(32, 32, 1, 4),
                                    InvertedResidual(32, 64, 1, 4))
        self.last = _cbr(64, 128, 1, act=nn.ReLU6)
        self.head = _head(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.blocks(self.separable(self.stem(x)))))


def _zoo(name: str) -> tuple[Callable[[], nn.Module], tuple[int, ...]]:
    return (lambda: create_supernet(name)), get_supernet_spec(name).input_shape


MODELS: dict[str, Callable[[], tuple[Callable[[], nn.Module], tuple[int, ...]]]] = {
    "DemoSupNet": lambda: _zoo("demo_supnet"),
    "StackedUnets": lambda: _zoo("stacked_unets"),
    "SuperResNet": lambda: _zoo("super_resnet"),
    "DARTS-8": lambda: _zoo("darts8"),
    "ResNet-style (ResNet-14)": lambda: (ResNetStyle, (1, 3, 32, 32)),
    "VGG-style (MLP head)": lambda: (VGGStyle, (1, 3, 32, 32)),
    "Inception-style (concat)": lambda: (InceptionStyle, (1, 3, 32, 32)),
    "MobileNet-style (depthwise)": lambda: (MobileNetStyle, (1, 3, 32, 32)),
}

# ---------------------------------------------------------------------------------------------------- the libraries


def _patch_torch_for_official() -> None:
    """Alias the torch.onnx internals only-train-once 3.0.1 imports from their torch 1.x places (no file edited)."""
    import torch.onnx

    try:
        import torch.onnx._globals  # noqa: F401
    except ImportError:
        from torch.onnx._internal.torchscript_exporter import _globals

        sys.modules["torch.onnx._globals"] = _globals
        torch.onnx._globals = _globals
    if not hasattr(torch.onnx, "_optimize_graph"):
        from torch.onnx._internal.torchscript_exporter import utils

        torch.onnx._optimize_graph = utils._optimize_graph


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: int):
    def fire(signum, frame):
        raise _Timeout(f"no graph after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _reason(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:120].replace("|", "/")


def official_groups(factory, x: torch.Tensor, repeats: int, timeout: int) -> dict:
    """The official library's pruning-mode node groups: {param-name set: num_groups} and counts, or its failure."""
    from only_train_once import OTO as OfficialOTO

    def build():
        model = factory()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
            start = time.perf_counter()
            oto = OfficialOTO(model, x)
            return oto, time.perf_counter() - start

    try:
        with _deadline(timeout):
            (oto, _), seconds = _best_of(build, repeats)
    except Exception as err:  # noqa: BLE001 - every failure is a table entry
        return {"fails": _reason(err)}
    groups = list(oto._graph.get_param_groups())
    prunable = [g for g in groups if g["is_prunable"] and not g["is_auxiliary"]]
    return {
        "with_params": len(groups),
        "auxiliary": sum(1 for g in groups if g["is_auxiliary"]),
        "prunable": len(prunable),
        "zigs": sum(g["num_groups"] for g in prunable),
        "seconds": seconds,
        "sets": {frozenset(g["p_names"]): (g["num_groups"], str(g["id"])) for g in prunable},
    }


def _best_of(build: Callable[[], tuple[object, float]], repeats: int) -> tuple[tuple[object, float], float]:
    """The last build and the shortest time; `build` times itself, so copying the model stays off the clock."""
    result, best = None, float("inf")
    for i in range(repeats):
        result = build()
        best = min(best, result[1])
        if i == 0 and best > 60:
            break
    return result, best


def otov3_groups(factory, x: torch.Tensor, repeats: int) -> dict:
    def build():
        model = factory()
        start = time.perf_counter()
        oto = OTO(model, x, mode="prune")
        return oto, time.perf_counter() - start

    (oto, _), seconds = _best_of(build, repeats)
    prune = oto._prune
    members: dict[int, set[str]] = {}
    for g in oto.groups:
        members.setdefault(g.node_group, set()).update(s.name for s in g.slices)
    sizes = {g.id: g.num_groups for g in prune.node_groups}
    return {
        "node_groups": len(prune.node_groups),
        "prunable": sum(1 for g in prune.node_groups if g.prunable),
        "channel_groups": len(oto.groups),
        "seconds": seconds,
        "sets": {frozenset(names): (sizes[ng], prune.names[ng]) for ng, names in members.items()},
        "kept": {prune.names[g.id]: g.reason for g in prune.node_groups if not g.prunable},
    }


def compare(name: str, repeats: int, timeout: int, detail: bool, batch: int) -> str:
    make, shape = MODELS[name]()
    torch.manual_seed(0)
    original = make().eval()
    x = torch.randn(batch, *shape[1:])
    params = sum(p.numel() for p in original.parameters())
    with torch.no_grad():  # the first forward of new conv shapes is slow (20 s for DARTS-8): keep it off both clocks
        original(x)
    try:
        ours = otov3_groups(lambda: copy.deepcopy(original), x, repeats)
        mine = f"{ours['prunable']} / {ours['node_groups']} | {ours['channel_groups']:,} | {ours['seconds']:.2f}"
    except Exception as err:  # noqa: BLE001 - every failure is a table entry
        ours, mine = {"sets": {}, "kept": {}}, f"fails: {_reason(err)} | - | -"
    official = official_groups(lambda: copy.deepcopy(original), x, repeats, timeout)
    if "fails" in official:
        return f"| {name} | {params / 1e6:.3f} | fails: {official['fails']} | - | - | {mine} | - |"
    same = sum(1 for s, n in ours["sets"].items() if official["sets"].get(s, (None,))[0] == n[0])
    if detail:
        for s, (n, label) in sorted(official["sets"].items(), key=lambda kv: kv[1][1]):
            if ours["sets"].get(s, (None,))[0] != n:
                print(f"  {name}: official only: {label[:40]} {sorted(s)} x{n}", file=sys.stderr)
        for s, (n, label) in ours["sets"].items():
            if official["sets"].get(s, (None,))[0] != n:
                print(f"  {name}: otov3 only: {label} {sorted(s)} x{n}", file=sys.stderr)
        for label, reason in ours["kept"].items():
            print(f"  {name}: otov3 keeps {label[:80]}: {reason}", file=sys.stderr)
    aux = f" (+{official['auxiliary']} aux.)" if official["auxiliary"] else ""
    theirs = (f"{official['prunable']} / {official['with_params']}{aux} | {official['zigs']:,} | "
              f"{official['seconds']:.2f}")
    return f"| {name} | {params / 1e6:.3f} | {theirs} | {mine} | {same} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=3, help="builds per library and model; the best counts")
    parser.add_argument("--timeout", type=int, default=900, help="seconds the official build may take per model")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the dummy input (default 1, as the zoo's)")
    parser.add_argument("--detail", action="store_true", help="list the node groups that differ (stderr)")
    args = parser.parse_args()
    try:
        _patch_torch_for_official()
        import only_train_once  # noqa: F401
    except ImportError as err:
        sys.exit(f"official_comparison: cannot import only_train_once ({err}); build the side venv of the docstring")
    warnings.filterwarnings("ignore")
    names = args.models or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"official_comparison: unknown model(s) {unknown}; choose from {list(MODELS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dummy batch {args.batch}; "
          f"build times: best of {args.repeats}\n")
    print("| Model | Params (M) | official: prunable NGs / NGs with params | official ZIGs | official build (s) "
          "| otov3: prunable NGs / NGs | otov3 channel groups | otov3 build (s) | identical prunable NGs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        print(compare(name, args.repeats, args.timeout, args.detail, args.batch), flush=True)


if __name__ == "__main__":
    main()
