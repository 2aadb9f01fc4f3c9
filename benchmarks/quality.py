"""Quality of every registered aggregator on the proxy model against the known ground truth, through ``trellis_mv.eval``.

Held-out procedural objects, N in {1, 2, 4} standard views, several seeds; every aggregator
(the same on both stages) paired per object against the single-view baselines and
``multidiffusion`` (see docs/evaluating.rst). Writes OUT/summary.md, summary.csv,
paired.csv, timing.csv and the plots.

    python benchmarks/quality.py --objects 200 --seeds 3 --device cuda --out benchmarks/results/quality
    torchrun --standalone --nproc_per_node=2 benchmarks/quality.py --objects 200 --seeds 3 --out runs/quality
    python benchmarks/quality.py --objects 4 --seeds 1 --threads 2 --out runs/quality_cpu
"""

from __future__ import annotations

import argparse

import torch

import trellis_mv
import trellis_mv.eval as ev


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=200)
    p.add_argument("--first-object", type=int, default=0, help="counted from the proxy's held-out seeds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--views", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--aggregators", nargs="+", help="default: every registered aggregator")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (e.g. 2 to time a 2-core machine)")
    p.add_argument("--out", required=True, help="results folder (resumed if it exists)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    names = a.aggregators or [info.name for info in trellis_mv.list_aggregators()]
    res = ev.evaluate(out=a.out, dataset="proxy", first_object=a.first_object, objects=a.objects, views=a.views,
                      aggregators=names, seeds=a.seeds, device=a.device)
    if res["report"]:
        print(open(res["report"]["summary.md"]).read())


if __name__ == "__main__":
    main()
