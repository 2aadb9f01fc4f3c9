"""Scores of one generation against a ground-truth mesh or held-out photos (voxels against the proxy's shapes: ``score_voxels``).

Meshes are compared as the field does: points sampled on both surfaces, each normalised
(bounding-box centre at the origin, longest side 1), the generation aligned to the truth
by ICP with scale (``trimesh.registration.icp``) from the 24 axis-aligned starting
rotations (generated objects are not aligned to the inputs), then Chamfer distance
(mean of both directions' mean nearest-neighbour distance, ``scipy`` KD-tree), F-score at
two thresholds and the IoU of the surface voxels at ``32^3``.

>>> import trimesh
>>> box = trimesh.creation.box((1.0, 0.6, 0.3))
>>> turned = box.copy().apply_transform(trimesh.transformations.rotation_matrix(1.5708, [0, 1, 0]))
>>> same, moved = score_mesh(box, box), score_mesh(turned.apply_scale(2.0), box)
>>> other = score_mesh(trimesh.creation.icosphere(), box)
>>> abs(moved["chamfer"] - same["chamfer"]) < 0.002, other["chamfer"] > 2 * same["chamfer"], moved["fscore@0.05"]
(True, True, 1.0)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["FSCORE_THRESHOLDS", "align", "image_scores", "lower_is_better", "score_mesh"]

#: F-score thresholds, in units of the normalised object's longest side.
FSCORE_THRESHOLDS = (0.02, 0.05)
_LOWER = ("chamfer", "error", "seconds", "memory", "forwards", "rows")


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (distances, errors and costs).

    >>> lower_is_better("chamfer"), lower_is_better("fscore@0.02"), lower_is_better("heldout_color_error")
    (True, False, True)
    """
    return any(word in metric for word in _LOWER)


def _rotations() -> list[np.ndarray]:
    """The 24 proper rotations that map the coordinate axes onto themselves."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            r = np.zeros((3, 3))
            r[range(3), perm] = signs
            if np.linalg.det(r) > 0:
                out.append(r)
    return out


def _normalise(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(0), points.max(0)
    return (points - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-12)


def _surface_points(mesh: Any, count: int, seed: int) -> np.ndarray:
    import trimesh

    if len(getattr(mesh, "faces", [])) == 0:
        return np.zeros((0, 3))
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float64)


def align(source: np.ndarray, target: np.ndarray, *, search_points: int = 512, refine_points: int = 4096,
          iterations: int = 30) -> np.ndarray:
    """Homogeneous transform (rotation, translation, uniform scale) taking ``source`` points onto ``target``.

    ICP with scale (``trimesh.registration.icp``) from each of the 24 axis-aligned starting
    rotations on ``search_points`` points of each cloud; the start with the lowest cost is
    then refined on ``refine_points``.
    """
    from trimesh.registration import icp

    sub = lambda x, n=search_points: x[:: max(1, len(x) // n)]
    best, best_cost = np.eye(4), np.inf
    for rot in _rotations():
        start = np.eye(4)
        start[:3, :3] = rot
        matrix, _, cost = icp(sub(source), sub(target), initial=start, max_iterations=iterations // 2, reflection=False,
                              scale=True)
        if cost < best_cost:
            best, best_cost = matrix, cost
    return icp(sub(source, refine_points), sub(target, refine_points), initial=best, max_iterations=iterations,
               reflection=False, scale=True)[0]


def score_mesh(pred: Any, true: Any, *, points: int = 20000, seed: int = 0, voxels: int = 32) -> dict[str, float]:
    """Chamfer, F-scores and surface-voxel IoU of mesh ``pred`` against ``true`` after normalisation and alignment."""
    from scipy.spatial import cKDTree

    q = _normalise(_surface_points(true, points, seed))
    p = _surface_points(pred, points, seed + 1)
    if len(p) == 0:
        return {"chamfer": 1.0, **{f"fscore@{t:g}": 0.0 for t in FSCORE_THRESHOLDS}, "voxel_iou": 0.0}
    p = _normalise(p)
    p = (np.c_[p, np.ones(len(p))] @ align(p, q).T)[:, :3]
    d_pq = cKDTree(q).query(p)[0]
    d_qp = cKDTree(p).query(q)[0]
    out = {"chamfer": float(0.5 * (d_pq.mean() + d_qp.mean()))}
    for t in FSCORE_THRESHOLDS:
        precision, recall = float((d_pq < t).mean()), float((d_qp < t).mean())
        out[f"fscore@{t:g}"] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    cells = lambda x: {tuple(v) for v in np.clip(np.floor((x + 0.5) * voxels), 0, voxels - 1).astype(int)}
    a, b = cells(p), cells(q)
    out["voxel_iou"] = len(a & b) / max(len(a | b), 1)
    return out


def image_scores(rendered: torch.Tensor, photo: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and, with scikit-image installed, SSIM of a render against a photo (both ``[3, H, W]`` in ``[0, 1]``)."""
    a = rendered.detach().float().cpu().clamp(0, 1)
    b = photo.detach().float().cpu().clamp(0, 1)
    mse = float(((a - b) ** 2).mean())
    out = {"psnr": 10 * float(np.log10(1.0 / max(mse, 1e-10)))}
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return out
    out["ssim"] = float(structural_similarity(a.numpy(), b.numpy(), channel_axis=0, data_range=1.0))
    return out


def view_scores(
    render: Callable[[Any, Any, int], torch.Tensor], output: Any, photos: Mapping[str, torch.Tensor],
    cameras: Mapping[str, Any], prefix: str,
) -> dict[str, float]:
    """Mean PSNR/SSIM of ``output``'s renders at the cameras of ``photos`` (keys ``{prefix}_psnr``, ...)."""
    per: dict[str, list[float]] = {}
    for name, photo in photos.items():
        image = render(output, cameras[name], int(photo.shape[-1]))
        for k, v in image_scores(image, photo).items():
            per.setdefault(f"{prefix}_{k}", []).append(v)
    return {k: float(np.mean(v)) for k, v in per.items()}
