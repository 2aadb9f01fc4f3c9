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
- ``summary.md``: one table per metric (rows that are identical on every object folded into
  one), the cost, and whether the objects are enough to resolve a difference of ``min_effect``
  in the main metric;
- with matplotlib installed, ``views.png``, ``scatter.png`` and ``cost_quality.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trellis_mv.eval._jobs import SINGLE, ResultStore
from trellis_mv.eval._metrics import lower_is_better
from trellis_mv.eval._stats import mean_ci, paired

__all__ = ["BASELINES", "DEFAULT_MIN_EFFECT", "METRICS", "Report", "Resolution", "main_metric", "resolution",
           "write_report"]

BASELINES = ("single-mean", "single-best", "multidiffusion")

#: The difference in the main metric a run should resolve, unless told otherwise (``--min-effect``).
DEFAULT_MIN_EFFECT = 0.01

#: ``1.96 * sqrt(2)``: a difference of this many standard errors is found at the 5% level about
#: 80% of the time (``1.96 + 0.84``), so it is the smallest one a run can be said to resolve.
_RESOLVE_Z = 1.96 * math.sqrt(2)

#: Known metrics in the order of the report, each with its meaning; others follow in the order seen.
METRICS: dict[str, str] = {
    "iou": "shape: intersection over union of the result's voxels with the true voxels",
    "voxel_iou": "shape: IoU of the surface voxels of the result's mesh, aligned to the true mesh",
    "chamfer": "shape: mean distance from each surface to the other, both ways (voxels; for meshes, of the longest side)",
    "fscore": "shape: F-score of the voxels within one voxel of the other shape",
    "fscore@0.02": "shape: F-score of surface points within 0.02 of the longest side of the other surface",
    "fscore@0.05": "shape: F-score of surface points within 0.05 of the longest side of the other surface",
    "given_silhouette_iou": "IoU of the result's silhouette with the true one at the given views (their mean)",
    "first_silhouette_iou": "IoU of the result's silhouette with the true one at the first view (comparable across N)",
    "given_color_acc": "fraction of the pixels inside the true silhouettes of the given views shown in the right colour",
    "hidden_color_acc_seen": "colour accuracy of the surface faces the first view hides and another standard view shows",
    "hidden_color_acc_unseen": "colour accuracy of the surface faces no standard view shows",
    "heldout_color_error": "mean absolute RGB error of renders from views never given",
    "given_psnr": "PSNR (dB) of renders at the given views' cameras against their photos",
    "given_ssim": "SSIM of renders at the given views' cameras against their photos",
    "heldout_psnr": "PSNR (dB) of renders at the cameras of views not given against their photos",
    "heldout_ssim": "SSIM of renders at the cameras of views not given against their photos",
    "model_forwards": "model forward passes per generation",
    "latent_rows": "latent rows through the model per generation (rows of every forward, summed)",
    "seconds": "wall seconds per generation (of the device the run was on)",
    "peak_memory_mib": "peak GPU memory per generation (MiB)",
}


def _fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.6g}"


def _ordered(metrics: Sequence[str]) -> list[str]:
    """``metrics`` with the known ones first, in :data:`METRICS` order, then the others as given."""
    known = [m for m in METRICS if m in metrics]
    return known + [m for m in metrics if m not in METRICS]


def _meaning(metric: str) -> str:
    better = "lower" if lower_is_better(metric) else "higher"
    return f"{METRICS.get(metric, 'a score of the results')}; {better} is better."


def main_metric(metrics: Sequence[str]) -> str:
    """The metric the cost plot and the resolution check use: ``iou`` (the proxy's voxels), else the first in order.

    >>> main_metric(["chamfer", "iou"]), main_metric(["chamfer", "voxel_iou", "given_psnr"])
    ('iou', 'voxel_iou')
    """
    if not metrics:
        raise ValueError("no quality metrics in the results: the scorer recorded none")
    return _ordered(metrics)[0]


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
        seen: list[str] = []
        for rec in records:
            for metric, value in rec.get(field, {}).items():
                if metric not in seen:
                    seen.append(metric)
                if value is not None:
                    sums[(rec["aggregator"], tuple(rec["views"]), metric, rec["object"])].append(float(value))
        self.metrics: list[str] = _ordered(seen)
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


