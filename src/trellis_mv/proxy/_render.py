"""Orthographic ray-marched renders of voxel shapes from named views, in torch.

Views are ``(azimuth, elevation)`` in degrees. Named views: ``front`` (camera on ``+z``),
``right`` (``+x``), ``back``, ``left`` and ``top`` (``+y``, image up towards the back);
``az30`` or ``az30el20`` name any other. The light is fixed to the world (a sun above,
right and in front), so each face direction has its own brightness and an image tells the
direction it was seen from. The background is black, as TRELLIS.2's preprocessing
composites on black. The image spans ``[-1, 1]`` in both directions, so on the axis views
each voxel covers ``size / 16`` pixels exactly.

>>> from trellis_mv.proxy._data import make_shape
>>> s = make_shape(3)
>>> img, mask = render(s.occupancy, s.colors, ["front", "az45el30"], size=32)
>>> tuple(img.shape), tuple(mask.shape)
((2, 3, 32, 32), (2, 32, 32))
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["NAMED_VIEWS", "View", "parse_view", "render", "view_name"]

View = tuple[float, float]
NAMED_VIEWS: dict[str, View] = {
    "front": (0.0, 0.0),
    "right": (90.0, 0.0),
    "back": (180.0, 0.0),
    "left": (270.0, 0.0),
    "top": (0.0, 90.0),
}
_LIGHT = torch.tensor([0.3, 0.8, 0.52])
_LIGHT = _LIGHT / _LIGHT.norm()
_VIEW_RE = re.compile(r"^az(-?\d+(?:\.\d+)?)(?:el(-?\d+(?:\.\d+)?))?$")


def parse_view(view: str | View) -> View:
    """``(azimuth, elevation)`` of a view name or pair.

    >>> parse_view("back"), parse_view("az30el20"), parse_view((45, 10))
    ((180.0, 0.0), (30.0, 20.0), (45.0, 10.0))
    """
    if isinstance(view, str):
        key = view.strip().lower()
        if key in NAMED_VIEWS:
            return NAMED_VIEWS[key]
        m = _VIEW_RE.match(key)
        if not m:
            raise ValueError(
                f"unknown view {view!r}: expected one of {sorted(NAMED_VIEWS)} or 'az<degrees>[el<degrees>]', e.g. 'az30el20'"
            )
        return float(m.group(1)) % 360, float(m.group(2) or 0.0)
    az, el = view
    return float(az) % 360, float(el)


def view_name(view: str | View) -> str:
    """A canonical name for a view (a named one when it is one).

    >>> view_name((180, 0)), view_name("az30el20"), view_name((45.0, 0.0))
    ('back', 'az30el20', 'az45')
    """
    az, el = parse_view(view)
    for name, v in NAMED_VIEWS.items():
        if abs(v[0] - az) < 1e-6 and abs(v[1] - el) < 1e-6:
            return name
    fmt = lambda a: f"{a:g}"
    return f"az{fmt(az)}" + (f"el{fmt(el)}" if el else "")


def _camera(view: View) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    az, el = (math.radians(a) for a in view)
    c = torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    right = torch.tensor([math.cos(az), 0.0, -math.sin(az)])
    up = torch.linalg.cross(c, right)
    return c, right, up


def render(
    occupancy: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    views: Sequence[str | View],
    size: int = 64,
    samples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a voxel shape (or a batch of them) from each of ``views``.

    :param occupancy: ``[R, R, R]`` or ``[B, R, R, R]`` (bool or float > 0.5).
    :param colors: ``[(B,) R, R, R, 3]`` albedo in ``[0, 1]``.
    :param views: one view per output image; with a batch, one view per batch item
        (``len(views) == B``) or one list shared by all items when ``B == 1``.
    :param size: image side in pixels.
    :param samples: ray samples (default ``4 * size`` capped to ``[64, 256]``).
    :returns: ``images float [V, 3, size, size]`` in ``[0, 1]`` and ``mask bool [V, size, size]``.
    """
    occ = torch.as_tensor(occupancy)
    col = torch.as_tensor(colors, dtype=torch.float32)
    if occ.ndim == 3:
        occ, col = occ[None], col[None]
    occ = occ > 0.5 if occ.dtype != torch.bool else occ
    dev = occ.device
    b, r = occ.shape[0], occ.shape[1]
    cams = [_camera(parse_view(v)) for v in views]
    nv = len(cams)
    if b == 1 and nv > 1:
        occ, col = occ.expand(nv, -1, -1, -1), col.expand(nv, -1, -1, -1, -1)
    elif b != nv:
        raise ValueError(f"render got {b} shapes and {nv} views; pass one view per shape or one shape")
    c = torch.stack([k[0] for k in cams]).to(dev)
    right = torch.stack([k[1] for k in cams]).to(dev)
    up = torch.stack([k[2] for k in cams]).to(dev)
    s = samples or max(64, min(256, 4 * size))
    lin = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size * 2 - 1
    u = lin[None, :].expand(size, size)  # column -> right
    v = -lin[:, None].expand(size, size)  # row -> up
    origin = (
        u[None, ..., None] * right[:, None, None] + v[None, ..., None] * up[:, None, None] + 2.0 * c[:, None, None]
    )  # [V, H, W, 3]
    depth = torch.linspace(1.0, 3.0, s, device=dev)
    occ_flat = occ.reshape(-1)
    scale = r / 2
    for axis in range(3):  # build the flat voxel index axis by axis to keep memory low
        coord = torch.floor((origin[..., axis, None] - depth * c[:, None, None, None, axis] + 1) * scale)
        if axis == 0:
            inside = (coord >= 0) & (coord < r)
            lin = coord.clamp(0, r - 1).to(torch.int64)
        else:
            inside &= (coord >= 0) & (coord < r)
            lin = lin * r + coord.clamp(0, r - 1).to(torch.int64)
    lin += torch.arange(nv, device=dev)[:, None, None, None] * r**3
    hit = occ_flat[lin] & inside  # [V,H,W,S]
    del lin, inside
    any_hit = hit.any(-1)
    first = torch.where(any_hit, hit.to(torch.uint8).argmax(-1), torch.zeros_like(any_hit, dtype=torch.long))

    def voxel_at(k: torch.Tensor) -> torch.Tensor:
        p = origin - depth[k][..., None] * c[:, None, None, :]
        return torch.floor((p + 1) * scale).clamp(-1, r).long()

    vox = voxel_at(first).clamp(0, r - 1)
    prev = voxel_at((first - 1).clamp_min(0))
    changed = (vox != prev).float()
    normal = changed * torch.sign(c)[:, None, None, :]  # faces towards the camera
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    shade = 0.3 + 0.7 * (0.5 + 0.5 * (normal * _LIGHT.to(dev)).sum(-1))
    bv = torch.arange(nv, device=dev)[:, None, None].expand(first.shape)
    albedo = col[bv, vox[..., 0], vox[..., 1], vox[..., 2]]  # [V,H,W,3]
    img = albedo * shade[..., None] * any_hit[..., None]
    return img.permute(0, 3, 1, 2).clamp(0, 1).contiguous(), any_hit


def input_views(
    occupancy: np.ndarray | torch.Tensor,
    colors: np.ndarray | torch.Tensor,
    views: Sequence[str | View],
    size: int = 64,
    samples: int | None = None,
) -> torch.Tensor:
    """The views a user would pass the model: rendered at twice ``size``, box-filtered to ``size``.

    This is what preprocessing a larger photo gives, and what the model was trained on.

    >>> from trellis_mv.proxy import make_shape
    >>> s = make_shape(0)
    >>> tuple(input_views(s.occupancy, s.colors, ["front", "back"]).shape)
    (2, 3, 64, 64)
    """
    images, _ = render(occupancy, colors, views, size=2 * size, samples=samples)
    return torch.nn.functional.avg_pool2d(images, 2)
