"""Quality of every registered aggregator on the proxy model, against the known ground truth.

For each aggregator (``trellis_mv.list_aggregators()``, the same one on both stages) and
N in {1, 2, 4} views, over held-out shapes (seeds >= ``HELD_OUT_SEED``) and several seeds:
shape IoU, Chamfer distance (voxels), colour error (mean absolute RGB, 0-1) of renders
from views NOT given (four 20-degree-elevation diagonals and the top), model calls, and
seconds per generation. Means with 95% confidence intervals (normal approximation over
shapes x seeds).

    python benchmarks/quality.py --shapes 100 --seeds 3 --device cuda --out benchmarks/results/quality.md
    python benchmarks/quality.py --shapes 4 --seeds 1 --threads 2 --out benchmarks/results/quality_cpu.md
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

import trellis_mv
from trellis_mv.pipeline import run_multi_image
from trellis_mv.proxy import HELD_OUT_SEED, ProxyPipeline, chamfer, color_error, input_views, iou, make_shape

GIVEN = {1: ["front"], 2: ["front", "back"], 4: ["front", "right", "back", "left"]}
HELD_OUT_VIEWS = ["az45el20", "az135el20", "az225el20", "az315el20", "top"]


def ci(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return f"{a.mean():.3f} ± {half:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--views", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--aggregators", nargs="+", help="default: every registered aggregator")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (e.g. 2 to time a 2-core machine)")
    p.add_argument("--out", help="also write the table (markdown) here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = ProxyPipeline(device=a.device)
    names = a.aggregators or [info.name for info in trellis_mv.list_aggregators()
                              if not getattr(info.factory, "needs_cameras", False)]  # no cameras given here
    rows = []
    header = "| aggregator | N | IoU ↑ | Chamfer (vox) ↓ | colour err, unseen views ↓ | model calls | s / call (all samples) |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name in names:
        for n in a.views:
            m = {"iou": [], "chamfer": [], "color": [], "calls": [], "sec": []}
            for i in range(a.shapes):
                shape = make_shape(HELD_OUT_SEED + i)
                img = input_views(shape.occupancy, shape.colors, GIVEN[n])
                t0 = time.perf_counter()
                with warnings.catch_warnings():  # stochastic with more views than steps warns; not the point here
                    warnings.simplefilter("ignore")
                    # the seeds are drawn as one batch of samples (num_samples), each its own noise
                    res, patches = run_multi_image(pipe, list(img), mode=name, seed=i, num_samples=a.seeds, verbose=False)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                m["sec"].append(time.perf_counter() - t0)
                calls = sum(pt.model_calls for pt in patches.values())
                for k in range(a.seeds):
                    occ, col = res.occupancy[k], res.colors[k]
                    m["iou"].append(iou(occ, shape.occupancy))
                    m["chamfer"].append(chamfer(occ, shape.occupancy))
                    m["color"].append(color_error(occ, col, shape.occupancy, shape.colors, HELD_OUT_VIEWS))
                    m["calls"].append(calls)
            line = (f"| {name} | {n} | {ci(m['iou'])} | {ci(m['chamfer'])} | {ci(m['color'])} | "
                    f"{np.mean(m['calls']):.0f} | {np.mean(m['sec']):.3f} |")
            if a.out:
                with open(a.out, "w") as f:
                    f.write("\n".join([*lines, line]) + "\n")
            print(line, flush=True)
            lines.append(line)
            rows.append((name, n, m))
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    footer = (f"\n{a.shapes} held-out shapes x {a.seeds} seeds per row; device: {dev}; "
              f"steps {pipe.params['sparse_structure']['steps']}+{pipe.params['texture']['steps']}; "
              "± is the 95% confidence half-width.")
    print(footer)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n" + footer + "\n")


if __name__ == "__main__":
    main()
