"""Search spaces of real torchvision models: GeZIG count, build time, and exactness of random valid removals.

torchvision cannot be installed beside the pinned torch, so this runs in the side venv (torch 2.14.1 +
torchvision), built by `../shared/tools/side-venv /work/side-venv`:

    /work/side-venv/bin/python benchmarks/torchvision_models.py [MODEL ...]

For each model (random init, eval mode, batch 2): `OTO(model, x)` time, the number of GeZIGs and of kept groups,
the capture backend, ops missing from the op table, then `--trials` random valid zero sets (chosen greedily in a
random order, as H2SPG's search does), each built with `construct_subnet` (which verifies the outputs at 1e-5)
and reported with its parameter ratio. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
import warnings

import torch

from otov3 import OTO


def _models() -> dict[str, tuple[object, int]]:
    import torchvision.models as tvm

    return {
        "resnet18": (tvm.resnet18, 64),
        "regnet_y_400mf": (tvm.regnet_y_400mf, 64),
        "mobilenet_v3_small": (tvm.mobilenet_v3_small, 64),
        "mnasnet0_5": (tvm.mnasnet0_5, 64),
        "efficientnet_b0": (tvm.efficientnet_b0, 64),
        "convnext_tiny": (tvm.convnext_tiny, 64),
        "shufflenet_v2_x0_5": (tvm.shufflenet_v2_x0_5, 64),
        "densenet121": (tvm.densenet121, 64),
        "googlenet": (lambda: tvm.googlenet(aux_logits=False, init_weights=True), 64),
        "vit (2 layers, width 64)": (lambda: tvm.VisionTransformer(224, 16, 2, 2, 64, 128), 224),
        "swin_t": (tvm.swin_t, 224),
    }


def _zero(oto: OTO, indices: list[int]) -> None:
    with torch.no_grad():
        for i in indices:
            for s in oto.groups[i].slices:
                s.view().zero_()
            for b in oto.groups[i].reset_buffers:
                b.zero_()


def run(name: str, factory, resolution: int, trials: int) -> str:
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, 3, resolution, resolution)
    start = time.perf_counter()
    oto = OTO(model, x)
    seconds = time.perf_counter() - start
    unknown = sorted({v.op for v in oto.space.trace.vertices.values() if v.traits.kind.value == "unknown"})
    rng = random.Random(0)
    exact, ratios = 0, []
    for _ in range(trials):
        order = list(range(len(oto.groups)))
        rng.shuffle(order)
        size, chosen = rng.randint(1, max(1, len(order) // 2)), []
        for i in order:
            if len(chosen) == size:
                break
            if oto.is_valid_indices([*chosen, i]):
                chosen.append(i)
        copy_ = copy.deepcopy(model)
        other = OTO(copy_, x)
        _zero(other, chosen)
        subnet = other.construct_subnet()  # raises unless the outputs match at 1e-5 relative
        exact += 1
        ratios.append(sum(p.numel() for p in subnet.parameters()) / sum(p.numel() for p in copy_.parameters()))
    spread = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "-"
    return (f"| {name} | {len(oto.groups)} | {len(oto.complementary)} | {oto.capture_backend} | {seconds:.2f} | "
            f"{', '.join(unknown) or '-'} | {exact}/{trials} | {spread} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    models = _models()
    print(f"torch {torch.__version__}; random init, eval mode, batch 2, 1 thread\n")
    print("| model | GeZIGs | kept groups | backend | OTO(...) s | unknown ops | exact removals | params after |")
    print("|---|---:|---:|---|---:|---|---:|---|")
    for name in args.models or models:
        factory, resolution = models[name]
        print(run(name, factory, resolution, args.trials), flush=True)


if __name__ == "__main__":
    main()
