"""One multi-view denoising step on one GPU and with its views spread over two (TRELLIS.2's shape model).

Run under ``torchrun`` with two processes, one GPU each. Builds TRELLIS.2's shape flow
model from its config (``slat_flow_img2shape_dit_1_3B_512_bf16``, 1.29B parameters,
bf16, random weights, the same on both GPUs) and measures, in one run:

* on rank 0 alone (rank 1 waits): the single-view step (the unpatched sampler) and
  ``multidiffusion`` at N views through :func:`trellis_mv.patch_sampler`;
* on both ranks: ``multidiffusion`` at N views with ``group=`` the world group;
* the exchange alone: the ``all_gather`` of the same buffers, timed after a barrier;
* peak memory over the weights and inputs, per GPU;
* whether the two-GPU step's prediction equals, bit for bit, the one-GPU step that
  evaluates the same chunks (``max_batch = ceil((N + 1) / 2)``) and is the same on both ranks.

Times are medians after one warm-up, ratios against the one-GPU single-view step of the
same run. Needs TRELLIS.2's source (``TRELLIS2_SRC``: a folder holding ``trellis2/`` and
``configs/``)::

    TRELLIS2_SRC=/path/to/TRELLIS.2 torchrun --nproc_per_node=2 benchmarks/distributed_views.py --out results/
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
# trellis2_step_cost puts src/ and support/ on the path and holds the one import of the upstream loader
from trellis2_step_cost import TINY, _bootstrap, build, sync, timed

import trellis_mv
from trellis_mv._distributed import partition, process_group_from_env

GUIDED = dict(guidance_strength=7.5, guidance_interval=(0.0, 1.0), guidance_rescale=0.5)
T = 0.8


def exchange_ms(group: Any, like: torch.Tensor, rows: int, repeats: int) -> float:
    """Median ms of one all_gather of the padded buffers a step of ``rows`` rows exchanges (``like``: one row)."""
    world = dist.get_world_size(group)
    counts = [sum(b - a for a, b in chunks) for chunks in partition(rows, world)]
    send = torch.zeros(max(counts) * like.numel() + 32 // like.element_size(), dtype=like.dtype, device=like.device)
    every = [torch.empty_like(send) for _ in range(world)]
    times = []
    for _ in range(repeats + 1):
        dist.barrier(group)
        sync()
        t0 = time.perf_counter()
        dist.all_gather(every, send, group=group)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])


def run(args: argparse.Namespace, group: Any) -> dict[str, Any] | None:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    _bootstrap.load_trellis2(args.src, flash_attn_shim=True)
    from trellis2.modules.sparse import SparseTensor
    from trellis2.pipelines.samplers import FlowEulerGuidanceIntervalSampler

    src = _bootstrap.locate_source("trellis2", "TRELLIS2_SRC", args.src).parent
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device="cpu").manual_seed(0)
    cond_all = torch.randn(max(args.views), 1029, 1024, generator=gen).to(device)
    neg = torch.zeros_like(cond_all[:1])
    model = build("slat_flow_img2shape_dit_1_3B_512_bf16", src, device, 2)
    res = 8 if args.tiny else 32
    idx = torch.randperm(res**3, generator=gen)[: args.voxels].sort().values
    coords = torch.stack([torch.zeros_like(idx), idx // res**2, (idx // res) % res, idx % res], 1).int().to(device)
    x = SparseTensor(feats=torch.randn(args.voxels, model.in_channels, generator=gen).to(device), coords=coords)
    sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    rows: list[dict[str, Any]] = []

    def step(n: int, on: Any = None, max_batch: int | None = None) -> Any:
        if n == 0:  # the unpatched single-view step
            return sampler._inference_model(model, x, T, cond_all[:1], neg_cond=neg, **GUIDED)
        with trellis_mv.patch_sampler(sampler, "multidiffusion", stage="shape", group=on, max_batch=max_batch):
            return sampler._inference_model(model, x, T, cond_all[:n], neg_cond=neg, **GUIDED)

    def record(**row: Any) -> None:
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)

    with torch.no_grad():
        if rank == 0:  # one GPU
            ms, mem = timed(lambda: step(0), args.repeats)
            record(config="single-view step, 1 GPU", n=1, gpus=1, ms=ms, peak_gib=[mem])
            for n in args.views:
                ms, mem = timed(lambda n=n: step(n), args.repeats)
                record(config="multidiffusion, 1 GPU", n=n, gpus=1, ms=ms, peak_gib=[mem])
        dist.barrier(group)
        row = step(0).feats  # one prediction: the size and dtype of what each view's row exchanges
        for n in args.views:  # both GPUs
            ms, mem = timed(lambda n=n: step(n, group), args.repeats)
            every = [None] * world
            dist.all_gather_object(every, (ms, mem), group=group)
            comm = exchange_ms(group, row, n + 1, args.repeats)
            record(config=f"multidiffusion, {world} GPUs", n=n, gpus=world, ms=max(m for m, _ in every),
                   ms_per_rank=[m for m, _ in every], peak_gib=[g for _, g in every], exchange_ms=comm)
        # the same numbers: two GPUs against one GPU evaluating the same chunks, and rank against rank
        n = max(args.views)
        spread = step(n, group).feats
        same_chunks = math.ceil((n + 1) / world)
        alone = step(n, None, max_batch=same_chunks).feats
        ranks = [torch.empty_like(spread) for _ in range(world)]
        dist.all_gather(ranks, spread, group=group)
        record(config="check", n=n, equal_to_one_gpu_same_chunks=bool(torch.equal(spread, alone)),
               max_abs_diff_one_gpu_one_forward=float((spread - step(n).feats).abs().max()),
               ranks_equal=all(torch.equal(r, ranks[0]) for r in ranks))
    if rank != 0:
        return None
    return {"rows": rows, "meta": {
        "date": datetime.date.today().isoformat(),
        "device": f"{world} x {torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"{world} x cpu",
        "backend": dist.get_backend(group), "torch": torch.__version__, "repeats": args.repeats,
        "model": "slat_flow_img2shape_dit_1_3B_512_bf16 (random weights, bf16)", "shape_voxels": args.voxels,
        "cond": "[N, 1029, 1024] per view, zeros negative", "step": f"t = {T}, {GUIDED}",
    }}


def report(result: dict[str, Any]) -> str:
    meta, rows = result["meta"], result["rows"]
    single = next(r["ms"] for r in rows if r["config"].startswith("single-view"))
    one = {r["n"]: r for r in rows if r.get("gpus") == 1 and r["config"].startswith("multidiffusion")}
    two = {r["n"]: r for r in rows if r.get("gpus", 1) > 1}
    targets = {4: 1.6, 8: 2.6}
    lines = [f"Device: {meta['device']} ({meta['backend']}), torch {meta['torch']}, median of {meta['repeats']}; "
             f"{meta['model']}, {meta['shape_voxels']} voxels, {meta['cond']}.", "",
             f"Single-view step (unpatched sampler, 1 GPU): {single:.1f} ms.", "",
             "| N | 1 GPU ms | x single | 2 GPUs ms | x single | target | speed-up | exchange ms | share | "
             "extra GiB 1 GPU | extra GiB per GPU, 2 GPUs | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r2 in two.items():
        r1 = one[n]
        mem1, mem2 = r1["peak_gib"][0], max(r2["peak_gib"])
        target = targets.get(n)
        verdict = "" if target is None else f"<= {target} {'met' if r2['ms'] / single <= target else 'MISSED'}"
        lines.append(f"| {n} | {r1['ms']:.1f} | {r1['ms'] / single:.2f} | {r2['ms']:.1f} | {r2['ms'] / single:.2f} | "
                     f"{verdict} | {r1['ms'] / r2['ms']:.2f} | {r2['exchange_ms']:.2f} | "
                     f"{100 * r2['exchange_ms'] / r2['ms']:.2f}% | {mem1:.2f} | "
                     f"{' / '.join(f'{g:.2f}' for g in r2['peak_gib'])} | {mem2 / mem1 if mem1 else float('nan'):.0%} |")
    check = next((r for r in rows if r["config"] == "check"), None)
    if check:
        lines += ["", f"N={check['n']}: the 2-GPU prediction equals the 1-GPU step evaluating the same chunks bit for "
                  f"bit: {check['equal_to_one_gpu_same_chunks']}; both ranks hold the same prediction: "
                  f"{check['ranks_equal']}; max |diff| against the 1-GPU step that evaluates all rows in one forward: "
                  f"{check['max_abs_diff_one_gpu_one_forward']:.3g}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=os.environ.get("TRELLIS2_SRC"), help="TRELLIS.2 source tree")
    parser.add_argument("--out", default=None, help="folder for the JSON and markdown result (rank 0 writes)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--views", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--voxels", type=int, default=15000, help="active voxels of the shape latent")
    parser.add_argument("--tiny", action="store_true", help="2-block, 64-channel model on an 8^3 grid: a CPU smoke test")
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier run's JSON and exit")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    if args.tiny:
        TINY.update(model_channels=64, num_blocks=2, num_heads=2)
        args.voxels = min(args.voxels, 200)
    with process_group_from_env() as group:
        if group is None:
            parser.error("run under torchrun with --nproc_per_node=2 (or more): WORLD_SIZE is 1")
        result = run(args, group)
    if result is None:
        return
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed_views.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    print(text)
    if out:
        (out / "distributed_views.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
