"""Per-element aggregators against plain averaging on the proxy, through ``trellis_mv.eval``, paired per object.

Two evaluations of held-out objects at N = 4 (front, right, back, left, with their cameras):
``clean``, and ``wrong_back`` where each object's back view is the next object's (the data
set wrapper :class:`trellis_mv.eval.WrongView`): ``multidiffusion`` against ``visibility``
(both stages, and ``texture=visibility``, where the voxels are fixed and occlusion exact),
``attention`` and ``robust``. Every comparison is the harness's paired table (per-object
difference, 95% bootstrap interval, Wilcoxon p) in ``OUT/clean/summary.md`` and
``OUT/wrong_back/summary.md``; the lines against ``multidiffusion`` are printed.

    python benchmarks/spatial_quality.py --objects 240 --seeds 3 --device cuda --out runs/spatial
    python benchmarks/spatial_quality.py --objects 2 --seeds 1 --steps 2 --out /tmp/spatial      # smallest
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

import trellis_mv.eval as ev

AGGREGATORS = ["multidiffusion", "visibility", "texture=visibility", "attention", "robust"]
METRICS = ("iou", "given_color_acc", "hidden_color_acc_seen", "heldout_color_error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=240)
    p.add_argument("--first-object", type=int, default=10000, help="counted from the proxy's held-out seeds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="sampler steps of both stages (default: the proxy's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, required=True, help="results folder (each part resumed if it exists)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    params = {s: {"steps": a.steps} for s in ("sparse_structure", "texture")} if a.steps else None
    for name, wrong in (("clean", None), ("wrong_back", "back")):
        res = ev.evaluate(out=a.out / name, dataset="proxy", first_object=a.first_object, objects=a.objects, views=[4],
                          aggregators=AGGREGATORS, seeds=a.seeds, device=a.device, params=params, wrong_view=wrong,
                          progress=False)
        print(f"## {name}: {a.out / name / 'summary.md'}")
        for row in csv.DictReader(open(res["report"]["paired.csv"])):
            if row["baseline"] == "multidiffusion" and row["metric"] in METRICS:
                print(f"{row['aggregator']:>20} {row['metric']:<22} {float(row['diff']):+.4f} ± {float(row['ci95']):.4f}"
                      f"  p={float(row['p']):.2g}  (n={row['n']})")


if __name__ == "__main__":
    main()
