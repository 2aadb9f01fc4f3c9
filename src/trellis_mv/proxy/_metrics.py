"""Accuracy of a generated voxel shape against the ground truth.

>>> import torch
>>> a = torch.zeros(16, 16, 16, dtype=torch.bool); a[4:8, 4:8, 4:8] = True
>>> iou(a, a), chamfer(a, a)
(1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trellis_mv.proxy._render import View, render

__all__ = ["chamfer", "color_error", "iou"]


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


def color_error(
    pred_occ: torch.Tensor, pred_col: torch.Tensor, true_occ: torch.Tensor, true_col: torch.Tensor,
    views: Sequence[str | View], size: int = 64,
) -> float:
    """Mean absolute RGB error (0-1 scale) of renders from ``views``, over pixels either shape covers."""
    a, ma = render(pred_occ, pred_col, views, size=size)
    b, mb = render(true_occ, true_col, views, size=size)
    m = (ma | mb)[:, None].expand_as(a)
    return (a - b).abs()[m].mean().item() if m.any() else 0.0
