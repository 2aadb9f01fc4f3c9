"""Write the measured numbers quoted in README.md and the docs from the committed results.

Every number the prose quotes lives between markers, ``<!-- numbers:NAME -->`` ...
``<!-- /numbers:NAME -->`` in Markdown and ``.. numbers:NAME`` ... ``.. /numbers:NAME`` in
reStructuredText, and is computed here from a file in ``benchmarks/results/``, with the
device and date of that measurement. After a benchmark is re-run:

    python scripts/write_numbers.py            # rewrite the blocks
    python scripts/write_numbers.py --check    # exit 1, naming each stale block (tests/test_numbers.py runs this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEP_COST = RESULTS / "trellis2_step_cost_H100_2026-11-26.json"
OVERHEAD = RESULTS / "overhead_cpu.txt"
TABLE = RESULTS / "proxy_table_H200"
EVAL_SPEED = RESULTS / "eval_batched_H200.json"
APP_TIMING = RESULTS / "app_timing_cpu.txt"


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _step_cost() -> dict[str, float | str]:
    data = json.loads(STEP_COST.read_text())
    rows = {(r["config"], r["n"], r["stage"]): r for r in data["step_cost"]}
    single = next(r["ms"] for r in data["step_cost"] if r["config"].startswith("single-view") and r["stage"] == "shape")

    def ratio(config: str, n: int) -> float:
        return rows[(config, n, "shape")]["ms"] / single

    return {
        "device": data["meta"]["device"], "date": data["meta"]["date"],
        "multidiffusion": ratio("multidiffusion", 4), "serial": ratio("serial loop (TRELLIS v1 style)", 4),
        "concat": ratio("concat", 4), "stochastic": ratio("stochastic", 4),
        "mem8": rows[("multidiffusion", 8, "shape")]["peak_gib"],
        "mem8_capped": rows[("multidiffusion, max_batch=3", 8, "shape")]["peak_gib"],
        "time_capped": rows[("multidiffusion, max_batch=3", 8, "shape")]["ms"] / rows[("multidiffusion", 8, "shape")]["ms"] - 1,
    }


def _overhead() -> dict[str, float | str]:
    text = OVERHEAD.read_text()
    date = re.search(r"\((\d{4}-\d\d-\d\d), ([^,]+),", text)
    per_step = {m[1].strip(): float(m[2]) for m in re.finditer(r"^([a-z][a-z ,0-9]+?)\s+([\d.]+) us", text, re.M)}
    return {"date": date[1] if date else "?", "device": date[2] if date else "?",
            "selecting": per_step["single, 1 view"] - per_step["unpatched, 1 view"],
            "fusing": per_step["multidiffusion, 4 views"] - per_step["unpatched, 1 view"]}


def _fidelity() -> dict[str, Any]:
    """The proxy's 1-view and 4-view scores and the aggregators' paired IoU against multidiffusion, from the table."""
    import csv

    summary = {(r["aggregator"], r["num_views"], r["metric"]): float(r["mean"])
               for r in csv.DictReader((TABLE / "summary.csv").open())}
    pairs = {(r["aggregator"], r["num_views"], r["baseline"], r["metric"]): r
             for r in csv.DictReader((TABLE / "paired.csv").open())}
    config = json.loads((TABLE / "config.json").read_text())
    device = re.search(r"run on: ([^(]+?) \(", (TABLE / "summary.md").read_text())

    def mean(key: str, n: int) -> float:
        return summary[("multidiffusion", str(n), key)]

    vs_md = {a: float(r["diff"]) for (a, n, b, m), r in pairs.items() if n == "4" and b == "multidiffusion" and m == "iou"}
    return {
        "device": device[1].strip() if device else "?", "date": _git_date(TABLE / "summary.csv"),
        "shapes": int(re.search(r"objects=(\d+)", config["dataset"])[1]), "seeds": config["seeds"],
        "iou1": mean("iou", 1), "iou4": mean("iou", 4),
        "hidden": mean("hidden_color_acc_seen", 4) - mean("hidden_color_acc_seen", 1),
        "front": mean("first_silhouette_iou", 4) - mean("first_silhouette_iou", 1),
        "sil1": mean("given_silhouette_iou", 1), "col1": mean("given_color_acc", 1),
        "given_col": mean("given_color_acc", 4) - mean("given_color_acc", 1),
        "best": max(vs_md, key=vs_md.__getitem__), "best_diff": max(vs_md.values()),
        "worst": min(vs_md, key=vs_md.__getitem__), "worst_diff": min(vs_md.values()),
    }


def _eval_speed() -> dict[str, Any]:
    data = json.loads(EVAL_SPEED.read_text())
    return {**data, "date": _git_date(EVAL_SPEED)}


def _eval_speed_line(e: dict[str, Any]) -> str:
    """The batched and per-job rates of ``eval_batched.py``'s JSON, with the fp32 paths beside a bf16 run's."""
    if "fp32" in e:  # --precision bf16: the fp32 paths ran too, and the faster per-job path is the baseline
        per32, rate32 = e["fp32"]["per_job_jobs_per_s"], e["fp32_batched"]["jobs_per_s"]
        return (f"batched, {rate32:.0f} jobs/s in fp32 and {e['batched_jobs_per_s']:.0f} with `--precision "
                f"{e['precision']}`, against {per32:.1f} one sampler run per job in fp32 (the faster per-job precision): "
                f"{rate32 / per32:.1f}x and {e['fp32']['batched_over_fastest_per_job']:.1f}x, side by side in one run")
    return (f"{e['batched_jobs_per_s']:.0f} jobs/s batched against {e['per_job_jobs_per_s']:.1f} one sampler run per job "
            f"({e['batched_over_per_job']:.0f}x), {e['batched_over_forward_only']:.0%} of the model's forwards-only rate"
            + "".join(f", {c['jobs_per_s']:.0f} with `torch.compile` ({c['over_eager_batched']:.2f}x)"
                      for c in e.get("compiled", []) if c.get("variant") == "compile" and "jobs_per_s" in c))


def _app_timing() -> dict[str, float | str]:
    text = APP_TIMING.read_text()
    return {"start": float(re.search(r"first page served: ([\d.]+) s", text)[1]),
            "run": float(re.search(r"click to 'Done': ([\d.]+) s", text)[1]),
            "alone": float(re.search(r"without the app .*?: ([\d.]+) s", text)[1]),
            "date": _git_date(APP_TIMING)}


def _git_date(path: Path) -> str:
    """The date of the commit that last changed ``path`` (results without a date of their own)."""
    import subprocess

    out = subprocess.run(["git", "log", "-1", "--format=%ad", "--date=short", "--", str(path)], cwd=ROOT,
                         capture_output=True, text=True, check=False).stdout.strip()
    return out or "uncommitted"


def readme_measured() -> str:
    c, o, f, a, e = _step_cost(), _overhead(), _fidelity(), _app_timing(), _eval_speed()
    return "\n".join([
        f"- TRELLIS.2's real flow models, random weights, one {c['device']}, {c['date']} (`{_rel(STEP_COST)}`): "
        f"at 4 views, multidiffusion costs {c['multidiffusion']:.2f} single-view steps on the shape stage "
        f"(the serial loop of TRELLIS v1: {c['serial']:.2f}), `concat` {c['concat']:.2f}, `stochastic` "
        f"{c['stochastic']:.2f}; no negative pass at guidance strength 1; `max_batch=3` cuts the shape stage's "
        f"extra memory at 8 views from {c['mem8']:.1f} to {c['mem8_capped']:.1f} GiB for {c['time_capped']:.0%} more time.",
        f"- The patch itself, {o['device']}, {o['date']} (`{_rel(OVERHEAD)}`): {o['selecting'] / 1000:.2f} ms a step "
        f"for a selecting aggregator, {o['fusing'] / 1000:.1f} ms for a fusing one, against 90-570 ms a step of the "
        "real models.",
        f"- The proxy model, {f['shapes']} held-out shapes x {f['seeds']} seeds, every aggregator, one {f['device']}, "
        f"{f['date']} (`{_rel(TABLE)}`): four views through multidiffusion raise IoU from {f['iou1']:.2f} to "
        f"{f['iou4']:.2f} ({f['iou4'] - f['iou1']:+.2f}) over the front view alone, and colour accuracy on the "
        f"surface the front hides by {f['hidden']:+.2f}; at 4 views, paired against multidiffusion, `{f['best']}` "
        f"gains {f['best_diff']:+.4f} IoU and `{f['worst']}` loses {f['worst_diff']:+.3f} (intervals and p-values "
        "in the table; `docs/proxy.rst` says how far the proxy carries).",
        f"- The evaluation harness, one {e['device']}, {e['date']} (`{_rel(EVAL_SPEED)}`): " + _eval_speed_line(e)
        + f"; the table above ({f['shapes'] * f['seeds'] * 28:,} jobs) ran in one command.",
        f"- The app, proxy model, 4 photos, 12 steps a stage, 2-core CPU, {a['date']} (`{_rel(APP_TIMING)}`): "
        f"ready in {a['start']:.1f} s, a run {a['run']:.1f} s from click to result ({a['alone']:.1f} s without the app).",
    ])


def proxy_trust() -> str:
    f = _fidelity()
    return "\n".join([
        f"On {f['shapes']} held-out shapes, one view against four through multidiffusion, paired on shape and",
        f"noise (``trellis-mv eval`` on one {f['device']}, {f['date']}; ``{_rel(TABLE)}``): four views",
        f"raise IoU by {f['iou4'] - f['iou1']:+.2f} ({f['iou1']:.2f} to {f['iou4']:.2f}) and colour accuracy on the",
        f"surface the front hides by {f['hidden']:+.2f}, and they cost the front view nothing measurable (its",
        f"silhouette IoU moves by {f['front']:+.3f}). From one view it reproduces that view's silhouette at",
        f"{f['sil1']:.2f} IoU and its colours at {f['col1']:.2f}, its loosest point; four views change the",
        f"given views' colour accuracy by {f['given_col']:+.3f}" + (
            ", where averaging the views' predictions blurs colours that only one view sees." if f["given_col"] < -0.005
            else "."),
    ])


def app_speed() -> str:
    a = _app_timing()
    head = APP_TIMING.read_text().splitlines()[0]
    threads = re.search(r"(torch [^ ]+) with (\d+) threads", head)
    return "\n".join([
        "Measured through a real browser by ``benchmarks/app_timing.py`` on a 2-core CPU shared with other jobs,",
        f"{a['date']} (``{_rel(APP_TIMING)}``; {threads[1]}, {threads[2]} threads), proxy model, four photos, the",
        f"default 12 steps a stage: the page is served {a['start']:.1f} s after ``trellis-mv app`` starts (importing",
        f"Gradio and torch is most of it), and a run takes {a['run']:.1f} s from the click to the result, against",
        f"{a['alone']:.1f} s for the same generation without the app (median of 5, interleaved).",
    ])


#: block name -> (files it is written into, what writes it)
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "measured": (("README.md",), readme_measured),
    "proxy-trust": (("docs/proxy.rst",), proxy_trust),
    "app-speed": (("docs/app.rst",), app_speed),
}


def _pattern(name: str, path: str) -> re.Pattern[str]:
    if path.endswith(".md"):
        return re.compile(rf"(<!-- numbers:{name} -->\n)(.*?)(\n<!-- /numbers:{name} -->)", re.S)
    return re.compile(rf"(\.\. numbers:{name}\n\n)(.*?)(\n\n\.\. /numbers:{name}\n)", re.S)


def update(check: bool = False) -> list[str]:
    """Rewrite every block (``check``: only report); returns ``file: block`` for each block that was stale."""
    stale = []
    for name, (paths, make) in BLOCKS.items():
        text = make()
        for path in paths:
            file = ROOT / path
            old = file.read_text()
            pattern = _pattern(name, path)
            if not pattern.search(old):
                raise SystemExit(f"{path} has no '{name}' block; add the markers around the numbers it quotes")
            new = pattern.sub(lambda m, text=text: m[1] + text + m[3], old)
            if new != old:
                stale.append(f"{path}: {name}")
                if not check:
                    file.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    stale = update(check=args.check)
    for item in stale:
        hint = " (run: python scripts/write_numbers.py)" if args.check else ""
        print(f"{'stale' if args.check else 'rewrote'}: {item}{hint}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