#: Per-object values closer than this (relative) are the same result. Runs that are the same
#: by construction (every aggregator at N = 1) reduce in another order or through other kernels,
#: which moved float32 scores by up to 2.5e-5 relative in the committed H200 table (the mean
#: colour error; 20,160 jobs), while a real difference moves some object's score by far more.
FOLD_RTOL = 1e-4


def _folds(rows: dict[str, dict[str, np.ndarray]], metrics: list[str]) -> list[list[str]]:
    """The labels of ``rows`` grouped by equal per-object values of every metric (to :data:`FOLD_RTOL`), in order."""
    groups: list[list[str]] = []
    for label, values in rows.items():
        for group in groups:
            first = rows[group[0]]
            if all(np.allclose(values[m], first[m], rtol=FOLD_RTOL, atol=1e-12, equal_nan=True) for m in metrics):
                group.append(label)
                break
        else:
            groups.append([label])
    return groups


def _group_name(group: list[str], aggregators: Sequence[str], n: int) -> str:
    if len(group) == 1:
        return group[0]
    if set(aggregators) <= set(group) and "single-mean" in group:
        return f"any aggregator at N = {n} (= single view)"
    return " = ".join(group)


@dataclass(frozen=True)
class Resolution:
    """How small a difference in ``metric`` the run resolves, against the ``min_effect`` asked for.

    ``smallest`` is ``1.96·√2·sd/√n`` of the per-object paired differences, for the comparison
    (aggregator ``against`` baseline at ``num_views``) where it is largest; ``needed`` the
    number of objects that would bring it down to ``min_effect``.
    """

    metric: str
    min_effect: float
    objects: int
    smallest: float
    needed: int | None
    comparison: tuple[str, str, int] | None

    @property
    def enough(self) -> bool:
        return self.objects >= 2 and not self.smallest > self.min_effect

    def warning(self) -> str | None:
        """The warning to show when the objects are too few, else None."""
        if self.enough:
            return None
        if self.objects < 2:
            return (f"{self.objects} object: the spread of the per-object differences is unknown, so no difference in "
                    f"{self.metric} can be resolved; run more objects (--min-effect {self.min_effect:g}).")
        agg, base, n = self.comparison or ("?", "?", 0)
        return (f"too few objects for --min-effect {self.min_effect:g}: with {self.objects} objects this run resolves "
                f"differences in {self.metric} of about {self.smallest:.3g} or more ({agg} against {base} at N = {n}); "
                f"about {self.needed} objects would resolve {self.min_effect:g}.")

    def line(self) -> str:
        """One line for the summary, whether or not the objects are enough."""
        if self.objects < 2 or self.comparison is None:
            return f"Resolution in {self.metric}: not known with {self.objects} object(s)."
        agg, base, n = self.comparison
        verdict = "enough" if self.enough else f"about {self.needed} objects needed"
        return (f"Smallest difference in {self.metric} this run resolves: {self.smallest:.3g} "
                f"(1.96·√2·sd/√n of the per-object paired differences, {self.objects} objects; largest for {agg} "
                f"against {base} at N = {n}); asked for {self.min_effect:g} (`--min-effect`): {verdict}.")


def resolution(per_n: dict[int, dict[str, dict[str, np.ndarray]]], aggregators: Sequence[str], metric: str,
               min_effect: float) -> Resolution:
    """The :class:`Resolution` of ``metric`` over every aggregator against every baseline and N."""
    worst: tuple[float, int, tuple[str, str, int]] | None = None
    objects = 0
    for n, rows in per_n.items():
        for agg in aggregators:
            for base in BASELINES:
                if base == agg:
                    continue
                a, b = rows[agg][metric], rows[base][metric]
                d = (a - b)[np.isfinite(a) & np.isfinite(b)]
                objects = max(objects, len(d))
                if len(d) < 2:
                    continue
                smallest = _RESOLVE_Z * float(d.std(ddof=1)) / math.sqrt(len(d))
                if worst is None or smallest > worst[0]:
                    worst = (smallest, len(d), (agg, base, n))
    if worst is None:
        return Resolution(metric, min_effect, objects, math.nan, None, None)
    smallest, count, where = worst
    needed = math.ceil(count * (smallest / min_effect) ** 2)
    return Resolution(metric, min_effect, count, smallest, needed, where)


