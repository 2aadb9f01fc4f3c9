"""Per-element aggregators against plain averaging on the proxy model, paired per shape.

Held-out shapes (seeds >= ``HELD_OUT_SEED``), four views (front, right, back, left as the
proxy names them, with their cameras), one sample per shape from the same noise for every
method. Per shape: IoU against the ground truth, and the colour error (mean absolute RGB,
0-1) of renders from directions no input was taken from (four diagonals at 20 degrees
elevation and the top), which is mostly surface the front view does not show.

1. ``multidiffusion`` against ``visibility`` (on both stages, and on the texture stage alone,
   where the voxels are fixed and occlusion exact), ``attention`` and ``robust`` at N = 4;
2. one of the four views (the back one) replaced by the back view of another shape:
   how much ``multidiffusion`` and ``robust`` lose against clean ``multidiffusion``;
3. ``auto`` (:func:`trellis_mv_spatial.auto_generate`) against each shape's best single view
   chosen with the ground truth (an oracle no user has) and against the front view alone.

Every comparison is paired per shape: mean difference, 95% interval (normal approximation),
and a two-sided sign-flip permutation p-value. Cost: model forwards and seconds per generation.

    python benchmarks/spatial_quality.py --shapes 20 --threads 2 --out benchmarks/results/spatial_quality_cpu.md
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import numpy as np
import torch
from trellis_mv_spatial import auto_generate

import trellis_mv
from trellis_mv.proxy import HELD_OUT_SEED, ProxyPipeline, color_error, input_views, iou, make_shape, parse_view

VIEWS = ["front", "right", "back", "left"]
UNSEEN = ["az45el20", "az135el20", "az225el20", "az315el20", "top"]
BAD = 2  # the view replaced by a wrong object's


def paired(a: list[float], b: list[float], rng: np.random.Generator, draws: int = 20000) -> str:
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    half = 1.96 * d.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    signs = rng.choice([-1.0, 1.0], size=(draws, n))
    p = (np.abs((signs * d).mean(1)) >= abs(d.mean()) - 1e-12).mean()
    return f"{d.mean():+.4f} ± {half:.4f} | {max(p, 1 / draws):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=int, default=20)
    ap.add_argument("--first", type=int, default=100, help="offset of the first held-out seed")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-auto", action="store_true", help="skip the auto comparison (the slowest)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = ProxyPipeline()
    cams = [parse_view(v) for v in VIEWS]
    rng = np.random.default_rng(0)
    m: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def score(key: str, result, shape, t: float, calls: int) -> None:
        occ, col = result.occupancy[0], result.colors[0]
        m[key]["iou"].append(iou(occ, shape.occupancy))
        m[key]["color"].append(color_error(occ, col, shape.occupancy, shape.colors, UNSEEN))
        m[key]["sec"].append(t)
        m[key]["calls"].append(calls)

    def run(key: str, spec, images, shape, seed: int, cameras=cams) -> None:
        t0 = time.perf_counter()
        per_stage = isinstance(spec, dict)
        out = trellis_mv.run_multi_image(pipe, images, mode="multidiffusion" if per_stage else spec,
                                         stages=spec if per_stage else None, cameras=cameras, seed=seed)
        result, patches = out.output, out.patches
        score(key, result, shape, time.perf_counter() - t0, sum(p.model_calls for p in patches.values()))

    for i in range(a.shapes):
        shape = make_shape(HELD_OUT_SEED + a.first + i)
        wrong = make_shape(HELD_OUT_SEED + a.first + i + 10_000)
        views = list(input_views(shape.occupancy, shape.colors, VIEWS))
        bad = list(views)
        bad[BAD] = input_views(wrong.occupancy, wrong.colors, [VIEWS[BAD]])[0]
        for name in ("multidiffusion", "visibility", "attention", "robust"):
            run(name, name, views, shape, i)
        run("visibility, texture only", {"texture": "visibility"}, views, shape, i)
        for name in ("multidiffusion", "robust"):
            run(f"{name}, wrong view", name, bad, shape, i)
        for v in range(len(VIEWS)):
            run(f"single {VIEWS[v]}", "multidiffusion", [views[v]], shape, i, cameras=[cams[v]])
        best = max(range(len(VIEWS)), key=lambda v: m[f"single {VIEWS[v]}"]["iou"][-1])
        for metric in ("iou", "color", "sec", "calls"):
            m["best single view (oracle)"][metric].append(m[f"single {VIEWS[best]}"][metric][-1])
        if not a.no_auto:
            t0 = time.perf_counter()
            out = auto_generate(pipe, views, cams, seed=i)
            score("auto", out.result, shape, time.perf_counter() - t0, out.model_calls)
            m["auto"]["choice"].append(out.choice)  # type: ignore[arg-type]
        print(f"shape {i + 1}/{a.shapes}: " + ", ".join(f"{k} {v['iou'][-1]:.3f}" for k, v in m.items()), flush=True)

    def mean(key: str, metric: str) -> str:
        return f"{np.mean(m[key][metric]):.3f}"

    lines = ["| method | IoU ↑ | colour err, unseen views ↓ | model forwards | s / generation |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {mean(k, 'iou')} | {mean(k, 'color')} | {np.mean(m[k]['calls']):.0f} | {mean(k, 'sec')} |" for k in m]
    lines += ["", "Paired differences (first minus second), mean ± 95% half-width | sign-flip p:", "",
              "| comparison | ΔIoU | p | Δcolour err | p |", "|---|---|---|---|---|"]
    pairs = [(k, "multidiffusion") for k in ("visibility", "visibility, texture only", "attention", "robust")]
    pairs += [("multidiffusion, wrong view", "multidiffusion"), ("robust, wrong view", "multidiffusion"),
              ("robust, wrong view", "multidiffusion, wrong view")]
    if not a.no_auto:
        pairs += [("auto", "best single view (oracle)"), ("auto", "single front"), ("auto", "multidiffusion")]
    for x, y in pairs:
        lines.append(f"| {x} − {y} | {paired(m[x]['iou'], m[y]['iou'], rng)} | {paired(m[x]['color'], m[y]['color'], rng)} |")
    for metric, label in (("iou", "IoU"), ("color", "colour error")):
        clean = np.mean(m["multidiffusion"][metric])
        lines.append(f"{label} with the wrong view minus clean multidiffusion: multidiffusion "
                     f"{np.mean(m['multidiffusion, wrong view'][metric]) - clean:+.4f}, robust "
                     f"{np.mean(m['robust, wrong view'][metric]) - clean:+.4f}.")
    lines.insert(len(lines) - 2, "")
    if not a.no_auto:
        choices = defaultdict(int)
        for c in m["auto"]["choice"]:
            choices[c] += 1
        lines.append("auto chose: " + ", ".join(f"{k} {v}" for k, v in sorted(choices.items(), key=lambda kv: -kv[1])) + ".")
    dev = f"cpu, {torch.get_num_threads()} threads (shared machine: seconds are indicative only)"
    lines += ["", f"{a.shapes} held-out shapes (seeds HELD_OUT_SEED + {a.first} ...), one sample each, "
              f"views {', '.join(VIEWS)} at cameras {cams}; wrong view: the {VIEWS[BAD]} view of another held-out shape; "
              f"steps {pipe.params['sparse_structure']['steps']}+{pipe.params['texture']['steps']}; device: {dev}; "
              "default options of every aggregator."]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
