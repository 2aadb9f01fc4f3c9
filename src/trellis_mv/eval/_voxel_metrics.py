"""Accuracy of a generated voxel shape against the proxy's ground truth, and what the given views could tell.

:func:`score_voxels` is the one entry point: shape accuracy (:func:`iou`, :func:`chamfer`,
:func:`fscore`), fidelity to the views that were given (silhouette and colour), colour
accuracy on the surface the first view does not show (split by whether another of the
standard views shows it), and colour error of renders from viewpoints no standard view
uses. :func:`reference_iou` gives the reference points an IoU is read against.

>>> import torch
>>> a = torch.zeros(16, 16, 16, dtype=torch.bool); a[4:8, 4:8, 4:8] = True
>>> iou(a, a), chamfer(a, a), fscore(a, a)
(1.0, 0.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from trellis_mv.proxy import (  # the proxy's shapes, with its camera names
    COMPONENTS,
    HELD_OUT_SEED,
    NAMED_VIEWS,
    VIEW_SETS,
    Shape,
    View,
    make_shape,
    palette_index,
    render,
    visible_faces,
)
from trellis_mv.voxels import FACES, trace

__all__ = ["HELD_OUT_VIEWS", "NEAREST_VOXEL", "chamfer", "color_error", "fscore", "iou", "reference_iou", "score_voxels"]

#: Views no standard view set uses: the four diagonals from 30 degrees up (``heldout_color_error`` of :func:`score_voxels`).
HELD_OUT_VIEWS: list[str] = ["az45el30", "az135el30", "az225el30", "az315el30"]
#: A face whose voxel the result leaves empty takes the colour of the nearest occupied voxel of
#: the result within this distance (in voxels; ``sqrt(3)`` reaches the 26 neighbours).
NEAREST_VOXEL = math.sqrt(3)
_SIZE = 64


def iou(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Intersection over union of two occupancy grids."""
    pred, true = torch.as_tensor(pred).bool(), torch.as_tensor(true).bool()
    union = (pred | true).sum().item()
    return 1.0 if union == 0 else (pred & true).sum().item() / union


