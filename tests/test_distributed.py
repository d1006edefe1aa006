"""H2SPG under DistributedDataParallel (2 CPU processes, gloo): ranks stay identical and reach the same zeros."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from otov3 import OTO
from otov3.zoo import DemoSupNet

WORLD, WARMUP, HYBRID, STEPS = 2, 4, 8, 14

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # same initial weights on every rank
        model = DemoSupNet(width=0.125)
        ddp = DistributedDataParallel(model)
        oto = OTO(ddp, torch.zeros(1, 1, 28, 28))  # the wrapper is looked through
        opt = oto.h2spg(lr=0.05, momentum=0.9, target_group_sparsity=3, warmup_steps=WARMUP, hybrid_steps=HYBRID)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank sees its own data
        for _ in range(STEPS):
            x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        result = {
            "group_names": [g.name for g in oto.groups],
            "redundant": [g.name for g in opt.redundant_groups],
            "zero": [g.name for g in oto.zero_groups()],
            "max_rank_difference": float((gathered[0] - gathered[1]).abs().max()),
        }
        if rank == 0:
            subnet = oto.construct_subnet()  # raises unless exact
            result["params"] = [sum(p.numel() for p in m.parameters()) for m in (model, subnet)]
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_h2spg_under_ddp_keeps_ranks_identical_and_zeroes_the_same_groups(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert not any(n.startswith("module.") for n in r0["group_names"])
    assert len(r0["redundant"]) == 3 and r0["redundant"] == r1["redundant"]
    assert set(r0["zero"]) == set(r0["redundant"]) and r0["zero"] == r1["zero"]
    assert r0["max_rank_difference"] == 0.0
    assert r0["params"][1] < r0["params"][0]
