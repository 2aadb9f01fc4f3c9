"""Mesh scores beside sampling: an evaluation on a folder data set with mesh scores in this process and in
a pool of worker processes, side by side in one run; prints jobs/s of each and their ratio.

A folder data set (:func:`trellis_mv.eval.write_example_folder`: held-out proxy objects as photos,
cameras and a true mesh) is scored against its meshes (:func:`trellis_mv.eval.score_mesh`: surface
samples, ICP alignment from 24 rotations, KD-tree distances: CPU work) while the model samples
the next chunk on ``--device``. Both runs evaluate the same jobs; the largest difference of their
scores is printed (0 on a CPU; a GPU's sampling is not bitwise repeatable from run to run).

    python benchmarks/eval_mesh_workers.py --device cuda --objects 48 --batch 4 --workers 8 --out results/eval_mesh_workers.md
    python benchmarks/eval_mesh_workers.py --device cpu --objects 2 --workers 1 --steps 2   # smallest
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from _results import emit


def _timed(folder: Path, out: Path, args: argparse.Namespace, workers: int) -> tuple[float, list]:
    from trellis_mv.eval import FolderDataset, evaluate

    params = {"sparse_structure": {"steps": args.steps}, "texture": {"steps": args.steps}}
    common = dict(views=args.views, aggregators=["multidiffusion"], params=params, device=args.device, progress=False,
                  report=False, batch=args.batch, mesh_workers=workers)
    evaluate(out=out / "warm", dataset=FolderDataset(folder, objects=1), max_jobs=1, **common)  # load, allocate
    start = time.perf_counter()
    evaluate(out=out / "run", dataset=FolderDataset(folder), **common)
    seconds = time.perf_counter() - start
    recs = [json.loads(line) for f in sorted((out / "run" / "results").glob("rank-*.jsonl")) for line in f.open()]
    return len(recs) / seconds, [(r["key"], r["metrics"]) for r in recs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--objects", type=int, default=48)
    p.add_argument("--views", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4, help="objects a sampler run (chunks to overlap with scoring)")
    p.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) // 2)))
    p.add_argument("--out", type=Path, default=None, help="write the numbers as Markdown here (and JSON beside)")
    args = p.parse_args()
    from trellis_mv.eval import write_example_folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_example_folder(root / "objects", objects=args.objects, first_object=7000)
        here_rate, here = _timed(folder, root / "here", args, 0)
        pool_rate, pool = _timed(folder, root / "pool", args, args.workers)
    same_jobs = [k for k, _ in here] == [k for k, _ in pool]
    chunks = -(-args.objects // args.batch)
    diff = max((abs(a - b) for (_, m1), (_, m2) in zip(here, pool) for k, a in m1.items()
                if a is not None and (b := m2.get(k)) is not None), default=float("nan"))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    res = {"device": name, "cpu_cores": os.cpu_count(), "objects": args.objects, "views": args.views, "jobs": len(here),
           "steps": args.steps, "batch": args.batch, "chunks": chunks, "workers": args.workers,
           "in_process_jobs_per_s": here_rate, "pool_jobs_per_s": pool_rate, "ratio": pool_rate / here_rate,
           "same_jobs": same_jobs, "largest_score_difference": diff}
    lines = [f"# Mesh scores beside sampling ({name}, {os.cpu_count()} CPU cores)", "",
             f"{len(here)} jobs ({args.objects} objects of a folder data set, views {args.views}, multidiffusion + "
             f"single-view baselines, {args.steps} steps a stage, {args.batch} objects a sampler run: {chunks} "
             f"chunk{'s' if chunks > 1 else ''}).", "",
             *([] if chunks >= 3 else ["Too few chunks for sampling to overlap the scores: this measures what the "
                                       "pool costs, not the overlap it is for (raise --objects or lower --batch).", ""]),
             "| mesh scores | jobs/s |", "|---|---|",
             f"| in the main process | {here_rate:.2f} |",
             f"| {args.workers} worker processes, beside sampling | {pool_rate:.2f} |", "",
             f"workers / main process: **{res['ratio']:.2f}x**; the same jobs: {same_jobs}; largest score "
             f"difference: {diff:.3g}.", "",
             f"Command: `python benchmarks/eval_mesh_workers.py --device {args.device} --objects {args.objects} "
             f"--views {' '.join(map(str, args.views))} --steps {args.steps} --batch {args.batch} --workers {args.workers}`"]
    emit(lines, res, args.out)


if __name__ == "__main__":
    main()
