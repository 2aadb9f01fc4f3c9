"""What limits the proxy's fidelity to the view it is given: training, sampling, a stage of the model, or the data?

One view (``front``) of held-out proxy shapes, scored by the harness's own
:func:`trellis_mv.eval.score_voxels` measures. Every row changes one thing against the
shipped model and is paired with it per object (same shapes, same noise): mean difference,
95% bootstrap interval, Wilcoxon p (:func:`trellis_mv.eval.paired`).

* ``ceiling``: the ground truth's own latents (``encode_structure`` of its occupancy, its
  colours as the colour latent) decoded and scored: what a perfect model scores.
* ``steps x4``: the shipped model with four times the sampler steps (sampling error).
* ``weights NAME``: other weights (``--weights NAME=FILE``, e.g. an earlier, shorter-trained
  checkpoint from git history): the training axis.
* ``true structure``: the structure stage replaced by the ground truth's latent; the texture
  stage samples colours on the true voxels (the texture stage alone).
* ``true colours``: the model's structure, each voxel coloured as the nearest true voxel
  (what colour accuracy the structure alone allows).
* ``the view itself``: how many of the view's pixels inside the true silhouette show the true
  palette colour once the shading is divided out (each pixel's colour scaled to the
  palette's brightness): whether the 64-pixel view carries the information.

    python benchmarks/proxy_capacity.py --objects 96 --weights first=FILE --out benchmarks/results/proxy_capacity_cpu.md
    python benchmarks/proxy_capacity.py --objects 2 --steps 2   # smallest
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

import trellis_mv.eval as ev
from trellis_mv.eval._voxel_metrics import VoxelTruth, score_voxels_batch
from trellis_mv.proxy import HELD_OUT_SEED, PALETTE, ProxyAdapter, input_views, make_shape
from trellis_mv.proxy._models import decode_structure, encode_structure
from trellis_mv.run import run_many

METRICS = ("first_silhouette_iou", "given_color_acc", "iou", "hidden_color_acc_seen")
VIEW = "front"


def _sample(adapter: ProxyAdapter, views: list[torch.Tensor], seeds: list[int], steps: int,
            structure: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample per object from its view; ``structure`` (latents) replaces the structure stage's result."""
    params = {s: {"steps": steps} for s in ("sparse_structure", "texture")}
    sampler = adapter.samplers["sparse_structure"]
    if structure is not None:  # the structure stage answers the true latents; the texture stage runs as usual
        sampler.sample = lambda *a, **k: SimpleNamespace(samples=structure.to(adapter.device))  # type: ignore[method-assign]
    try:
        out = run_many(adapter, [[v] for v in views], seeds=seeds, params=params).output
    finally:
        vars(sampler).pop("sample", None)
    return out.occupancy.cpu(), out.colors.cpu()


def _nearest_true_colours(occ: torch.Tensor, truth_occ: np.ndarray, truth_col: np.ndarray) -> torch.Tensor:
    """Every voxel coloured as the nearest voxel of the ground truth."""
    _, idx = ndimage.distance_transform_edt(~truth_occ, return_indices=True)
    col = truth_col[idx[0], idx[1], idx[2]]
    return torch.from_numpy(col).float() * occ[..., None]


