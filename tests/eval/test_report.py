"""The report of a results folder written by hand: tables per metric, folded rows, the cost plot, the resolution
warning, what each rank prints, and tables that do not depend on how the results were split or ordered."""

from __future__ import annotations

import csv
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trellis_mv._outputs import claim_folder
from trellis_mv.eval import _report
from trellis_mv.eval._jobs import SINGLE, Job, ResultStore
from trellis_mv.eval._run import OUTPUT_FILES
from trellis_mv.eval.cli import main as eval_main

VIEWS = {1: ["front"], 2: ["front", "right"]}
AGGREGATORS = ["stochastic", "multidiffusion"]


def _quality(obj: int, agg: str, views: tuple[str, ...], seed: int, spread: float) -> dict[str, float]:
    """Per object a base level; aggregators on 2 views above the single views by an amount that varies by ``spread``."""
    rng = np.random.default_rng([obj, seed, len(views), sum(map(ord, agg + "".join(views)))])
    base = 0.5 + 0.2 * math.sin(obj)
    if agg == SINGLE:
        iou = base - (0.03 if views == ("right",) else 0.0)
    elif len(views) == 1:
        iou = base  # every aggregator on one view is the single-view run
    else:
        iou = base + (0.04 if agg == "stochastic" else 0.02) + spread * rng.normal()
    if len(views) == 1:  # the single view's noise only: equal for every aggregator on one view
        rng = np.random.default_rng([obj, seed, 1, sum(map(ord, views[0]))])
    noise = rng.normal()
    return {"zz_custom": 1.0 + 0.1 * noise, "chamfer": 2.0 - iou + 0.01 * noise, "iou": iou + 0.001 * noise}


def make_records(objects: int = 12, seeds: int = 1, spread: float = 0.005) -> list[dict[str, Any]]:
    """The records of a run on ``objects`` objects, as the harness writes them."""
    records = []
    for i in range(objects):
        oid = f"obj-{i:03d}"
        jobs = {Job(oid, a, tuple(VIEWS[n]), s) for n in VIEWS for a in AGGREGATORS for s in range(seeds)}
        jobs |= {Job(oid, SINGLE, (v,), s) for n in VIEWS for v in VIEWS[n] for s in range(seeds)}
        for job in sorted(jobs):
            forwards = 8 if job.aggregator == SINGLE else 4 * len(job.views) * (2 if job.aggregator == "stochastic" else 1)
            records.append({
                "key": job.key, "object": oid, "aggregator": job.aggregator, "views": list(job.views),
                "seed_index": job.seed_index, "seed": job.seed,
                "metrics": _quality(i, job.aggregator, job.views, job.seed_index, spread),
                "cost": {"model_forwards": forwards, "latent_rows": 3 * forwards},
                "timing": {"seconds": 0.125 * forwards, "batch": 4}, "device": "cpu, 1 threads",
            })
    return records


def write_run(out: Path, records: list[dict[str, Any]], ranks: int = 1, seeds: int = 1) -> Path:
    """A results folder: ``config.json``, ``plan.json`` and the records dealt round-robin to ``ranks`` files."""
    claim_folder(out, kind="eval", files=OUTPUT_FILES)
    objects = sorted({r["object"] for r in records})
    config = {"model": "proxy", "dataset": "synthetic", "views": sorted(VIEWS), "aggregators": AGGREGATORS,
              "seeds": seeds, "params": {}, "max_batch": None}
    (out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    (out / "plan.json").write_text(json.dumps({f"{o}|{n}": v for o in objects for n, v in VIEWS.items()}) + "\n")
    store = ResultStore(out)
    for k, rec in enumerate(records):
        store.append(k % ranks, rec)
    return out


def _section(md: str, metric: str) -> list[str]:
    """The table rows of ``metric``'s section of summary.md."""
    lines = md.split(f"### {metric} ", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0].splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith("| aggregator")]


