"""Two evaluations of the same objects and seeds (other weights, other code), paired per object.

Reads two ``trellis-mv eval`` results folders (``results/rank-*.jsonl``, gzipped or not) that
ran the same data set with the same seeds, and compares one aggregator at each number of
views: per metric, the mean of each, the per-object difference (B minus A, each object's
value the mean over its seeds) with its 95% paired-bootstrap interval and the Wilcoxon p.

    python benchmarks/paired_runs.py OLD_RESULTS NEW_RESULTS --names before after --out report.md
    git show REV:benchmarks/results/proxy_table_H200/results/rank-0000.jsonl.gz > old/results/rank-0000.jsonl.gz
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from _results import emit

import trellis_mv.eval as ev

METRICS = ("iou", "given_silhouette_iou", "given_color_acc", "hidden_color_acc_seen", "hidden_color_acc_unseen",
           "heldout_color_error")


def _records(folder: Path) -> list[dict]:
    records = ev.read_results(folder)
    if not records:
        sys.exit(f"paired_runs: {folder} holds no results/rank-*.jsonl[.gz]: name a `trellis-mv eval --out` folder")
    return records


def per_object(records: list[dict], aggregator: str, n: int) -> dict[str, dict[str, tuple[int, float]]]:
    """object -> metric -> (seeds, mean over them), for ``aggregator`` at ``n`` views."""
    acc: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get("done") and r["aggregator"] == aggregator and len(r["views"]) == n:
            for m, v in r["metrics"].items():
                if v is not None:
                    acc[r["object"]][m][r["seed"]] = v
    return {o: {m: (len(s), float(np.mean(list(s.values())))) for m, s in ms.items()} for o, ms in acc.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="the first results folder (the baseline)")
    p.add_argument("b", type=Path, help="the second results folder")
    p.add_argument("--names", nargs=2, default=["A", "B"], metavar=("A", "B"))
    p.add_argument("--aggregator", default="multidiffusion")
    p.add_argument("--views", type=int, nargs="+", default=[1, 4])
    p.add_argument("--out", type=Path, default=None, help="write the table as Markdown here (and JSON beside)")
    args = p.parse_args()
    ra, rb = _records(args.a), _records(args.b)
    (na, nb), rows, record = args.names, [], {"a": str(args.a), "b": str(args.b), "aggregator": args.aggregator,
                                              "rows": []}
    for n in args.views:
        pa, pb = per_object(ra, args.aggregator, n), per_object(rb, args.aggregator, n)
        objects = sorted(set(pa) & set(pb))
        if not objects:
            sys.exit(f"paired_runs: no object has {args.aggregator} at {n} views in both folders")
        for m in METRICS:
            both = [o for o in objects if m in pa[o] and m in pb[o]]
            unseeded = [o for o in both if pa[o][m][0] != pb[o][m][0]]
            if unseeded:
                sys.exit(f"paired_runs: object {unseeded[0]} has other seeds in the two folders; pair runs made "
                         "with the same --seeds")
            if not both:
                continue
            a = np.array([pa[o][m][1] for o in both])
            b = np.array([pb[o][m][1] for o in both])
            d = ev.paired(b, a)
            rows.append(f"| {n} | {m} | {a.mean():.4f} | {b.mean():.4f} | {d.diff:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}] | "
                        f"{d.p:.2g} | {d.n} |")
            record["rows"].append({"views": n, "metric": m, "a": a.mean(), "b": b.mean(), "diff": d.diff, "lo": d.lo,
                                   "hi": d.hi, "p": d.p, "objects": d.n})
    lines = [f"# {args.aggregator}: {nb} against {na}, paired per object", "",
             f"{na}: `{args.a}`; {nb}: `{args.b}`. Each object's value is the mean over its seeds (the same seeds in "
             "both); the difference is " + f"{nb} minus {na}, with its 95% paired-bootstrap interval and the Wilcoxon p.",
             "", f"| views | metric | {na} | {nb} | {nb} − {na} [95% CI] | p | objects |", "|---|---|---|---|---|---|---|",
             *rows, "", "Command: `python benchmarks/paired_runs.py " + shlex.join(sys.argv[1:]) + "`"]
    emit(lines, record, args.out)


if __name__ == "__main__":
    main()
