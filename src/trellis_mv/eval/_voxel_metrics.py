"""Accuracy of a generated voxel shape against the proxy's ground truth, and what the given views could tell.

:func:`score_voxels` is the one entry point: shape accuracy (:func:`iou`, :func:`chamfer`,
:func:`fscore`), fidelity to the views that were given (silhouette and colour), colour
accuracy on the surface the first view does not show (split by whether another of the
standard views shows it), and colour error of renders from viewpoints no standard view
uses. :func:`posterior_draws` samples what a perfect model would make from the given views;
:func:`reference_iou` gives the reference points an IoU is read against.

>>> import torch
>>> a = torch.zeros(16, 16, 16, dtype=torch.bool); a[4:8, 4:8, 4:8] = True
>>> iou(a, a), chamfer(a, a), fscore(a, a)
(1.0, 0.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trellis_mv._views import parse_camera
from trellis_mv.proxy import (  # the proxy's shapes, with its camera names
    COMPONENTS,
    HELD_OUT_SEED,
    NAMED_VIEWS,
    PALETTE,
    SIDES,
    VIEW_SETS,
    Shape,
    View,
    make_shape,
    render,
    visible_faces,
)
from trellis_mv.voxels import FACES, trace

__all__ = ["HELD_OUT_VIEWS", "NEAREST_VOXEL", "VoxelTruth", "chamfer", "color_error", "fscore", "iou", "posterior_draws",
           "reference_iou", "score_voxels", "score_voxels_batch"]

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


_DISTANCE_SLACK = 1e-6


def _palette_labels(colors: torch.Tensor) -> torch.Tensor:
    """:func:`~trellis_mv.proxy.palette_index` in torch, on the colours' device: ``[..., 3]`` to ``long [...]``."""
    pal = torch.tensor(PALETTE, dtype=torch.float32, device=colors.device)
    return ((colors.float()[..., None, :] - pal) ** 2).sum(-1).argmin(-1)


def _squared_distance_to(occupancy: torch.Tensor) -> torch.Tensor:
    """Exact squared distance from every cell to the nearest occupied one, ``[B, R, R, R]`` (inf where none is).

    Separable: the minimum over the occupied cells of ``dx^2 + dy^2 + dz^2`` is taken one axis at
    a time, each pass a ``[B, R, R, R, R]`` minimum: fixed shapes, on the device, a batch at once.
    """
    r = occupancy.shape[-1]
    cells = torch.arange(r, device=occupancy.device, dtype=torch.float32)
    sq = (cells[:, None] - cells[None, :]) ** 2  # [R (to), R (from)]
    dist = torch.where(occupancy, 0.0, math.inf)
    for axis in (1, 2, 3):
        moved = dist.movedim(axis, -1)  # [..., R (from)]
        moved = (moved[..., None, :] + sq).amin(-1)  # [..., R (to)]
        dist = moved.movedim(-1, axis)
    return dist


def _neighbour_offsets(r: int, device: torch.device) -> list[tuple[int, int, int]]:
    """The offsets within :data:`NEAREST_VOXEL`, nearest first, ties in grid order (the nearest voxel's rule)."""
    offsets = [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)
               if math.sqrt(x * x + y * y + z * z) <= NEAREST_VOXEL + _DISTANCE_SLACK]
    return sorted(offsets, key=lambda o: (o[0] ** 2 + o[1] ** 2 + o[2] ** 2, (o[0] * r + o[1]) * r + o[2]))