def test_one_table_per_metric_known_ones_first_each_with_its_meaning_and_paired_columns(tmp_path):
    out = write_run(tmp_path / "run", make_records())
    _report.write_report(out)
    md = (out / "summary.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("### ")]
    assert headings == ["### iou ↑", "### chamfer ↓", "### zz_custom ↑"]  # records hold them in name order
    for metric, better in (("iou", "higher"), ("chamfer", "lower"), ("zz_custom", "higher")):
        meaning = md.split(f"### {metric} ", 1)[1].splitlines()[2]
        assert meaning.endswith(f"{better} is better.")
    assert "intersection over union" in md.split("### iou", 1)[1].splitlines()[2]
    header = md.split("### iou ↑", 1)[1].splitlines()[4]
    assert header == "| aggregator | N | mean | n | Δ single-mean | Δ single-best | Δ multidiffusion |"
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:2]: line for line in _section(md, "iou")}
    stochastic = rows[("stochastic", "2")].strip("|").split("|")
    summary = {(r["aggregator"], r["num_views"], r["metric"]): r for r in csv.DictReader((out / "summary.csv").open())}
    mean = float(summary[("stochastic", "2", "iou")]["mean"])
    assert stochastic[2].strip().startswith(f"{mean:.4g} ± ") and stochastic[3].strip() == "12"
    paired = {(r["aggregator"], r["num_views"], r["baseline"], r["metric"]): r
              for r in csv.DictReader((out / "paired.csv").open())}
    for cell, base in zip(stochastic[4:7], _report.BASELINES):
        diff = float(paired[("stochastic", "2", base, "iou")]["diff"])
        assert cell.strip().startswith(f"{diff:+.4g} ± ") and "(p=" in cell
    assert rows[("multidiffusion", "2")].strip("|").split("|")[6].strip() == "="  # itself, as a baseline
    assert [c.strip() for c in rows[("single-mean", "2")].strip("|").split("|")[4:]] == ["", "", ""]
    assert "| aggregator | N | model_forwards | latent_rows | seconds |" in md  # not the batch size: no cost
    assert "## Cost" in md and "| stochastic | 2 | 16 | 48 | 2 |" in md


def test_every_aggregator_on_one_view_is_one_row_only_when_the_data_say_so(tmp_path):
    records = make_records()
    _report.write_report(write_run(tmp_path / "same", records))
    md = (tmp_path / "same" / "summary.md").read_text()
    for metric in ("iou", "chamfer", "zz_custom"):
        at_one = [row for row in _section(md, metric) if row.split("|")[2].strip() == "1"]
        assert len(at_one) == 1 and at_one[0].startswith("| any aggregator at N = 1 (= single view) | 1 | ")
        assert at_one[0].rstrip().endswith("| = | = | = |")
        assert len([row for row in _section(md, metric) if row.split("|")[2].strip() == "2"]) == 6  # 2 + 2 + mean, best
    # float rounding of another batch or kernel (up to 2.5e-5 relative in the H200 table) is the same result;
    # 1e-3 on one object is not
    for rec in records:
        if rec["aggregator"] == "stochastic" and len(rec["views"]) == 1:
            rec["metrics"]["chamfer"] *= 1 + 3e-5
    _report.write_report(write_run(tmp_path / "rounded", records))
    assert "| any aggregator at N = 1 (= single view) | 1 | " in (tmp_path / "rounded" / "summary.md").read_text()
    for rec in records:
        if rec["key"] == "obj-003|stochastic|front|0":
            rec["metrics"]["iou"] += 1e-3
    _report.write_report(write_run(tmp_path / "off", records))
    md = (tmp_path / "off" / "summary.md").read_text()
    labels = [row.split("|")[1].strip() for row in _section(md, "iou") if row.split("|")[2].strip() == "1"]
    assert labels == ["stochastic", "multidiffusion = single:view=0 = single-mean = single-best"]