class Report(dict[str, str]):
    """The files :func:`write_report` wrote (name → path), with its ``warnings`` (lines for the user) and ``resolution``."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []
        self.resolution: Resolution | None = None


def write_report(out: str | Path, *, min_effect: float = DEFAULT_MIN_EFFECT) -> Report:
    """(Re)build every table and plot of ``out`` from its results; returns the written files.

    :param min_effect: the difference in the main metric (:func:`main_metric`) the run should
        resolve; ``summary.md`` (and the returned ``warnings``) say when the objects are too few.
    """
    import warnings

    if not min_effect > 0:
        raise ValueError(f"--min-effect {min_effect}: must be > 0")
    out = Path(out)
    config, plan, records = _load(out)
    have = {r["object"] for r in records}
    objects = [o for o in _plan_objects(plan) if o in have]
    quality, cost, timing = _Table(records, "metrics"), _Table(records, "cost"), _Table(records, "timing")
    counts = [int(n) for n in config["views"]]
    written = Report()
    summary: list[list[str]] = []
    timing_rows: list[list[str]] = []
    pairs: list[list[str]] = []
    per_n: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    cost_n: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no such metric for an object)
        for n in counts:
            q = _rows(quality, config, plan, objects, n, quality.metrics, best=True)
            c = _rows(cost, config, plan, objects, n, cost.metrics, best=False)
            t = _rows(timing, config, plan, objects, n, timing.metrics, best=False)
            per_n[n] = q
            cost_n[n] = {label: {**c[label], **t[label]} for label in c}
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
    main = main_metric(quality.metrics)
    res = resolution(per_n, config["aggregators"], main, min_effect)
    written.resolution = res
    written.warnings = [w for w in [res.warning()] if w]
    devices = sorted({r.get("device", "?") for r in records})
    folds = {n: _folds(per_n[n], quality.metrics) for n in counts}
    (out / "summary.md").write_text(
        _markdown(config, len(objects), summary, pairs, timing_rows, quality.metrics,
                  cost.metrics + [m for m in timing.metrics if m in METRICS], devices, folds, res)
    )
    written["summary.md"] = str(out / "summary.md")
    written.update(_plots(out, per_n, quality.metrics, config, counts))
    written.update(_cost_plot(out, per_n, cost_n, main, config, counts))
    return written


def _plan_objects(plan: dict[str, list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for key in plan:
        seen.setdefault(key.rsplit("|", 1)[0], None)
    return list(seen)


def _arrow(metric: str) -> str:
    return "↓" if lower_is_better(metric) else "↑"


def _pm(mean: str, ci: str) -> str:
    if mean == "nan":
        return "n/a"
    return f"{float(mean):.4g}" if ci == "nan" or float(ci) == 0 else f"{float(mean):.4g} ± {float(ci):.2g}"


def _markdown(config: dict[str, Any], objects: int, summary: list[list[str]], pairs: list[list[str]],
              timing: list[list[str]], quality: list[str], costs: list[str], devices: list[str],
              folds: dict[int, list[list[str]]], res: Resolution) -> str:
    cells: dict[tuple[str, str, str], tuple[str, str]] = {}
    for label, nv, m, mean, ci, count in summary + timing:
        cells[(label, nv, m)] = (_pm(mean, ci), count)
    diffs: dict[tuple[str, str, str, str], str] = {}
    for label, nv, base, m, diff, ci, p, _ in pairs:
        diffs[(label, nv, base, m)] = "n/a" if diff == "nan" else f"{float(diff):+.4g} ± {float(ci):.2g} (p={float(p):.2g})"
    aggregators = list(config["aggregators"])
    bases = [b for b in BASELINES if any(k[2] == b for k in diffs)]
    lines = [
        "# Evaluation", "",
        f"model `{config['model']}`, dataset `{config['dataset']}`, {objects} objects, {config['seeds']} seeds each, "
        f"sampler params {json.dumps(config['params']) if config['params'] else 'default'}; "
        f"run on: {'; '.join(devices)} (seconds and memory are of that device).", "",
        "Means over objects (each object's value is the mean over its seeds) ± the 95% half-width; n objects. "
        "Δ: the per-object difference (row minus baseline), ± the half-width of its 95% paired-bootstrap interval, "
        "and the Wilcoxon signed-rank p; \"=\" where the row is that baseline. Rows equal on every object are shown once.",
        "",
    ]
    warning = res.warning()
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    lines += [res.line(), "", "## Quality", ""]
    for m in quality:
        lines += [f"### {m} {_arrow(m)}", "", _meaning(m), "",
                  "| aggregator | N | mean | n | " + " | ".join(f"Δ {b}" for b in bases) + " |",
                  "|---|---|---|---|" + "---|" * len(bases)]
        for n, groups in folds.items():
            for group in groups:
                first = group[0]
                mean, count = cells.get((first, str(n), m), ("", ""))
                agg = next((g for g in group if g in aggregators), None)
                delta = []
                for b in bases:
                    if agg is None:
                        delta.append("")
                    elif b in group:
                        delta.append("=")
                    else:
                        delta.append(diffs.get((agg, str(n), b, m), ""))
                lines.append(f"| {_group_name(group, aggregators, n)} | {n} | {mean} | {count} | "
                             + " | ".join(delta) + " |")
        lines.append("")
    shown = [c for c in costs if any(k[2] == c for k in cells)]
    if shown:
        lines += ["## Cost", "", *[f"- {c} {_arrow(c)}: {_meaning(c)}" for c in shown], "",
                  "| aggregator | N | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
        for n in folds:
            for label in [*aggregators, "single-mean"]:
                lines.append(f"| {label} | {n} | " + " | ".join(cells.get((label, str(n), c), ("",))[0] for c in shown)
                             + " |")
        lines.append("")
    return "\n".join(lines)


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the file backend, or None without matplotlib (the plots are optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _cost_plot(out: Path, per_n: dict[int, dict[str, dict[str, np.ndarray]]],
               cost_n: dict[int, dict[str, dict[str, np.ndarray]]], metric: str, config: dict[str, Any],
               counts: list[int]) -> dict[str, str]:
    """``cost_quality.png``: ``metric`` (± its 95% half-width) against model forwards and seconds per generation."""
    plt = _pyplot()
    if plt is None:
        return {}
    axes_of = [c for c in ("model_forwards", "seconds") if any(c in cost_n[n].get("single-mean", {}) for n in counts)]
    if not axes_of:
        return {}
    labels = [*config["aggregators"], "single-mean"]
    fig, axes = plt.subplots(1, len(axes_of), figsize=(5.2 * len(axes_of), 4.2), squeeze=False)
    markers = "os^vDP*Xph"
    for ax, c in zip(axes.flat, axes_of):
        for k, label in enumerate(labels):
            xs, ys, es = [], [], []
            for n in counts:
                x = mean_ci(cost_n[n].get(label, {}).get(c, np.array([])))[0]
                y, e, _ = mean_ci(per_n[n][label][metric])
                xs.append(x)
                ys.append(y)
                es.append(0.0 if math.isnan(e) else e)
            ax.errorbar(xs, ys, yerr=es, marker=markers[k % len(markers)], capsize=3, linestyle="none",
                        label="single view (mean)" if label == "single-mean" else label)
            for x, y, n in zip(xs, ys, counts):
                if math.isfinite(x) and math.isfinite(y):
                    ax.annotate(f"N={n}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("model forwards per generation" if c == "model_forwards" else "seconds per generation")
        ax.set_ylabel(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
        ax.set_title(f"{metric} against cost")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cost_quality.png", dpi=110)
    plt.close(fig)
    return {"cost_quality.png": str(out / "cost_quality.png")}


def _plots(out: Path, per_n: dict[int, dict[str, dict[str, np.ndarray]]], metrics: list[str], config: dict[str, Any],
           counts: list[int]) -> dict[str, str]:
    plt = _pyplot()
    if plt is None:
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
