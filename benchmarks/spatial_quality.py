"""Per-element aggregators against plain averaging on the proxy, through ``trellis_mv.eval``, paired per object.

Two evaluations of held-out objects at N = 4 (front, right, back, left, with their cameras):
``clean``, and ``wrong_back`` where each object's back view is the next object's (the data
set wrapper :class:`trellis_mv.eval.WrongView`): ``multidiffusion`` against ``visibility``
(both stages, and ``texture=visibility``, where the voxels are fixed and occlusion exact),
``attention`` and ``robust``. Every comparison is the harness's paired table (per-object
difference, 95% bootstrap interval, Wilcoxon p) in ``OUT/clean/summary.md`` and
``OUT/wrong_back/summary.md``; the lines against ``multidiffusion`` are printed.

    python benchmarks/spatial_quality.py --objects 240 --seeds 3 --device cuda --out runs/spatial --md runs/spatial.md
    python benchmarks/spatial_quality.py --objects 2 --seeds 1 --steps 2 --out /tmp/spatial      # smallest

``--md`` writes the comparisons as a Markdown table (and JSON beside it); a finished results
folder is only read again (pass the ``--batch`` it ran with, 256 on a GPU).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from pathlib import Path

import torch
from _results import emit

import trellis_mv.eval as ev

AGGREGATORS = ["multidiffusion", "visibility", "texture=visibility", "attention", "robust"]
METRICS = ("iou", "given_color_acc", "hidden_color_acc_seen", "heldout_color_error")
PARTS = {"clean": "four right views", "wrong_back": "the back view is another object's"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=240)
    p.add_argument("--first-object", type=int, default=10000, help="counted from the proxy's held-out seeds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="sampler steps of both stages (default: the proxy's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, required=True, help="results folder (each part resumed if it exists)")
    p.add_argument("--batch", type=int, help="objects a sampler run (default: the harness's, 256 on a GPU, 16 on a CPU)")
    p.add_argument("--md", type=Path, help="write the comparisons here as Markdown (and JSON beside)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    params = {s: {"steps": a.steps} for s in ("sparse_structure", "texture")} if a.steps else None
    rows, record = [], []
    for name, wrong in (("clean", None), ("wrong_back", "back")):
        res = ev.evaluate(out=a.out / name, dataset="proxy", first_object=a.first_object, objects=a.objects, views=[4],
                          aggregators=AGGREGATORS, seeds=a.seeds, device=a.device, params=params, wrong_view=wrong,
                          batch=a.batch, progress=False)
        print(f"## {name}: {a.out / name / 'summary.md'}")
        diffs: dict[str, dict[str, dict[str, float]]] = {}
        for row in csv.DictReader(open(res["report"]["paired.csv"])):
            if row["baseline"] == "multidiffusion" and row["metric"] in METRICS:
                d = {k: float(row[k]) for k in ("diff", "ci95", "p")}
                diffs.setdefault(row["aggregator"], {})[row["metric"]] = d
                record.append({"part": name, "aggregator": row["aggregator"], "metric": row["metric"], **d,
                               "objects": int(row["n"])})
                print(f"{row['aggregator']:>20} {row['metric']:<22} {d['diff']:+.4f} ± {d['ci95']:.4f}"
                      f"  p={d['p']:.2g}  (n={row['n']})")
        for agg, per in diffs.items():
            cells = [f"{per[m]['diff']:+.4f} ± {per[m]['ci95']:.4f} (p={per[m]['p']:.2g})" if m in per else ""
                     for m in METRICS]
            rows.append(f"| {PARTS[name]} | {agg} | " + " | ".join(cells) + " |")
    if a.md:
        n = record[0]["objects"] if record else 0
        emit([f"# Per-element aggregators against multidiffusion on the proxy, 4 views ({n} held-out objects x "
              f"{a.seeds} seeds)", "",
              "Each cell: the per-object difference (row minus `multidiffusion`, each object's value the mean over its "
              "seeds) ± the half-width of its 95% paired-bootstrap interval, and the Wilcoxon p. The full tables: "
              f"`{a.out.as_posix()}/clean/summary.md` and `{a.out.as_posix()}/wrong_back/summary.md`.", "",
              "| views | aggregator | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS), *rows, "",
              "Command: `python benchmarks/spatial_quality.py " + shlex.join(sys.argv[1:]) + "`"],
             {"rows": record}, a.md)

if __name__ == "__main__":
    main()
