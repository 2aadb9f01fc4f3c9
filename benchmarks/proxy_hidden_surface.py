"""What the front view tells of the surface it hides: the proxy against a perfect model, split by how well the draws know it.

``hidden_color_acc_seen`` counts the surface faces the front view hides and one of the four
standard views shows. A perfect model's score there from the front alone is estimated by
:func:`trellis_mv.eval.posterior_draws`, which keep the draws of every part and side paint the
front shows any pixel of, so they also know where a partly seen part or patch ends. This
script splits those faces, per held-out object, into

* ``exact``: faces where the draws know only what the front view shows (faces of voxels it
  shows, of parts and paints it does not show, which are drawn afresh, and of the top's colour
  and whole-side paints, which it shows);
* ``partly seen``: faces of voxels it does not show on a part it shows some of, or on a body
  with a patch it shows some of (where the patch ends decides the colour),

and scores the proxy (one sample from the front view, seed = object index) and the draws on
each, paired per object. A perfect model from the front lies between the draws' score on all
faces (the draws know too much on the partly seen ones) and, as a lower bound, the draws'
score on the exact faces with the proxy's own on the partly seen ones (an estimate the front
view allows).

    python benchmarks/proxy_hidden_surface.py --objects 60 --workers 2 --out benchmarks/results/proxy_hidden_surface_cpu.md
    python benchmarks/proxy_hidden_surface.py --objects 2 --samples 2 --steps 2   # smallest
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import trellis_mv.eval as ev
from trellis_mv.eval._voxel_metrics import VoxelTruth, _face_labels, _palette_labels
from trellis_mv.proxy import HELD_OUT_SEED, NAMED_VIEWS, ProxyAdapter, Shape, input_views, make_shape
from trellis_mv.voxels import trace

SUBSETS = ("all", "exact", "partly seen")
_ADAPTER: dict[str, ProxyAdapter] = {}


def _one_thread() -> None:
    torch.set_num_threads(1)


def _subsets(shape: Shape, truth: VoxelTruth) -> dict[str, np.ndarray]:
    """The hidden-and-seen faces of ``shape`` from the front (``bool [6, R, R, R]``), split as the module says."""
    assert shape.labels is not None and shape.sides is not None
    hits = trace(torch.from_numpy(shape.occupancy)[None], ["front"], 64, names=NAMED_VIEWS)
    v = hits.voxel[hits.hit].numpy()
    shows = np.zeros_like(shape.occupancy)
    shows[v[:, 0], v[:, 1], v[:, 2]] = True
    parts = [int(c) for c in np.unique(shape.labels[shows]) if c > 0]
    patches = [int(n) for n in np.unique(shape.sides[shows]) if n >= 0 and shape.parts[1 + n].startswith("patch")]
    body = shape.labels == 0
    loose = (np.isin(shape.labels, parts) | (body & (np.isin(shape.sides, patches) | ((shape.sides < 0) & bool(patches))))
             ) & ~shows
    faces = (truth.surface & truth.seen_any & ~truth.seen("front")).numpy()
    return {"all": faces, "exact": faces & ~loose[None], "partly seen": faces & loose[None]}


def _accuracy(occupancy: torch.Tensor, colors: torch.Tensor, truth: VoxelTruth, faces: dict[str, np.ndarray]
              ) -> dict[str, float]:
    given = _face_labels(occupancy[None].bool(), _palette_labels(colors[None].float()))[0].numpy()
    ok = (given == truth.labels.numpy())[None]
    return {k: float((ok & f).sum() / f.sum()) if f.sum() else float("nan") for k, f in faces.items()}


def _one(obj: int, samples: int, steps: int | None) -> dict[str, dict[str, float]]:
    """The proxy's and the draws' accuracy on each subset of one object, and each subset's share of its faces."""
    shape = make_shape(HELD_OUT_SEED + obj)
    truth = VoxelTruth.of(shape)
    faces = _subsets(shape, truth)
    adapter = _ADAPTER.setdefault("proxy", ProxyAdapter())
    params = {s: {"steps": steps} for s in ("sparse_structure", "texture")} if steps else None
    view = input_views(torch.from_numpy(shape.occupancy), torch.from_numpy(shape.colors), ["front"])[0]
    out = adapter.sample([view], seed=obj, params=params)
    model = _accuracy(out.occupancy[0], out.colors[0], truth, faces)
    draws = ev.posterior_draws(shape, ["front"], samples=samples) or [shape]
    per = [_accuracy(torch.from_numpy(d.occupancy), torch.from_numpy(d.colors), truth, faces) for d in draws]
    total = max(int(faces["all"].sum()), 1)
    share = {k: float(f.sum() / total) for k, f in faces.items()}
    perfect = {k: float(np.mean([p[k] for p in per])) for k in SUBSETS}  # nan where the object has no such face
    known = lambda k, acc: share[k] * acc[k] if share[k] else 0.0
    return {"model": model, "perfect": perfect, "share": share,
            "lower": {"all": known("exact", perfect) + known("partly seen", model)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=60)
    p.add_argument("--first-object", type=int, default=10000, help="counted from the proxy's held-out seeds")
    p.add_argument("--samples", type=int, default=8, help="posterior draws an object")
    p.add_argument("--steps", type=int, default=None, help="sampler steps a stage (default: the proxy's)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    a = p.parse_args()
    start = time.perf_counter()
    objects = list(range(a.first_object, a.first_object + a.objects))
    with ProcessPoolExecutor(max(1, a.workers), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        rows = [r for r in pool.map(_one, objects, [a.samples] * len(objects), [a.steps] * len(objects)) if r["share"]["all"]]
    lines = ["| faces | share | this model | perfect (draws) | model - perfect (95% CI) | p |", "|---|---|---|---|---|---|"]
    for k in SUBSETS:
        m = np.array([r["model"][k] for r in rows])
        q = np.array([r["perfect"][k] for r in rows])
        ok = np.isfinite(m) & np.isfinite(q)
        d = ev.paired(m[ok], q[ok])
        share = float(np.mean([r["share"][k] for r in rows]))
        lines.append(f"| {k} ({ok.sum()} objects) | {share:.3f} | {m[ok].mean():.3f} | {q[ok].mean():.3f} | "
                     f"{d.diff:+.3f} ({d.lo:+.3f}, {d.hi:+.3f}) | {d.p:.2g} |")
    lower = float(np.mean([r["lower"]["all"] for r in rows]))
    upper = float(np.nanmean([r["perfect"]["all"] for r in rows]))
    lines.append(f"\nA perfect model from the front view: between {lower:.3f} and {upper:.3f} on these faces, so its gain "
                 f"to four views (which show every one of them) is between {1 - upper:+.3f} and {1 - lower:+.3f}.")
    lines.append(f"\n{len(rows)} held-out objects from #{a.first_object}, {a.samples} draws each, one proxy sample each "
                 f"(seed = object index, the shipped weights); cpu, {a.workers} processes, "
                 f"{time.perf_counter() - start:.0f} s. Command: `python benchmarks/proxy_hidden_surface.py "
                 f"--objects {a.objects} --samples {a.samples} --workers {a.workers}`.")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(f"# The surface the front view hides: the proxy against a perfect model\n\n{text}\n")


if __name__ == "__main__":
    main()
