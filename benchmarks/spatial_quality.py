"""Per-element aggregators against plain averaging on the proxy model, paired per shape.

Held-out shapes (seeds >= ``HELD_OUT_SEED``), four views (front, right, back, left as the
proxy names them, with their cameras), one sample per shape from the same noise for every
method, every proxy score (:func:`trellis_mv.eval.score_voxels`):

1. ``multidiffusion`` against ``visibility`` (on both stages, and on the texture stage alone,
   where the voxels are fixed and occlusion exact), ``attention`` and ``robust`` at N = 4;
2. one of the four views (the back one) replaced by the back view of another shape:
   how much ``multidiffusion`` and ``robust`` lose against clean ``multidiffusion``;
3. ``auto`` (:func:`trellis_mv_spatial.auto_generate`) against each shape's best single view
   chosen with the ground truth (an oracle no user has).

Every comparison is paired per shape (:func:`trellis_mv.eval.paired`: mean difference, 95%
bootstrap interval, Wilcoxon p). Shapes can be split over processes (``--part K/P``) whose
per-shape scores (``--save``) are merged afterwards (``--merge``).

    python benchmarks/spatial_quality.py --shapes 20 --threads 2 --out benchmarks/results/spatial_quality_cpu.md
    python benchmarks/spatial_quality.py --shapes 240 --part 0/4 --device cuda --save part0.json   # x4, then:
    python benchmarks/spatial_quality.py --merge part*.json --out benchmarks/results/spatial_quality.md
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch
from trellis_mv_spatial import auto_generate

import trellis_mv
from trellis_mv.eval import lower_is_better, paired
from trellis_mv.eval import score_voxels as score
from trellis_mv.proxy import HELD_OUT_SEED, ProxyPipeline, input_views, make_shape

VIEWS = ["front", "right", "back", "left"]
BAD = 2  # the view replaced by a wrong object's
METRICS = ("iou", "chamfer", "given_silhouette_iou", "given_color_acc", "hidden_color_acc_seen",
           "hidden_color_acc_unseen", "heldout_color_error")


def measure(a: argparse.Namespace) -> dict:
    pipe = ProxyPipeline(device=a.device)
    part, parts = (int(x) for x in a.part.split("/"))
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))

    def record(key: str, result, shape, seconds: float, calls: int) -> None:
        scores = score(result.occupancy[0], result.colors[0], shape, VIEWS)
        for metric in METRICS:
            rows[key][metric].append(scores[metric])
        rows[key]["seconds"].append(seconds)
        rows[key]["model_forwards"].append(calls)

    def run(key: str, spec, images, shape, seed: int, cameras=VIEWS) -> None:
        t0 = time.perf_counter()
        per_stage = isinstance(spec, dict)
        out = trellis_mv.run_multi_image(pipe, images, mode="multidiffusion" if per_stage else spec,
                                         stages=spec if per_stage else None, cameras=cameras, seed=seed)
        record(key, out.output, shape, time.perf_counter() - t0, out.cost()["model_forwards"])

    for i in range(part, a.shapes, parts):
        shape = make_shape(HELD_OUT_SEED + a.first + i)
        wrong = make_shape(HELD_OUT_SEED + a.first + i + 10_000)
        views = list(input_views(shape.occupancy, shape.colors, VIEWS))
        bad = list(views)
        bad[BAD] = input_views(wrong.occupancy, wrong.colors, [VIEWS[BAD]])[0]
        rows["shape"]["seed"].append(HELD_OUT_SEED + a.first + i)
        for name in ("multidiffusion", "visibility", "attention", "robust"):
            run(name, name, views, shape, i)
        run("visibility, texture only", {"texture": "visibility"}, views, shape, i)
        for name in ("multidiffusion", "robust"):
            run(f"{name}, wrong view", name, bad, shape, i)
        for v in range(len(VIEWS)):
            run(f"single {VIEWS[v]}", "multidiffusion", [views[v]], shape, i, cameras=[VIEWS[v]])
        best = max(range(len(VIEWS)), key=lambda v: rows[f"single {VIEWS[v]}"]["iou"][-1])
        for metric in (*METRICS, "seconds", "model_forwards"):
            rows["best single view by IoU (oracle)"][metric].append(rows[f"single {VIEWS[best]}"][metric][-1])
        if not a.no_auto:
            t0 = time.perf_counter()
            out = auto_generate(pipe, views, VIEWS, seed=i)
            record("auto", out.result, shape, time.perf_counter() - t0, out.model_calls)
            rows["auto"]["choice"].append(out.choice)
        print(f"shape {i + 1}/{a.shapes}", flush=True)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    return {"device": dev, "first": a.first, "rows": rows}


def merge(parts: list[dict]) -> dict:
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for p in parts:
        for key, metrics in p["rows"].items():
            for metric, values in metrics.items():
                rows[key][metric] += values
    return {"device": parts[0]["device"], "first": parts[0]["first"], "rows": rows}


def table(data: dict) -> str:
    rows = data["rows"]
    n = len(rows["shape"]["seed"])
    keys = [k for k in rows if k != "shape"]
    head = "| method | " + " | ".join(f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in METRICS) + \
        " | model forwards | s / generation |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for k in keys:
        vals = [f"{np.nanmean(rows[k][m]):.3f}" for m in METRICS]
        lines.append(f"| {k} | " + " | ".join(vals) + f" | {np.mean(rows[k]['model_forwards']):.0f} | "
                     f"{np.mean(rows[k]['seconds']):.3f} |")
    pairs = [(k, "multidiffusion") for k in ("visibility", "visibility, texture only", "attention", "robust")]
    pairs += [("multidiffusion, wrong view", "multidiffusion"), ("robust, wrong view", "multidiffusion")]
    if "auto" in rows:
        pairs += [("auto", "best single view by IoU (oracle)"), ("auto", "single front"), ("auto", "multidiffusion")]
    lines += ["", "Paired differences per shape (first minus second): mean [95% bootstrap interval], Wilcoxon p.", "",
              "| comparison | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 1)]
    for x, y in pairs:
        cells = []
        for m in METRICS:
            r = paired(rows[x][m], rows[y][m])
            cells.append(f"{r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] p={r.p:.1e}")
        lines.append(f"| {x} − {y} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in ("iou", "hidden_color_acc_seen", "heldout_color_error"):
        clean = np.nanmean(rows["multidiffusion"][m])
        md = np.nanmean(rows["multidiffusion, wrong view"][m]) - clean
        rb = np.nanmean(rows["robust, wrong view"][m]) - clean
        lines.append(f"{m} with the wrong view minus clean multidiffusion: multidiffusion {md:+.4f}, robust {rb:+.4f} "
                     f"(robust loses {abs(rb) / abs(md):.2f} of what multidiffusion loses).")
    if "auto" in rows:
        choices: dict[str, int] = defaultdict(int)
        for c in rows["auto"]["choice"]:
            choices[c] += 1
        lines.append("auto chose: " + ", ".join(f"{k} {v}" for k, v in sorted(choices.items(), key=lambda kv: -kv[1])) + ".")
    lines += ["", f"{n} held-out shapes (seeds HELD_OUT_SEED + {data['first']} ...), one sample each, views "
              f"{', '.join(VIEWS)} with their cameras; wrong view: the {VIEWS[BAD]} view of another held-out shape; "
              f"the proxy's default steps; device: {data['device']}; default options of every aggregator."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=int, default=20)
    ap.add_argument("--first", type=int, default=100, help="offset of the first held-out seed")
    ap.add_argument("--part", default="0/1", help="K/P: this process takes shapes K, K+P, K+2P, ...")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-auto", action="store_true", help="skip the auto comparison (the slowest)")
    ap.add_argument("--save", help="write the per-shape scores as JSON (to merge parts)")
    ap.add_argument("--merge", nargs="+", help="JSON files of parts: print their merged table")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.merge:
        data = merge([json.load(open(p)) for p in a.merge])
    else:
        data = measure(a)
        if a.save:
            with open(a.save, "w") as f:
                json.dump(data, f)
    text = table(data)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