def test_cost_quality_plot_has_a_point_per_aggregator_and_n_with_its_interval(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    calls: list[tuple[Axes, list[float], list[float], list[float], str]] = []
    real = Axes.errorbar

    def record(ax: Axes, x: Any, y: Any, *args: Any, yerr: Any = None, label: str = "", **kw: Any) -> Any:
        calls.append((ax, list(x), list(y), list(yerr), label))
        return real(ax, x, y, *args, yerr=yerr, label=label, **kw)

    out = write_run(tmp_path / "run", make_records())
    monkeypatch.setattr(_report, "_plots", lambda *a: {})  # the other plots call errorbar too
    monkeypatch.setattr(Axes, "errorbar", record)
    files = _report.write_report(out)
    assert Path(files["cost_quality.png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = {(r["aggregator"], r["num_views"], r["metric"]): r for r in csv.DictReader((out / "summary.csv").open())}
    assert len(calls) == 2 * 3  # model forwards and seconds; 2 aggregators and the single view
    forwards_axis, seconds_axis = calls[:3], calls[3:]
    assert {c[0].get_xlabel() for c in forwards_axis} == {"model forwards per generation"}
    assert {c[0].get_xlabel() for c in seconds_axis} == {"seconds per generation"}
    assert [c[1] for c in seconds_axis] == [pytest.approx([0.125 * x for x in c[1]]) for c in forwards_axis]
    point = {c[4]: c for c in forwards_axis}
    assert set(point) == {"stochastic", "multidiffusion", "single view (mean)"}
    for label, key in (("stochastic", "stochastic"), ("single view (mean)", "single-mean")):
        _, xs, ys, errs, _ = point[label]
        assert xs == [float(summary[(key, n, "model_forwards")]["mean"]) for n in ("1", "2")]
        assert ys == pytest.approx([float(summary[(key, n, "iou")]["mean"]) for n in ("1", "2")], rel=1e-5)
        assert errs == pytest.approx([float(summary[(key, n, "iou")]["ci95"]) for n in ("1", "2")], rel=1e-5)


def test_without_matplotlib_the_tables_are_written_and_no_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = write_run(tmp_path / "run", make_records(objects=3))
    files = _report.write_report(out)
    assert {"summary.md", "summary.csv", "paired.csv", "timing.csv"} == set(files)
    assert not list(out.glob("*.png"))


def test_the_objects_needed_resolve_the_difference_asked_for():
    d = np.array([0.05, -0.03, 0.08, 0.0, -0.06, 0.02, 0.04, -0.01, 0.07, -0.04]) + 0.02
    base = np.linspace(0.3, 0.7, 10)
    rows = {"multidiffusion": {"iou": base + d}, "single-mean": {"iou": base}, "single-best": {"iou": base + 0.01}}
    res = _report.resolution({2: rows}, ["multidiffusion"], "iou", 0.01)
    sd = float(d.std(ddof=1))
    assert res.smallest == pytest.approx(1.96 * math.sqrt(2) * sd / math.sqrt(10))
    assert res.comparison == ("multidiffusion", "single-mean", 2) and not res.enough
    resolves = lambda n: 1.96 * math.sqrt(2) * sd / math.sqrt(n) <= 0.01
    assert resolves(res.needed) and not resolves(res.needed - 1)
    assert f"about {res.needed} objects would resolve 0.01" in res.warning()
    assert _report.resolution({2: rows}, ["multidiffusion"], "iou", 0.1).warning() is None
    one = {k: {"iou": v["iou"][:1]} for k, v in rows.items()}
    assert "1 object" in _report.resolution({2: one}, ["multidiffusion"], "iou", 0.1).warning()


def test_too_few_objects_are_warned_of_in_the_summary_and_by_the_command(tmp_path, capsys):
    out = write_run(tmp_path / "noisy", make_records(objects=8, spread=0.05))
    assert eval_main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    md = (out / "summary.md").read_text()
    assert "warning: too few objects for --min-effect 0.01: with 8 objects" in err
    assert "> **Warning:** too few objects for --min-effect 0.01" in md
    needed = int(md.split("objects would resolve")[0].rsplit("about ", 1)[1])
    assert needed > 8 and f"about {needed} objects" in err
    assert eval_main(["report", str(out), "--min-effect", "0.5"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "Warning" not in (out / "summary.md").read_text() and ": enough." in (out / "summary.md").read_text()
    quiet = write_run(tmp_path / "quiet", make_records(objects=8, spread=0.0005))
    assert eval_main(["report", str(quiet)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert eval_main(["report", str(quiet), "--min-effect", "0"]) == 2
    assert "must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("rank, said", [("0", "ran 3 jobs; 5 of 8 left: run the same command again"),
                                        ("1", "rank 1: ran 3 jobs\n")])
def test_only_rank_0_says_what_is_left(tmp_path, monkeypatch, capsys, rank, said):
    from trellis_mv.eval import _run

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(_run, "evaluate", lambda **kw: {"jobs": 8, "ran": 3, "pending": 5, "report": None})
    assert eval_main(["--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert said in printed
    assert ("left" in printed) == (rank == "0")


def test_tables_are_the_same_bytes_whatever_the_ranks_order_and_restarts(tmp_path):
    records = make_records(objects=6, seeds=3, spread=0.03)
    one = write_run(tmp_path / "one", records, seeds=3)
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    many = write_run(tmp_path / "many", shuffled, ranks=3, seeds=3)
    with open(many / "results" / "rank-0001.jsonl", "a") as f:  # a restart: a torn line, then the job again
        f.write(json.dumps(shuffled[0])[:40])
    ResultStore(many).append(2, shuffled[0])
    assert len(list((many / "results").iterdir())) == 3
    _report.write_report(one)
    _report.write_report(many)
    for name in ("summary.md", "summary.csv", "paired.csv"):
        assert (one / name).read_bytes() == (many / name).read_bytes(), name
