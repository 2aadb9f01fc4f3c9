"""Throughput of the evaluation harness on the proxy with 1 GPU and with 2, side by side in one run.

Runs ``torchrun --nproc_per_node=K -m trellis_mv.eval`` on the same job list for K = 1
then K = 2 (each into a fresh folder, the same CPU threads per process), each for at most
``--seconds`` (then stopped: a stopped evaluation is simply resumable), and reports, per K,
jobs per second over the whole window (process start and model load included) and in the
steady state (from the moment every rank has finished its first two jobs to the last job
finished), and the ratio 2 GPUs / 1 GPU.

    python benchmarks/eval_scaling.py --seconds 45 --out benchmarks/results/eval_scaling_H100x2.md
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _records(out: Path) -> list[dict]:
    recs = []
    for f in sorted((out / "results").glob("rank-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                recs.append(dict(json.loads(line), _rank=f.stem))
            except json.JSONDecodeError:
                pass  # a line cut when the window closed
    return recs


def _steady(recs: list[dict]) -> float:
    by_rank: dict[str, list[float]] = {}
    for r in recs:
        by_rank.setdefault(r["_rank"], []).append(r["finished_at"])
    start = max(sorted(t)[min(1, len(t) - 1)] for t in by_rank.values())
    end = max(r["finished_at"] for r in recs)
    n = sum(1 for r in recs if r["finished_at"] > start)
    return n / (end - start) if end > start else float("nan")


def run(nproc: int, args: argparse.Namespace, root: Path) -> dict:
    out = root / f"nproc{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "trellis_mv.eval",
           "--dataset", "proxy", "--objects", str(args.objects), "--views", *map(str, args.views),
           "--aggregators", *args.aggregators, "--seeds", str(args.seeds), "--device", args.device,
           "--threads", str(args.threads), "--no-report", "--quiet", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=args.seconds)
        if rc:
            raise SystemExit(f"torchrun --nproc_per_node={nproc} failed with exit status {rc}")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the window is over; what is done is on disk
        proc.wait()
    wall = time.perf_counter() - t0
    recs = _records(out)
    return {"nproc": nproc, "jobs": len(recs), "wall_s": wall, "jobs_per_s": len(recs) / wall, "steady_jobs_per_s": _steady(recs),
            "ranks": len({r["_rank"] for r in recs})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=200, help="enough that the window ends first")
    p.add_argument("--seconds", type=float, default=45, help="time window of each run")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--views", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--aggregators", nargs="+", default=["multidiffusion", "stochastic"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads of each process (scoring runs on the CPU)")
    p.add_argument("--out", help="also write the table (markdown) here")
    a = p.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(k, a, Path(tmp)) for k in (1, 2)]
    one, two = rows
    lines = [
        "# Evaluation harness throughput: 1 vs 2 GPUs (proxy model)", "",
        f"Device: {torch.cuda.device_count() if a.device == 'cuda' else 0} x {device}; torch {torch.__version__}; "
        f"{a.objects} held-out objects, N in {a.views}, aggregators {a.aggregators} + the single-view baselines, "
        f"{a.seeds} seeds, the same job list for both; each run stopped after {a.seconds:g} s; "
        f"{a.threads} CPU threads per process.", "",
        "| processes (GPUs) | jobs done | wall s | jobs/s, whole window | jobs/s, steady state |", "|---|---|---|---|---|",
        *[f"| {r['nproc']} | {r['jobs']} | {r['wall_s']:.1f} | {r['jobs_per_s']:.2f} | {r['steady_jobs_per_s']:.2f} |"
          for r in rows],
        "",
        f"Ratio 2 / 1: whole window {two['jobs_per_s'] / one['jobs_per_s']:.2f}x, "
        f"steady state {two['steady_jobs_per_s'] / one['steady_jobs_per_s']:.2f}x.",
        "", "```", " ".join(["python", *sys.argv]), "```",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
