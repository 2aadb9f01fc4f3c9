"""Does the proxy model use its views? Four views against one, through ``trellis_mv.eval``, paired per object.

Held-out objects from the front view alone and from the four standard views with
``multidiffusion``, the same noise for both; every score of the harness
(:func:`trellis_mv.eval.score_voxels`) as a per-object paired difference (4 views minus 1):
mean, 95% bootstrap interval, Wilcoxon p (:func:`trellis_mv.eval.paired`). IoU is shown beside
its reference points (:func:`trellis_mv.eval.reference_iou`): a random other shape, and a
perfect model given 1 or 4 views (``--reference-samples 0`` skips them).

    python benchmarks/proxy_fidelity.py --objects 240 --seeds 3 --device cuda --out runs/fidelity
    python benchmarks/proxy_fidelity.py --objects 2 --seeds 1 --steps 2 --reference-samples 0 --out /tmp/fidelity   # smallest
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import trellis_mv.eval as ev
from trellis_mv.proxy import VIEW_SETS, make_shape

METRICS = ("iou", "first_silhouette_iou", "given_color_acc", "hidden_color_acc_seen", "hidden_color_acc_unseen",
           "heldout_color_error")


def _one_thread() -> None:
    torch.set_num_threads(1)


def _references(obj: str, samples: int) -> tuple[dict[str, float], dict[str, float]]:
    """Both reference points of one object, from 1 and from 4 views (CPU work: shapes drawn and rendered)."""
    shape = make_shape(int(obj))
    return (ev.reference_iou(shape, VIEW_SETS[1], samples=samples), ev.reference_iou(shape, VIEW_SETS[4], samples=samples))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=240)
    p.add_argument("--first-object", type=int, default=10000, help="counted from the proxy's held-out seeds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--reference-samples", type=int, default=8)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes drawing the reference points (about 1.4 s a shape on one core)")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumed if it exists)")
    a = p.parse_args()
    params = {s: {"steps": a.steps} for s in ("sparse_structure", "texture")} if a.steps else None
    ev.evaluate(out=a.out, dataset="proxy", first_object=a.first_object, objects=a.objects, views=[1, 4],
                aggregators=["multidiffusion"], seeds=a.seeds, device=a.device, params=params, progress=False)
    per: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted((a.out / "results").glob("rank-*.jsonl")):
        for rec in map(json.loads, f.read_text().splitlines()):
            if rec["aggregator"] == "multidiffusion":
                for m, v in rec["metrics"].items():
                    if v is not None:
                        per[(rec["object"], len(rec["views"]))][m].append(v)
    objects = sorted({o for o, _ in per})
    lines = ["| score | 1 view | 4 views | 4 - 1 (95% CI) | p |", "|---|---|---|---|---|"]
    for m in METRICS:
        pairs = [(np.mean(per[(o, 1)][m]), np.mean(per[(o, 4)][m])) for o in objects if per[(o, 1)][m] and per[(o, 4)][m]]
        if not pairs:
            continue
        one, four = (np.array(x) for x in zip(*pairs))
        d = ev.paired(four, one)
        lines.append(f"| {m} | {one.mean():.3f} | {four.mean():.3f} | {d.diff:+.3f} ({d.lo:+.3f}, {d.hi:+.3f}) | "
                     f"{d.p:.2g} |")
    if a.reference_samples:
        with ProcessPoolExecutor(max(1, a.workers), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            pairs = list(pool.map(_references, objects, [a.reference_samples] * len(objects), chunksize=4))
        refs = {1: [r1 for r1, _ in pairs], 4: [r4 for _, r4 in pairs]}
        lines.append(f"\nIoU reference points: random other shape {np.mean([r['random'] for r in refs[1]]):.3f}; "
                     f"a perfect model from 1 view {np.mean([r['ideal'] for r in refs[1]]):.3f}, "
                     f"from 4 views {np.mean([r['ideal'] for r in refs[4]]):.3f}.")
    print(f"{len(objects)} objects ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}), "
          f"multidiffusion, 1 vs 4 views:\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