def _view_readable(view: torch.Tensor, truth: VoxelTruth) -> float:
    """Fraction of true-silhouette pixels whose shading-free colour is the true palette colour."""
    hit, labels = truth.view(VIEW)
    pal = torch.tensor(PALETTE, dtype=torch.float32)
    px = view.permute(1, 2, 0)  # [S, S, 3]; shading scales a pixel's albedo by one factor
    scale = (px * pal[:, None, None, :]).sum(-1) / (px * px).sum(-1).clamp_min(1e-9)  # best factor per palette entry
    err = ((px[None] * scale[..., None] - pal[:, None, None, :]) ** 2).sum(-1)
    right = (err.argmin(0) == labels) & hit
    return float(right.sum() / hit.sum().clamp_min(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=96)
    p.add_argument("--first-object", type=int, default=30000, help="counted from the proxy's held-out seeds")
    p.add_argument("--steps", type=int, default=None, help="sampler steps a stage (default: the model's own, 12)")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=FILE", help="other weights to compare")
    p.add_argument("--out", type=Path, default=None, help="write the table (Markdown) and a JSON beside it")
    a = p.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    shapes = [make_shape(HELD_OUT_SEED + a.first_object + i) for i in range(a.objects)]
    truths = VoxelTruth.many(shapes)
    views = [input_views(s.occupancy, s.colors, [VIEW])[0] for s in shapes]
    seeds = list(range(a.objects))
    adapter = ProxyAdapter()
    steps = a.steps or adapter.default_params["texture"]["steps"]

    def score(occ: torch.Tensor, col: torch.Tensor) -> dict[str, np.ndarray]:
        s = score_voxels_batch(occ, col, truths, [[VIEW]] * a.objects)
        return {m: s[m].numpy() for m in METRICS}

    true_occ = torch.from_numpy(np.stack([s.occupancy for s in shapes]))
    true_col = torch.from_numpy(np.stack([s.colors for s in shapes])).float()
    occ, col = _sample(adapter, views, seeds, steps)
    rows: dict[str, dict[str, np.ndarray]] = {"shipped model": score(occ, col)}
    runs: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
        "ceiling: the truth's own latents, decoded": lambda: (
            decode_structure(encode_structure(true_occ)), ((true_col * 2 - 1).clamp(-1, 1) + 1) / 2),
        "true colours on the model's structure": lambda: (
            occ, torch.stack([_nearest_true_colours(occ[k], shapes[k].occupancy, shapes[k].colors) for k in range(a.objects)])),
        "true structure, the model's texture stage": lambda: _sample(adapter, views, seeds, steps,
                                                                      structure=encode_structure(true_occ)),
    }
    for name, run in runs.items():
        rows[name] = score(*run())
    rows[f"steps x4 ({4 * steps})"] = score(*_sample(adapter, views, seeds, 4 * steps))
    for spec in a.weights:
        name, _, file = spec.partition("=")
        other = ProxyAdapter(weights=file)
        rows[f"weights {name}"] = score(*_sample(other, views, seeds, steps))
    readable = np.array([_view_readable(v, t) for v, t in zip(views, truths)])

    base = rows["shipped model"]
    head = "| model (1 view, front) | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    record: dict[str, Any] = {"objects": a.objects, "first_object": a.first_object, "steps": steps, "rows": {}}
    for name, scores in rows.items():
        cells = []
        for m in METRICS:
            mean = float(np.nanmean(scores[m]))
            if name == "shipped model":
                cells.append(f"{mean:.3f}")
                continue
            d = ev.paired(scores[m], base[m])
            cells.append(f"{mean:.3f} ({d.diff:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}], p {d.p:.1g})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        record["rows"][name] = {m: float(np.nanmean(scores[m])) for m in METRICS}
    lines.append("")
    lines.append(f"The view itself: {readable.mean():.3f} of the pixels inside the true silhouette show the true palette "
                 f"colour once shading is divided out (min {readable.min():.3f}).")
    record["view_readable"] = float(readable.mean())
    seconds = time.perf_counter() - start
    lines.append(f"\n{a.objects} held-out objects from #{a.first_object}, one sample each (seed = object index), {steps} "
                 f"steps a stage; cpu, {torch.get_num_threads()} threads, {seconds:.0f} s. Cells: mean (paired difference "
                 "from the shipped model [95% bootstrap interval], Wilcoxon p).")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(f"# What limits the proxy's fidelity\n\n{text}\n\nCommand: `python benchmarks/proxy_capacity.py "
                         f"--objects {a.objects} {' '.join('--weights ' + w for w in a.weights)}`\n")
        record["seconds"] = round(seconds, 1)
        a.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
