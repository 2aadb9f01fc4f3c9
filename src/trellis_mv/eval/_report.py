"""Tables and plots from what a results folder holds (all ranks' files merged, sorted by job key).

Per object first: each metric is averaged over the seeds of one (object, aggregator, views),
then compared across objects. Rows for every N: each aggregator on the N standard views,
``single:view=i`` (view ``i`` of those N alone), ``single-mean`` (per object, the mean over
the N single views) and ``single-best`` (per object and metric, the best single view: an
oracle). Files written:

- ``summary.csv`` ``aggregator,num_views,metric,mean,ci95,n`` (quality and deterministic cost:
  model forwards, latent rows; ``ci95`` is the normal-approximation half-width over objects);
- ``paired.csv`` ``aggregator,num_views,baseline,metric,diff,ci95,p,n``: per-object differences
  against ``single-mean``, ``single-best`` and ``multidiffusion``; ``ci95`` is the half-width
  of the paired bootstrap interval, ``p`` the Wilcoxon signed-rank test's;
- ``timing.csv`` (wall seconds, peak GPU memory: they vary from run to run, so they are kept
  apart and the two tables above are identical for any number of processes or restarts);
- ``summary.md`` and, with matplotlib installed, ``views.png`` and ``scatter.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trellis_mv.eval._jobs import SINGLE, ResultStore
from trellis_mv.eval._metrics import lower_is_better
from trellis_mv.eval._stats import mean_ci, paired

__all__ = ["BASELINES", "write_report"]

BASELINES = ("single-mean", "single-best", "multidiffusion")


def _fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.6g}"


def _load(out: Path) -> tuple[dict[str, Any], dict[str, list[str]], list[dict[str, Any]]]:
    for name in ("config.json", "plan.json"):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out} has no {name}: it is not the --out folder of a `trellis-mv eval` run")
    config = json.loads((out / "config.json").read_text())
    try:
        plan = json.loads((out / "plan.json").read_text())
    except ValueError:
        plan = None
    records = sorted(ResultStore(out).done().values(), key=lambda r: r["key"])
    if not records:
        raise ValueError(f"{out} has no finished jobs yet; run the evaluation first")
    if not isinstance(plan, dict) or not {r["object"] for r in records} & set(_plan_objects(plan)):
        raise ValueError(f"{out}/plan.json is empty or does not list the finished jobs' objects, so no table would "
                         "have a row; run the evaluation command again to rewrite it (the tables are left as they are)")
    return config, plan, records


class _Table:
    """Per-object means: ``values[(aggregator, views)][metric][object]``."""

    def __init__(self, records: list[dict[str, Any]], field: str) -> None:
        sums: dict[tuple[str, tuple[str, ...], str, str], list[float]] = defaultdict(list)
        self.metrics: list[str] = []
        for rec in records:
            for metric, value in rec.get(field, {}).items():
                if metric not in self.metrics:
                    self.metrics.append(metric)
                if value is not None:
                    sums[(rec["aggregator"], tuple(rec["views"]), metric, rec["object"])].append(float(value))
        self.values: dict[tuple[str, tuple[str, ...]], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
        for (agg, views, metric, obj), vals in sums.items():
            self.values[(agg, views)][metric][obj] = float(np.mean(vals))

    def column(self, agg: str, views: Sequence[str], metric: str, objects: Sequence[str]) -> np.ndarray:
        got = self.values.get((agg, tuple(views)), {}).get(metric, {})
        return np.array([got.get(o, math.nan) for o in objects], dtype=float)


def _rows(table: _Table, config: dict[str, Any], plan: dict[str, list[str]], objects: list[str], n: int,
          metrics: list[str], best: bool) -> dict[str, dict[str, np.ndarray]]:
    """label → metric → per-object values, for N given views."""
    rows: dict[str, dict[str, np.ndarray]] = {}
    given = [plan[f"{o}|{n}"] for o in objects]
    for agg in config["aggregators"]:
        rows[agg] = {m: np.array([table.column(agg, g, m, [o])[0] for o, g in zip(objects, given)]) for m in metrics}
    singles = []
    for i in range(n):
        col = {m: np.array([table.column(SINGLE, [g[i]], m, [o])[0] for o, g in zip(objects, given)]) for m in metrics}
        rows[f"single:view={i}"] = col
        singles.append(col)
    with np.errstate(all="ignore"):
        rows["single-mean"] = {m: np.nanmean(np.stack([s[m] for s in singles]), 0) for m in metrics}
        if best:
            pick = lambda m: np.nanmin if lower_is_better(m) else np.nanmax
            rows["single-best"] = {m: pick(m)(np.stack([s[m] for s in singles]), 0) for m in metrics}
    return rows


def write_report(out: str | Path) -> dict[str, str]:
    """(Re)build every table and plot of ``out`` from its results; returns the written files."""
    import warnings

    out = Path(out)
    config, plan, records = _load(out)
    have = {r["object"] for r in records}
    objects = [o for o in _plan_objects(plan) if o in have]
    quality, cost, timing = _Table(records, "metrics"), _Table(records, "cost"), _Table(records, "timing")
    counts = [int(n) for n in config["views"]]
    written: dict[str, str] = {}
    summary: list[list[str]] = []
    timing_rows: list[list[str]] = []
    pairs: list[list[str]] = []
    per_n: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no such metric for an object)
        for n in counts:
            q = _rows(quality, config, plan, objects, n, quality.metrics, best=True)
            c = _rows(cost, config, plan, objects, n, cost.metrics, best=False)
            t = _rows(timing, config, plan, objects, n, timing.metrics, best=False)
            per_n[n] = q
            for label in q:
                for m in quality.metrics:
                    summary.append([label, str(n), m, *map(_fmt, mean_ci(q[label][m]))])
                for m in cost.metrics if label in c else []:
                    summary.append([label, str(n), m, *map(_fmt, mean_ci(c[label][m]))])
                for m in timing.metrics if label in t else []:
                    timing_rows.append([label, str(n), m, *map(_fmt, mean_ci(t[label][m]))])
            for agg in config["aggregators"]:
                for base in BASELINES:
                    if base == agg:
                        continue
                    for m in quality.metrics:
                        r = paired(q[agg][m], q[base][m])
                        pairs.append([agg, str(n), base, m, _fmt(r.diff), _fmt(r.half_width), _fmt(r.p), str(r.n)])
    for name, header, rows in (
        ("summary.csv", ["aggregator", "num_views", "metric", "mean", "ci95", "n"], summary),
        ("paired.csv", ["aggregator", "num_views", "baseline", "metric", "diff", "ci95", "p", "n"], pairs),
        ("timing.csv", ["aggregator", "num_views", "metric", "mean", "ci95", "n"], timing_rows),
    ):
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        written[name] = str(out / name)
    devices = sorted({r.get("device", "?") for r in records})
    (out / "summary.md").write_text(
        _markdown(config, len(objects), summary, pairs, timing_rows, quality.metrics + cost.metrics, devices)
    )
    written["summary.md"] = str(out / "summary.md")
    written.update(_plots(out, per_n, quality.metrics, config, counts))
    return written


def _plan_objects(plan: dict[str, list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for key in plan:
        seen.setdefault(key.rsplit("|", 1)[0], None)
    return list(seen)


def _markdown(config: dict[str, Any], objects: int, summary: list[list[str]], pairs: list[list[str]],
              timing: list[list[str]], metrics: list[str], devices: list[str]) -> str:
    def pm(mean: str, ci: str) -> str:
        return mean if ci == "nan" else f"{float(mean):.4g} ± {float(ci):.2g}"

    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for label, n, m, mean, ci, _ in summary + timing:
        cells[(label, n)][m] = pm(mean, ci)
    cols = metrics + [m for m in ("seconds", "peak_memory_mib") if any(m in v for v in cells.values())]
    arrow = lambda m: "↓" if lower_is_better(m) else "↑"
    lines = [
        "# Evaluation", "",
        f"model `{config['model']}`, dataset `{config['dataset']}`, {objects} objects, {config['seeds']} seeds each, "
        f"sampler params {json.dumps(config['params']) if config['params'] else 'default'}; "
        f"run on: {'; '.join(devices)} (seconds and memory are of that device).",
        "Means over objects (each object's value is the mean over its seeds), ± the 95% half-width.", "",
        "| aggregator | N | " + " | ".join(f"{m} {arrow(m)}" for m in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for (label, n), row in cells.items():
        lines.append(f"| {label} | {n} | " + " | ".join(row.get(m, "") for m in cols) + " |")
    lines += ["", "## Paired differences", "",
              "Per-object difference (aggregator minus baseline): mean ± half-width of the 95% paired-bootstrap interval, "
              "Wilcoxon signed-rank p.", ""]
    quality = list(dict.fromkeys(p[3] for p in pairs))
    lines += ["| aggregator | N | baseline | " + " | ".join(quality) + " |", "|---|---|---|" + "---|" * len(quality)]
    grouped: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for agg, n, base, m, diff, ci, p, _ in pairs:
        text = "n/a" if diff == "nan" else f"{float(diff):+.4g} ± {float(ci):.2g} (p={float(p):.2g})"
        grouped[(agg, n, base)][m] = text
    for (agg, n, base), row in grouped.items():
        lines.append(f"| {agg} | {n} | {base} | " + " | ".join(row.get(m, "") for m in quality) + " |")
    return "\n".join(lines) + "\n"


def _plots(out: Path, per_n: dict[int, dict[str, dict[str, np.ndarray]]], metrics: list[str], config: dict[str, Any],
           counts: list[int]) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}  # plots are optional: `pip install matplotlib`
    if not metrics:
        return {}  # no quality scores (e.g. neither meshes nor cameras): nothing to plot
    written = {}
    labels = [*config["aggregators"], "single-mean", "single-best"]
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for k, label in enumerate(labels):
            stats = [mean_ci(per_n[n][label][m]) for n in counts]
            x = np.array(counts, dtype=float) + (k - len(labels) / 2) * 0.04
            ax.errorbar(x, [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1] for s in stats], marker="o",
                        capsize=3, label=label, linestyle="--" if label.startswith("single") else "-")
        ax.set_xticks(counts)
        ax.set_xlabel("views given")
        ax.set_title(f"{m} ({'lower' if lower_is_better(m) else 'higher'} is better)")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "views.png", dpi=110)
    plt.close(fig)
    written["views.png"] = str(out / "views.png")

    n = max(counts)
    aggs = list(config["aggregators"])
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        base = per_n[n]["single-mean"][m]
        for a in aggs:
            ax.scatter(base, per_n[n][a][m], s=10, alpha=0.7, label=a)
        finite = np.concatenate([base, *[per_n[n][a][m] for a in aggs]])
        finite = finite[np.isfinite(finite)]
        if len(finite):
            lo, hi = float(finite.min()), float(finite.max())
            ax.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8)
        ax.set_xlabel(f"single-mean {m}")
        ax.set_ylabel(f"aggregator {m}")
        ax.set_title(f"{m}, N={n}, per object")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scatter.png", dpi=110)
    plt.close(fig)
    written["scatter.png"] = str(out / "scatter.png")
    return written
