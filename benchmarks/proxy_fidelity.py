"""Does the proxy model use its views? Four views against one, through ``trellis_mv.eval``, paired per object.

Held-out objects from the front view alone and from the four standard views with
``multidiffusion``, the same noise for both; every score of the harness
(:func:`trellis_mv.eval.score_voxels`) as a per-object paired difference (4 views minus 1):
mean, 95% bootstrap interval, Wilcoxon p (:func:`trellis_mv.eval.paired`). Beside them, what a
perfect model would score from the same views (``--reference-samples`` draws of
:func:`trellis_mv.eval.posterior_draws` a shape and view set, scored like results): the IoU
(also against a random other shape, :func:`trellis_mv.eval.reference_iou`), and the colour of
the surface the front hides and the four views show, for a perfect model that samples (the
draws' mean) and one that guesses best (each voxel the colour most draws give it), with the
model's gain paired against the perfect sampler's. ``--reference-samples 0`` skips them;
``--results DIR`` reads the jobs of an evaluation folder that has multidiffusion at 1 and 4
views (such as the committed full table) instead of generating them; ``--weights FILE``
generates them with other proxy weights (two such folders pair with ``paired_runs.py``).

    python benchmarks/proxy_fidelity.py --objects 240 --seeds 3 --device cuda --out runs/fidelity
    python benchmarks/proxy_fidelity.py --results benchmarks/results/proxy_table_H200 --reference-samples 16   # CPU
    python benchmarks/proxy_fidelity.py --objects 2 --seeds 1 --steps 2 --reference-samples 0 --out /tmp/fidelity   # smallest
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import trellis_mv
import trellis_mv.eval as ev
from trellis_mv.eval._voxel_metrics import VoxelTruth, score_voxels, score_voxels_batch
from trellis_mv.proxy import PALETTE, VIEW_SETS, make_shape, palette_index

METRICS = ("iou", "first_silhouette_iou", "given_color_acc", "hidden_color_acc_seen", "hidden_color_acc_unseen",
           "heldout_color_error")
HIDDEN = "hidden_color_acc_seen"


def _one_thread() -> None:
    torch.set_num_threads(1)


def _references(obj: str, samples: int) -> dict[int, dict[str, float]]:
    """A perfect model's scores on one object from 1 and from 4 views (CPU work: shapes drawn, rendered, scored)."""
    shape = make_shape(int(obj))
    out = {}
    for n in (1, 4):
        views = VIEW_SETS[n]
        draws = ev.posterior_draws(shape, views, samples=samples)
        ref = ev.reference_iou(shape, views, samples=samples, draws=draws)
        truth = VoxelTruth.of(shape)
        if draws:
            occ = torch.from_numpy(np.stack([d.occupancy for d in draws]))
            col = torch.from_numpy(np.stack([d.colors for d in draws]))
            sampled = float(score_voxels_batch(occ, col, [truth] * len(draws), [views] * len(draws))[HIDDEN].nanmean())
            votes = np.stack([(palette_index(col.numpy()) == c) & occ.numpy() for c in range(len(PALETTE))]).sum(1)
            best_occ = occ.double().mean(0) >= 0.5
            best_col = torch.from_numpy(np.asarray(PALETTE, np.float32)[votes.argmax(0)]) * best_occ[..., None]
            best = float(score_voxels_batch(best_occ[None], best_col[None], [truth], [views])[HIDDEN][0])
        else:  # none found: the views fix the shape as far as the generator goes
            sampled = best = score_voxels(shape.occupancy, shape.colors, shape, views)[HIDDEN]
        out[n] = {"ideal": ref["ideal"], "random": ref["random"], "sampled": sampled, "best": best}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=240)
    p.add_argument("--first-object", type=int, default=10000, help="counted from the proxy's held-out seeds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", type=Path, help="proxy weights to measure (default: the shipped ones)")
    p.add_argument("--reference-samples", type=int, default=8)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes drawing the reference points (about 1.4 s a shape on one core)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="results folder (resumed if it exists)")
    where.add_argument("--results", type=Path, help="read the jobs of this evaluation folder instead of generating them")
    a = p.parse_args()
    if a.weights is not None and a.out is None:
        p.error("--weights generates the jobs: pass --out DIR, not --results")
    if a.weights is not None and not a.weights.is_file():
        p.error(f"--weights {a.weights}: no such file (a .safetensors written by python -m trellis_mv.proxy.train)")
    if a.out is not None:
        params = {s: {"steps": a.steps} for s in ("sparse_structure", "texture")} if a.steps else None
        adapter = None
        if a.weights is not None:  # the harness's own loader (device checked first), with other weights
            device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
            adapter = trellis_mv.load_adapter("proxy", device=device, weights=a.weights)
        ev.evaluate(out=a.out, dataset="proxy", first_object=a.first_object, objects=a.objects, views=[1, 4],
                    aggregators=["multidiffusion"], seeds=a.seeds, device=a.device, params=params, progress=False,
                    adapter=adapter)
    per: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rec in ev.read_results(a.out or a.results):
        if rec["aggregator"] == "multidiffusion" and len(rec["views"]) in (1, 4):
            for m, v in rec["metrics"].items():
                if v is not None:
                    per[(rec["object"], len(rec["views"]))][m].append(v)
    objects = sorted({o for o, n in per if (o, 1) in per and (o, 4) in per})
    if not objects:
        raise SystemExit(f"{a.out or a.results} holds no object with multidiffusion results at both 1 and 4 views")
    lines = ["| score | 1 view | 4 views | 4 - 1 (95% CI) | p |", "|---|---|---|---|---|"]
    for m in METRICS:
        pairs = [(np.mean(per[(o, 1)][m]), np.mean(per[(o, 4)][m])) for o in objects if per[(o, 1)][m] and per[(o, 4)][m]]
        if not pairs:
            continue
        one, four = (np.array(x) for x in zip(*pairs))
        d = ev.paired(four, one)
        lines.append(f"| {m} | {one.mean():.3f} | {four.mean():.3f} | {d.diff:+.3f} ({d.lo:+.3f}, {d.hi:+.3f}) | "
                     f"{d.p:.2g} |")
    if a.reference_samples:
        with ProcessPoolExecutor(max(1, a.workers), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            pairs = list(pool.map(_references, objects, [a.reference_samples] * len(objects), chunksize=4))
        ref = {(n, k): np.array([r[n][k] for r in pairs]) for n in (1, 4) for k in ("ideal", "random", "sampled", "best")}
        lines.append(f"\nIoU reference points: random other shape {ref[(1, 'random')].mean():.3f}; "
                     f"a perfect model from 1 view {ref[(1, 'ideal')].mean():.3f}, from 4 views {ref[(4, 'ideal')].mean():.3f}.")
        model = {n: np.array([np.mean(per[(o, n)][HIDDEN]) if per[(o, n)][HIDDEN] else np.nan for o in objects]) for n in (1, 4)}
        ok = np.isfinite(model[1]) & np.isfinite(model[4]) & np.isfinite(ref[(1, "sampled")]) & np.isfinite(ref[(4, "sampled")])
        lines += [f"\n{HIDDEN} of a perfect model ({a.reference_samples} posterior draws a shape and view set; "
                  f"{ok.sum()} objects):",
                  "| model | 1 view | 4 views | 4 - 1 |", "|---|---|---|---|"]
        for name, one, four in (("this model (multidiffusion)", model[1], model[4]),
                                ("perfect, sampling", ref[(1, "sampled")], ref[(4, "sampled")]),
                                ("perfect, best guess", ref[(1, "best")], ref[(4, "best")])):
            lines.append(f"| {name} | {one[ok].mean():.3f} | {four[ok].mean():.3f} | {(four - one)[ok].mean():+.3f} |")
        d = ev.paired(model[4][ok] - model[1][ok], ref[(4, "sampled")][ok] - ref[(1, "sampled")][ok])
        lines.append(f"\nThe model's gain minus the perfect sampler's: {d.diff:+.3f} ({d.lo:+.3f}, {d.hi:+.3f}), p {d.p:.2g}.")
    print(f"{len(objects)} objects ({torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}), "
          f"multidiffusion, 1 vs 4 views:\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