def _face_labels(occ: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Palette index the result gives each cell (``long [B, R, R, R]``, -1 where it gives none).

    The result's own voxel where it is occupied, else its nearest occupied voxel within
    :data:`NEAREST_VOXEL` (ties to the first in grid order), else none (counted wrong).
    """
    r = occ.shape[-1]
    pad_occ = torch.nn.functional.pad(occ, (1, 1, 1, 1, 1, 1))
    pad_lab = torch.nn.functional.pad(labels, (1, 1, 1, 1, 1, 1), value=-1)
    out = torch.full_like(labels, -1)
    for x, y, z in reversed(_neighbour_offsets(r, occ.device)):  # the nearest written last, so it wins
        window = (slice(None), slice(1 + x, 1 + x + r), slice(1 + y, 1 + y + r), slice(1 + z, 1 + z + r))
        out = torch.where(pad_occ[window], pad_lab[window], out)
    return out


def _surface(occupancy: torch.Tensor) -> torch.Tensor:
    """The faces of occupied cells whose neighbour is empty, ``bool [B, 6, R, R, R]`` in the order of :data:`FACES`."""
    r = occupancy.shape[-1]
    padded = torch.nn.functional.pad(occupancy, (1, 1, 1, 1, 1, 1))
    faces = []
    for axis, sign in FACES:
        neighbour = torch.roll(padded, -sign, axis + 1)[:, 1 : r + 1, 1 : r + 1, 1 : r + 1]
        faces.append(occupancy & ~neighbour)
    return torch.stack(faces, 1)


class VoxelTruth:
    """The ground truth's side of every voxel score of one object, on one device, computed once for all its jobs.

    What does not depend on the result (the true silhouettes and colours seen from each
    camera, the faces each camera sees, the surface, the renders from :data:`HELD_OUT_VIEWS`)
    is computed once and kept, so an object's many jobs (aggregators, view counts, seeds) pay
    for it once; :meth:`many` computes it for a batch of objects in a few device calls.
    Cameras other than the standard ones are traced on first use.

    >>> truth = VoxelTruth.of(make_shape(HELD_OUT_SEED))
    >>> tuple(truth.view("front")[0].shape), tuple(truth.seen("back").shape)
    ((64, 64), (6, 16, 16, 16))
    """

    def __init__(self, shape: Shape, occupancy: torch.Tensor, colors: torch.Tensor, labels: torch.Tensor,
                 surface: torch.Tensor, seen_any: torch.Tensor, heldout: tuple[torch.Tensor, torch.Tensor],
                 views: dict[Any, tuple[torch.Tensor, torch.Tensor]], seen: dict[Any, torch.Tensor]) -> None:
        self.shape, self.occupancy, self.colors, self.labels = shape, occupancy, colors, labels
        self.surface, self.seen_any, self.heldout = surface, seen_any, heldout
        self._views, self._seen = views, seen

    @classmethod
    def many(cls, shapes: Sequence[Shape], device: torch.device | str = "cpu",
             all_views: Sequence[Any] = VIEW_SETS[4]) -> list[VoxelTruth]:
        """The truths of several objects, computed together on ``device``."""
        dev = torch.device(device)
        b = len(shapes)
        occ = torch.from_numpy(np.stack([s.occupancy for s in shapes])).to(dev)
        col = torch.from_numpy(np.stack([s.colors for s in shapes])).to(dev)
        labels = _palette_labels(col)
        cams = [parse_camera(c, NAMED_VIEWS) for c in all_views]
        nc, h = len(cams), len(HELD_OUT_VIEWS)
        seen = visible_faces(occ, cams).reshape(b, nc, 6, *occ.shape[1:])
        hits = trace(occ.repeat_interleave(nc, 0), cams * b, _SIZE)
        item = torch.arange(b * nc, device=dev)[:, None, None] // nc
        vx = hits.voxel
        view_labels = labels[item.expand(hits.hit.shape), vx[..., 0], vx[..., 1], vx[..., 2]].reshape(b, nc, _SIZE, _SIZE)
        view_hits = hits.hit.reshape(b, nc, _SIZE, _SIZE)
        img, mask = render(occ.repeat_interleave(h, 0), col.repeat_interleave(h, 0), HELD_OUT_VIEWS * b, size=_SIZE)
        img, mask = img.reshape(b, h, *img.shape[1:]), mask.reshape(b, h, *mask.shape[1:])
        surface = _surface(occ)
        return [cls(shapes[k], occ[k], col[k], labels[k], surface[k], seen[k].any(0), (img[k], mask[k]),
                    {c: (view_hits[k, i], view_labels[k, i]) for i, c in enumerate(cams)},
                    {c: seen[k, i] for i, c in enumerate(cams)}) for k in range(b)]

    @classmethod
    def of(cls, shape: Shape, device: torch.device | str = "cpu", all_views: Sequence[Any] = VIEW_SETS[4]) -> VoxelTruth:
        """The truth of one object."""
        return cls.many([shape], device, all_views)[0]

    def view(self, camera: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The true silhouette ``bool [S, S]`` and the palette index each pixel shows ``long [S, S]``, from ``camera``."""
        key = parse_camera(camera, NAMED_VIEWS)
        if key not in self._views:
            hits = trace(self.occupancy[None], [key], _SIZE)
            vx = hits.voxel[0]
            self._views[key] = (hits.hit[0], self.labels[vx[..., 0], vx[..., 1], vx[..., 2]])
        return self._views[key]

    def seen(self, camera: Any) -> torch.Tensor:
        """The faces ``camera`` sees, ``bool [6, R, R, R]``."""
        key = parse_camera(camera, NAMED_VIEWS)
        if key not in self._seen:
            self._seen[key] = visible_faces(self.occupancy, [key])[0]
        return self._seen[key]


def score_voxels_batch(
    occupancy: torch.Tensor, colors: torch.Tensor, truths: Sequence[VoxelTruth], given_views: Sequence[Sequence[Any]]
) -> dict[str, torch.Tensor]:
    """:func:`score_voxels` of ``B`` results at once, on their device: every measure as a ``float64 [B]`` tensor.

    :param occupancy: ``bool [B, R, R, R]``; :param colors: ``float [B, R, R, R, 3]``.
    :param truths: one :class:`VoxelTruth` per result (the same object may appear several times).
    :param given_views: per result, the cameras it was generated from (first the first view);
        every result has the same number of them.
    """
    occ = torch.as_tensor(occupancy).bool()
    dev = occ.device
    col = torch.as_tensor(colors, dtype=torch.float32, device=dev)
    b = occ.shape[0]
    counts = {len(g) for g in given_views}
    if len(truths) != b or len(given_views) != b or len(counts) != 1 or 0 in counts:
        raise ValueError(f"score_voxels_batch needs one truth and one non-empty list of given views per result, all of "
                         f"one length; got {b} results, {len(truths)} truths and view lists of lengths {sorted(counts)}")
    nv = counts.pop()
    true_occ = torch.stack([t.occupancy for t in truths])
    nan = torch.tensor(math.nan, dtype=torch.float64, device=dev)
    ratio = lambda num, den, empty: torch.where(den > 0, num.double() / den.clamp_min(1).double(), empty)
    out: dict[str, torch.Tensor] = {}
    flat = lambda x: x.flatten(1).sum(1)

    # the shape: IoU, and Chamfer / F-score through exact distance transforms
    out["iou"] = ratio(flat(occ & true_occ), flat(occ | true_occ), torch.ones((), dtype=torch.float64, device=dev))
    to_true = _squared_distance_to(true_occ).double().sqrt()  # sums in float64: the same whatever the batch
    to_pred = _squared_distance_to(occ).double().sqrt()
    n_pred, n_true = flat(occ), flat(true_occ)
    mean_pt = flat(torch.where(occ, to_true, 0.0)).double() / n_pred.clamp_min(1)
    mean_tp = flat(torch.where(true_occ, to_pred, 0.0)).double() / n_true.clamp_min(1)
    both, either = (n_pred > 0) & (n_true > 0), (n_pred > 0) | (n_true > 0)
    out["chamfer"] = torch.where(both, 0.5 * (mean_pt + mean_tp), torch.where(either, float(occ.shape[1]), nan))
    near = 1.0 + _DISTANCE_SLACK
    precision = flat(occ & (to_true <= near)).double() / n_pred.clamp_min(1)
    recall = flat(true_occ & (to_pred <= near)).double() / n_true.clamp_min(1)
    f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    out["fscore"] = torch.where(both, f, torch.where(either, 0.0, 1.0).double())

    # the given views: silhouettes and colours
    cams = [c for g in given_views for c in g]
    pred_labels = _palette_labels(col)
    hits = trace(occ.repeat_interleave(nv, 0), cams, _SIZE, names=NAMED_VIEWS)
    item = torch.arange(b * nv, device=dev)[:, None, None] // nv
    vx = hits.voxel
    p_lab = pred_labels[item.expand(hits.hit.shape), vx[..., 0], vx[..., 1], vx[..., 2]]
    true_views = [t.view(c) for t, g in zip(truths, given_views) for c in g]
    t_hit = torch.stack([h for h, _ in true_views])
    t_lab = torch.stack([lab for _, lab in true_views])
    per_view = ratio(flat(hits.hit & t_hit), flat(hits.hit | t_hit), torch.ones((), dtype=torch.float64, device=dev))
    per_view = per_view.reshape(b, nv)
    out["given_silhouette_iou"] = per_view.mean(1)
    out["first_silhouette_iou"] = per_view[:, 0]
    right = (hits.hit & t_hit & (p_lab == t_lab)).reshape(b, -1).sum(1)
    out["given_color_acc"] = right.double() / t_hit.reshape(b, -1).sum(1).clamp_min(1)

    # the hidden surface, on the faces fixed by the first given view and the four standard views
    surface = torch.stack([t.surface for t in truths])
    seen_any = torch.stack([t.seen_any for t in truths])
    seen_first = torch.stack([t.seen(g[0]) for t, g in zip(truths, given_views)])
    true_labels = torch.stack([t.labels for t in truths])
    face_ok = (_face_labels(occ, pred_labels) == true_labels)[:, None]
    for key, faces in (("hidden_color_acc_seen", surface & seen_any & ~seen_first),
                       ("hidden_color_acc_unseen", surface & ~seen_any)):
        out[key] = ratio(flat(face_ok & faces), flat(faces), nan)

    # renders from the held-out views
    h = len(HELD_OUT_VIEWS)
    img, mask = render(occ.repeat_interleave(h, 0), col.repeat_interleave(h, 0), HELD_OUT_VIEWS * b, size=_SIZE)
    t_img = torch.stack([t.heldout[0] for t in truths]).flatten(0, 1)
    t_mask = torch.stack([t.heldout[1] for t in truths]).flatten(0, 1)
    covered = (mask | t_mask)[:, None].expand_as(img).reshape(b, -1)
    err = ((img - t_img).abs().double().reshape(b, -1) * covered).sum(1)
    out["heldout_color_error"] = torch.where(covered.sum(1) > 0, err / covered.sum(1).clamp_min(1), 0.0)
    return out


def score_voxels(
    occupancy: torch.Tensor | np.ndarray,
    colors: torch.Tensor | np.ndarray,
    shape: Shape,
    given_views: Sequence[str | View],
    all_views: Sequence[str | View] = VIEW_SETS[4],
) -> dict[str, float]:
    """Every accuracy measure of one result against its ground truth ``shape`` (:func:`score_voxels_batch` of one).

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
    if not list(given_views):
        raise ValueError("given_views is empty: pass the views the result was generated from, e.g. ['front']")
    occ = torch.as_tensor(occupancy).bool()
    truth = VoxelTruth.of(shape, occ.device, all_views)
    scores = score_voxels_batch(occ[None], torch.as_tensor(colors)[None], [truth], [list(given_views)])
    return {key: float(value[0]) for key, value in scores.items()}


def posterior_draws(shape: Shape, given_views: Sequence[str | View], samples: int = 8, batch: int = 16,
                    max_rounds: int = 12) -> list[Shape]:
    """Shapes drawn as the generator draws them that look exactly like ``shape`` from every given view.

    What a perfect model (one that samples everything the views cannot show) generates from
    these views. Method: the components of ``shape`` (:data:`~trellis_mv.proxy.COMPONENTS`)
    and the paints of its body's sides (:data:`~trellis_mv.proxy.SIDES`) that the given views
    show (at least one pixel of a 64 px render) keep their random draws; every other component,
    present or not, is drawn afresh (``make_shape(seed, redraw=...)``) and every other side is
    painted afresh (``repaint=...``), and a draw is kept only if its renders from the given
    views equal the original's pixel for pixel (rejection sampling: so a redrawn part that would
    show, or a part the views show to be absent, is never kept). Components and sides the views
    show keep all their draws even where the views show only part of them, so the draws know
    at least as much as the views tell.

    :returns: up to ``samples`` kept draws from at most ``max_rounds`` rounds of ``batch``
        draws (``[]`` when none is found); ``[shape]`` when the views show every component and side.

    >>> s = make_shape(HELD_OUT_SEED)
    >>> draws = posterior_draws(s, ["front"], samples=2)
    >>> len(draws), all((d.occupancy == s.occupancy).any() for d in draws)
    (2, True)
    """
    given = list(given_views)
    occ = torch.from_numpy(shape.occupancy)
    ref_img, ref_mask = render(occ, torch.from_numpy(shape.colors), given, size=_SIZE)
    hits = trace(occ[None], given, _SIZE, names=NAMED_VIEWS)
    v = hits.voxel[hits.hit].numpy()
    if shape.labels is None or shape.sides is None:
        raise ValueError("posterior_draws needs a shape with component labels and sides (make_shape gives them)")
    shown = {int(k) for k in np.unique(shape.labels[v[:, 0], v[:, 1], v[:, 2]])}
    shown_sides = {int(k) for k in np.unique(shape.sides[v[:, 0], v[:, 1], v[:, 2]])}
    hidden = [k for k in range(len(COMPONENTS)) if k not in shown]
    unshown = [n for n in range(len(SIDES)) if n not in shown_sides]
    if not hidden and not unshown:
        return [shape]
    kept: list[Shape] = []
    stream = shape.seed * 7919 + 1
    nv = len(given)
    for _ in range(max_rounds):
        if len(kept) >= samples:
            break
        cands = []
        for _ in range(batch):
            stream += 1
            cands.append(make_shape(shape.seed, redraw={k: 2**40 + stream for k in hidden},
                                    repaint={n: 2**40 + stream for n in unshown}))
        occs = torch.from_numpy(np.stack([c.occupancy for c in cands]))
        cols = torch.from_numpy(np.stack([c.colors for c in cands]))
        img, mask = render(occs.repeat_interleave(nv, 0), cols.repeat_interleave(nv, 0), given * len(cands), size=_SIZE)
        same = ((img.reshape(len(cands), nv, -1) - ref_img.reshape(1, nv, -1)).abs().amax((1, 2)) < 1e-6) & (
            mask.reshape(len(cands), nv, -1) == ref_mask.reshape(1, nv, -1)
        ).all(2).all(1)
        kept += [c for c, ok in zip(cands, same.tolist()) if ok][: samples - len(kept)]
    return kept


def reference_iou(shape: Shape, given_views: Sequence[str | View], samples: int = 8, batch: int = 16, max_rounds: int = 12,
                  draws: Sequence[Shape] | None = None) -> dict[str, float]:
    """Reference points for the IoU of a result generated from ``given_views`` of ``shape``.

    * ``ideal``: the mean IoU of :func:`posterior_draws` (``samples`` of them, drawn in at most
      ``max_rounds`` rounds of ``batch``): what a perfect model scores on average; 1 when none
      is found. Their components that the views show keep all their draws, so this is an upper
      bound on what a model can reach from these views. ``draws`` passes draws already made
      (``posterior_draws(shape, given_views, ...)``) instead.
    * ``random``: the mean IoU of ``shape`` with ``samples`` other held-out shapes.

    >>> ref = reference_iou(make_shape(HELD_OUT_SEED), ["front"], samples=2)
    >>> 0 <= ref["random"] < ref["ideal"] <= 1
    True
    """
    occ = torch.from_numpy(shape.occupancy)
    draws = posterior_draws(shape, given_views, samples, batch, max_rounds) if draws is None else draws
    ideal = float(np.mean([iou(torch.from_numpy(d.occupancy), occ) for d in draws])) if draws else 1.0
    others = [make_shape(HELD_OUT_SEED + 500_000 + (shape.seed * 31 + 7 * k) % 400_000) for k in range(samples)]
    rand = float(np.mean([iou(torch.from_numpy(o.occupancy), occ) for o in others]))
    return {"ideal": ideal, "random": rand}