def chamfer(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Symmetric Chamfer distance between occupied voxel centres, in voxels (mean of both directions)."""
    p = torch.as_tensor(pred).bool().nonzero().float()
    q = torch.as_tensor(true).bool().nonzero().float()
    if len(p) == 0 or len(q) == 0:
        return float("nan") if len(p) == len(q) == 0 else float(torch.as_tensor(pred).shape[0])
    d = torch.cdist(p, q)
    return 0.5 * (d.min(1).values.mean() + d.min(0).values.mean()).item()


def fscore(pred: torch.Tensor, true: torch.Tensor, threshold: float = 1.0) -> float:
    """F-score of occupied voxel centres at ``threshold`` (in voxels).

    Precision: the fraction of predicted centres within ``threshold`` of a true one;
    recall: the fraction of true centres within ``threshold`` of a predicted one; F is
    their harmonic mean (0 when either shape is empty and the other is not).

    >>> a = torch.zeros(16, 16, 16, dtype=torch.bool); a[4:8, 4:8, 4:8] = True
    >>> b = torch.roll(a, 1, 0)  # shifted by one voxel: every centre has a neighbour at distance 1
    >>> fscore(a, b), fscore(a, b, threshold=0.5) == 2 * 0.75 * 0.75 / 1.5
    (1.0, True)
    """
    p = torch.as_tensor(pred).bool().nonzero().float()
    q = torch.as_tensor(true).bool().nonzero().float()
    if len(p) == 0 or len(q) == 0:
        return 1.0 if len(p) == len(q) == 0 else 0.0
    d = torch.cdist(p, q)
    precision = (d.min(1).values <= threshold + 1e-6).float().mean().item()
    recall = (d.min(0).values <= threshold + 1e-6).float().mean().item()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def color_error(
    pred_occ: torch.Tensor, pred_col: torch.Tensor, true_occ: torch.Tensor, true_col: torch.Tensor,
    views: Sequence[str | View], size: int = 64,
) -> float:
    """Mean absolute RGB error (0-1 scale) of renders from ``views``, over pixels either shape covers."""
    a, ma = render(pred_occ, pred_col, views, size=size)
    b, mb = render(true_occ, true_col, views, size=size)
    m = (ma | mb)[:, None].expand_as(a)
    return (a - b).abs()[m].mean().item() if m.any() else 0.0


def _face_colours(occ: torch.Tensor, col: torch.Tensor, true: np.ndarray) -> torch.Tensor:
    """Palette index the result gives each voxel position in ``true`` (``long [R, R, R]``, -1 where it gives none).

    The result's own voxel where it is occupied, else its nearest occupied voxel within
    :data:`NEAREST_VOXEL`, else none (counted wrong).
    """
    r = occ.shape[0]
    out = torch.full((r, r, r), -1, dtype=torch.long)
    pts = torch.from_numpy(np.argwhere(true)).float()
    have = occ.nonzero()
    if len(pts) == 0 or len(have) == 0:
        return out
    d = torch.cdist(pts, have.float())
    dist, j = d.min(1)
    src = have[j]
    idx = torch.from_numpy(palette_index(col[src[:, 0], src[:, 1], src[:, 2]].numpy()))
    idx[dist > NEAREST_VOXEL + 1e-6] = -1
    p = pts.long()
    out[p[:, 0], p[:, 1], p[:, 2]] = idx
    return out


def score_voxels(
    occupancy: torch.Tensor | np.ndarray,
    colors: torch.Tensor | np.ndarray,
    shape: Shape,
    given_views: Sequence[str | View],
    all_views: Sequence[str | View] = VIEW_SETS[4],
) -> dict[str, float]:
    """Every accuracy measure of one result against its ground truth ``shape``.

    :param occupancy: the result, ``bool [16, 16, 16]``.
    :param colors: its colours, ``float [16, 16, 16, 3]`` in ``[0, 1]``.
    :param shape: the ground truth.
    :param given_views: the views the result was generated from (``given_views[0]`` is the first view).
    :param all_views: the largest view set compared (default the four standard views); it
        fixes the surface the ``hidden_*`` measures are taken on, so that results from
        1, 2 or 4 views are scored on the same faces.
    :returns: a dict of floats (``nan`` where a measure has nothing to measure):

        * ``iou``, ``chamfer`` (voxels), ``fscore`` (at 1 voxel): the shape.
        * ``given_silhouette_iou``: mean over the given views of the IoU of the result's
          rendered silhouette (64 px) with the ground truth's; ``first_silhouette_iou``:
          the same for ``given_views[0]`` alone (comparable across numbers of views).
        * ``given_color_acc``: over the pixels inside the true silhouette of each given view,
          the fraction where the result shows the same colour (the nearest :data:`~trellis_mv.proxy.PALETTE`
          entry of the albedo it shows equals the true albedo's; a pixel the result leaves
          empty is wrong).
        * ``hidden_color_acc_seen``: per-face colour accuracy over the true surface faces
          that ``given_views[0]`` does not see and some view of ``all_views`` sees
          (:func:`visible_faces`); a face's colour is its voxel's in the result, or the
          nearest occupied voxel's within :data:`NEAREST_VOXEL`, else it is wrong.
        * ``hidden_color_acc_unseen``: the same over true surface faces (faces whose
          neighbour is empty) that no view of ``all_views`` sees.
        * ``heldout_color_error``: mean absolute RGB error of renders from
          :data:`HELD_OUT_VIEWS`, over pixels either shape covers.

    >>> s = make_shape(HELD_OUT_SEED)
    >>> m = score_voxels(s.occupancy, s.colors, s, ["front"])
    >>> [k for k, v in m.items() if v not in (0.0, 1.0)]
    []
    """
    occ = torch.as_tensor(occupancy).bool().cpu()
    col = torch.as_tensor(colors, dtype=torch.float32).cpu()
    true_occ = torch.from_numpy(shape.occupancy)
    true_col = torch.from_numpy(shape.colors)
    given = list(given_views)
    if not given:
        raise ValueError("given_views is empty: pass the views the result was generated from, e.g. ['front']")
    out = {"iou": iou(occ, true_occ), "chamfer": chamfer(occ, true_occ), "fscore": fscore(occ, true_occ)}

    # given views: silhouettes and colours
    pred_hits = trace(occ[None], given, _SIZE, names=NAMED_VIEWS)
    true_hits = trace(true_occ[None], given, _SIZE, names=NAMED_VIEWS)
    inter = (pred_hits.hit & true_hits.hit).flatten(1).sum(1).float()
    union = (pred_hits.hit | true_hits.hit).flatten(1).sum(1).float()
    per_view = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    out["given_silhouette_iou"] = per_view.mean().item()
    out["first_silhouette_iou"] = per_view[0].item()
    true_idx = torch.from_numpy(palette_index(shape.colors))
    pred_idx = torch.from_numpy(palette_index(col.numpy()))
    pv, tv = pred_hits.voxel, true_hits.voxel
    p_lab = pred_idx[pv[..., 0], pv[..., 1], pv[..., 2]]
    t_lab = true_idx[tv[..., 0], tv[..., 1], tv[..., 2]]
    right = pred_hits.hit & (p_lab == t_lab)
    out["given_color_acc"] = (right & true_hits.hit).sum().item() / max(true_hits.hit.sum().item(), 1)

    # hidden surface, on the faces fixed by given_views[0] and all_views
    seen_first = visible_faces(true_occ, given[:1])[0]
    seen_any = visible_faces(true_occ, list(all_views)).any(0)
    r = true_occ.shape[0]
    padded = torch.nn.functional.pad(true_occ, (1, 1, 1, 1, 1, 1))
    surface = torch.zeros_like(seen_any)
    for f, (axis, sign) in enumerate(FACES):
        nb = torch.roll(padded, -sign, axis)[1 : r + 1, 1 : r + 1, 1 : r + 1]
        surface[f] = true_occ & ~nb
    face_ok = (_face_colours(occ, col, shape.occupancy) == true_idx)[None].expand_as(surface)
    hidden = {"hidden_color_acc_seen": surface & seen_any & ~seen_first, "hidden_color_acc_unseen": surface & ~seen_any}
    for key, faces in hidden.items():
        n = faces.sum().item()
        out[key] = (face_ok & faces).sum().item() / n if n else float("nan")
    out["heldout_color_error"] = color_error(occ, col, true_occ, true_col, HELD_OUT_VIEWS, size=_SIZE)
    return out


def reference_iou(shape: Shape, given_views: Sequence[str | View], samples: int = 8, batch: int = 16, max_rounds: int = 12
                  ) -> dict[str, float]:
    """Reference points for the IoU of a result generated from ``given_views`` of ``shape``.

    * ``ideal``: the mean IoU of shapes that look exactly like ``shape`` from every given
      view, drawn as the generator would draw them: what a perfect model (one that samples
      everything the views cannot show) scores on average. Method: the components of
      ``shape`` (:data:`~trellis_mv.proxy.COMPONENTS`) that the given views show (at least one
      pixel of a 64 px render) keep their random draws; every other component, present or
      not, is drawn afresh (``make_shape(seed, redraw=...)``), and a draw is kept only if its
      renders from the given views equal the original's pixel for pixel (rejection
      sampling: so a redrawn part that would show, or a part the views show to be absent,
      is never kept). ``samples`` kept draws are averaged; when fewer are found in
      ``max_rounds`` rounds of ``batch`` draws, the mean is over those found, and it is 1
      when none is found or when the views show every component. Components the views show
      keep all their draws even where the views show only part of them, so this is an
      upper bound on what a model can reach from these views.
    * ``random``: the mean IoU of ``shape`` with ``samples`` other held-out shapes.

    >>> ref = reference_iou(make_shape(HELD_OUT_SEED), ["front"], samples=2)
    >>> 0 <= ref["random"] < ref["ideal"] <= 1
    True
    """
    given = list(given_views)
    occ = torch.from_numpy(shape.occupancy)
    ref_img, ref_mask = render(occ, torch.from_numpy(shape.colors), given, size=_SIZE)
    hits = trace(occ[None], given, _SIZE, names=NAMED_VIEWS)
    v = hits.voxel[hits.hit]
    shown = {int(k) for k in np.unique(shape.labels[v[:, 0].numpy(), v[:, 1].numpy(), v[:, 2].numpy()])}
    hidden = [k for k in range(len(COMPONENTS)) if k not in shown]
    ious: list[float] = []
    stream = shape.seed * 7919 + 1
    for _ in range(max_rounds):
        if not hidden or len(ious) >= samples:
            break
        cands = []
        for _ in range(batch):
            stream += 1
            cands.append(make_shape(shape.seed, redraw={k: 2**40 + stream for k in hidden}))
        occs = torch.from_numpy(np.stack([c.occupancy for c in cands]))
        cols = torch.from_numpy(np.stack([c.colors for c in cands]))
        nv = len(given)
        img, mask = render(occs.repeat_interleave(nv, 0), cols.repeat_interleave(nv, 0), given * len(cands), size=_SIZE)
        same = ((img.reshape(len(cands), nv, -1) - ref_img.reshape(1, nv, -1)).abs().amax((1, 2)) < 1e-6) & (
            mask.reshape(len(cands), nv, -1) == ref_mask.reshape(1, nv, -1)
        ).all(2).all(1)
        for c, ok in zip(cands, same.tolist()):
            if ok and len(ious) < samples:
                ious.append(iou(torch.from_numpy(c.occupancy), occ))
    ideal = float(np.mean(ious)) if ious else 1.0
    others = [make_shape(HELD_OUT_SEED + 500_000 + (shape.seed * 31 + 7 * k) % 400_000) for k in range(samples)]
    rand = float(np.mean([iou(torch.from_numpy(o.occupancy), occ) for o in others]))
    return {"ideal": ideal, "random": rand}
