"""Orthographic ray-traced renders of voxel shapes from named views, in torch.

Views are ``(azimuth, elevation)`` in degrees. The named views ``front`` (camera towards
``+z``), ``right`` (``+x``), ``back`` and ``left`` look down at an elevation of 25 degrees,
so that an image shows depth as well as width and height; ``top`` looks straight down
(``+y``, image up towards the back). ``az30`` (elevation 0) or ``az30el20`` name any other.
:data:`VIEW_SETS` are the standard sets of 1, 2 and 4 views.

Every pixel casts one ray through the grid and stops at the first occupied voxel (an
exact voxel traversal, so each pixel knows the voxel and the face it sees:
:func:`visible_faces`). The light is fixed to the world (a sun above, right and in
front), so each face direction has its own brightness and an image tells the direction
it was seen from. The background is black, as TRELLIS.2's preprocessing composites on
black. The image spans ``[-1, 1]`` in both directions.

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
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["FACES", "NAMED_VIEWS", "VIEW_SETS", "View", "input_views", "parse_view", "render", "view_name", "visible_faces"]

View = tuple[float, float]
#: Elevation of the named side views, in degrees.
ELEVATION = 25.0
NAMED_VIEWS: dict[str, View] = {
    "front": (0.0, ELEVATION),
    "right": (90.0, ELEVATION),
    "back": (180.0, ELEVATION),
    "left": (270.0, ELEVATION),
    "top": (0.0, 90.0),
}
#: The standard view sets by number of views: each adds the side the others show least.
VIEW_SETS: dict[int, list[str]] = {1: ["front"], 2: ["front", "right"], 4: ["front", "right", "back", "left"]}
#: Face order of :func:`visible_faces`: ``(axis, sign)`` of each face's outward normal.
FACES: tuple[tuple[int, int], ...] = ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1))
_LIGHT = torch.tensor([0.3, 0.8, 0.52])
_LIGHT = _LIGHT / _LIGHT.norm()
_VIEW_RE = re.compile(r"^az(-?\d+(?:\.\d+)?)(?:el(-?\d+(?:\.\d+)?))?$")


def parse_view(view: str | View) -> View:
    """``(azimuth, elevation)`` of a view name or pair.

    >>> parse_view("back"), parse_view("az30el20"), parse_view("az30"), parse_view((45, 10))
    ((180.0, 25.0), (30.0, 20.0), (30.0, 0.0), (45.0, 10.0))
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

    >>> view_name((180, 25)), view_name("az30el20"), view_name((45.0, 0.0)), view_name("az0")
    ('back', 'az30el20', 'az45', 'az0')
    """
    az, el = parse_view(view)
    for name, v in NAMED_VIEWS.items():
        if abs(v[0] - az) < 1e-6 and abs(v[1] - el) < 1e-6:
            return name
    fmt = lambda a: f"{a:g}"
    return f"az{fmt(az)}" + (f"el{fmt(el)}" if el else "")


def _camera(view: View) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    az, el = (math.radians(a) for a in view)
    c = torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)], dtype=torch.float64)
    right = torch.tensor([math.cos(az), 0.0, -math.sin(az)], dtype=torch.float64)
    up = torch.linalg.cross(c, right)
    return c, right, up


class Hits(NamedTuple):
    """What each pixel's ray hits: ``hit bool [V, H, W]``, ``voxel long [V, H, W, 3]`` (valid
    where ``hit``) and ``face long [V, H, W]``, the index into :data:`FACES` of the face it enters."""

    hit: torch.Tensor
    voxel: torch.Tensor
    face: torch.Tensor


def trace(occupancy: torch.Tensor, views: Sequence[str | View], size: int) -> Hits:
    """Cast one orthographic ray per pixel through ``occupancy`` (``bool [B, R, R, R]``, ``B`` 1 or ``len(views)``).

    An exact grid traversal (Amanatides and Woo, 1987): the ray steps from voxel to voxel
    across one face at a time, so the first occupied voxel and the face it is entered by
    are exact at any resolution. Rays start where they enter the box around the occupied
    voxels and only rays still in flight are stepped.
    """
    occ = occupancy
    dev = occ.device
    b, r = occ.shape[0], occ.shape[1]
    cams = [_camera(parse_view(v)) for v in views]
    nv = len(cams)
    if b not in (1, nv):
        raise ValueError(f"render got {b} shapes and {nv} views; pass one view per shape or one shape")
    hit = torch.zeros(nv * size * size, dtype=torch.bool, device=dev)
    hit_vox = torch.zeros((nv * size * size, 3), dtype=torch.long, device=dev)
    hit_axis = torch.zeros(nv * size * size, dtype=torch.long, device=dev)
    hit_step = torch.zeros((nv * size * size, 3), dtype=torch.long, device=dev)
    cells = occ.any(0).nonzero()
    if len(cells) == 0:
        return Hits(hit.reshape(nv, size, size), hit_vox.reshape(nv, size, size, 3), hit_axis.reshape(nv, size, size))
    lo, hi = cells.min(0).values.double(), cells.max(0).values.double() + 1
    c = torch.stack([k[0] for k in cams]).to(dev)
    right = torch.stack([k[1] for k in cams]).to(dev)
    up = torch.stack([k[2] for k in cams]).to(dev)
    lin = (torch.arange(size, device=dev, dtype=torch.float64) + 0.5) / size * 2 - 1
    u = lin[None, :, None].expand(size, size, 1)  # column -> right
    v = -lin[:, None, None].expand(size, size, 1)  # row -> up
    origin = u[None] * right[:, None, None] + v[None] * up[:, None, None] + 2.0 * c[:, None, None]  # [V, H, W, 3]
    g0 = ((origin + 1) * (r / 2)).reshape(-1, 3)  # grid units: voxel i spans [i, i + 1)
    d = -c * (r / 2)
    d = torch.where(d.abs() > 1e-9, d, torch.zeros_like(d))
    d = d[:, None, :].expand(nv, size * size, 3).reshape(-1, 3)
    inv = torch.where(d != 0, 1.0 / d, torch.full_like(d, math.inf))
    t_lo = torch.minimum((lo - g0) * inv, (hi - g0) * inv).nan_to_num(-math.inf)
    t_hi = torch.maximum((lo - g0) * inv, (hi - g0) * inv).nan_to_num(math.inf)
    t_in, axis = t_lo.max(-1)
    ray = (t_in < t_hi.min(-1).values).nonzero()[:, 0]  # rays that cross the box
    g0, d, inv, axis, t_in = g0[ray], d[ray], inv[ray], axis[ray], t_in[ray]
    step = torch.sign(d).long()
    vox = torch.floor(g0 + (t_in[:, None] + 1e-9) * d).long()
    vox = torch.minimum(torch.maximum(vox, lo.long()), hi.long() - 1)
    nxt = torch.where(step > 0, vox + 1, vox).double()
    t_max = torch.where(step != 0, (nxt - g0) * inv, torch.full_like(g0, math.inf))
    t_delta = torch.where(step != 0, inv.abs(), torch.full_like(g0, math.inf))
    flat = occ.reshape(b, -1)
    item = ray // (size * size) if b > 1 else torch.zeros_like(ray)
    stride = torch.tensor([r * r, r, 1], device=dev)
    lo_l, hi_l = lo.long(), hi.long()
    while len(ray):
        now = flat[item, (vox * stride).sum(-1)]
        if now.any():
            done = ray[now]
            hit[done] = True
            hit_vox[done] = vox[now]
            hit_axis[done] = axis[now]
            hit_step[done] = step[now]
        axis = t_max.argmin(-1)
        one = torch.nn.functional.one_hot(axis, 3).bool()
        vox = torch.where(one, vox + step, vox)
        t_max = torch.where(one, t_max + t_delta, t_max)
        keep = ~now & ((vox >= lo_l) & (vox < hi_l)).all(-1)
        ray, vox, t_max, t_delta, step, axis, item = (a[keep] for a in (ray, vox, t_max, t_delta, step, axis, item))
    # the face entered faces the camera: its outward normal is -step along the entry axis
    sign = -hit_step.gather(-1, hit_axis[:, None])[:, 0]
    face = 2 * hit_axis + (sign < 0).long()
    return Hits(hit.reshape(nv, size, size), hit_vox.reshape(nv, size, size, 3), face.reshape(nv, size, size))


def _as_batch(occupancy: np.ndarray | torch.Tensor, colors: np.ndarray | torch.Tensor | None = None):
    occ = torch.as_tensor(occupancy)
    if occ.ndim == 3:
        occ = occ[None]
    occ = occ > 0.5 if occ.dtype != torch.bool else occ
    if colors is None:
        return occ, None
    col = torch.as_tensor(colors, dtype=torch.float32)
    return occ, col[None] if col.ndim == 4 else col


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
    :param samples: ignored (the traversal is exact); kept for callers of earlier versions.
    :returns: ``images float [V, 3, size, size]`` in ``[0, 1]`` and ``mask bool [V, size, size]``.
    """
    occ, col = _as_batch(occupancy, colors)
    hits = trace(occ, views, size)
    nv = len(views)
    dev = occ.device
    normal = torch.zeros((*hits.face.shape, 3), device=dev)
    normal.scatter_(-1, (hits.face // 2)[..., None], (1 - 2 * (hits.face % 2)).float()[..., None])
    shade = 0.3 + 0.7 * (0.5 + 0.5 * (normal * _LIGHT.to(dev)).sum(-1))
    item = torch.arange(nv, device=dev)[:, None, None] if col.shape[0] > 1 else torch.zeros(1, 1, 1, dtype=torch.long, device=dev)
    vx = hits.voxel
    albedo = col[item.expand(hits.hit.shape), vx[..., 0], vx[..., 1], vx[..., 2]]  # [V,H,W,3]
    img = albedo * shade[..., None] * hits.hit[..., None]
    return img.permute(0, 3, 1, 2).clamp(0, 1).contiguous(), hits.hit


def visible_faces(occupancy: np.ndarray | torch.Tensor, views: Sequence[str | View], size: int | None = None) -> torch.Tensor:
    """Which voxel faces each view sees: ``bool [V, 6, R, R, R]``, faces in the order of :data:`FACES`.

    A face is visible from a view when at least one pixel's ray enters the grid through
    empty space and meets that face first, at a resolution of ``size`` pixels (default
    ``12 * R``: a voxel spans 12 pixels, so a face turned 25 degrees from edge-on still
    gets about five rows of pixels). Faces between two occupied voxels, faces turned away
    from the camera and faces hidden behind other voxels are never visible.

    :param occupancy: one shape, ``[R, R, R]`` (bool or float > 0.5).
    :param views: the views, names or ``(azimuth, elevation)`` pairs.
    :param size: the resolution of the traversal, in pixels.

    >>> occ = torch.zeros(16, 16, 16, dtype=torch.bool); occ[5, 5, 5] = True
    >>> vis = visible_faces(occ, ["front", "top"])
    >>> [FACES[f] for f in vis[0].nonzero()[:, 0].tolist()], [FACES[f] for f in vis[1].nonzero()[:, 0].tolist()]
    ([(1, 1), (2, 1)], [(1, 1)])
    """
    occ, _ = _as_batch(occupancy)
    if occ.shape[0] != 1:
        raise ValueError(f"visible_faces takes one shape [R, R, R], got occupancy of shape {tuple(occ.shape)}")
    r = occ.shape[1]
    hits = trace(occ, views, size or 12 * r)
    nv = len(views)
    out = torch.zeros(nv * 6 * r**3, dtype=torch.bool, device=occ.device)
    v = torch.arange(nv, device=occ.device)[:, None, None].expand(hits.hit.shape)
    vx = hits.voxel
    idx = (((v * 6 + hits.face) * r + vx[..., 0]) * r + vx[..., 1]) * r + vx[..., 2]
    out[idx[hits.hit]] = True
    return out.reshape(nv, 6, r, r, r)


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
    images, _ = render(occupancy, colors, views, size=2 * size)
    return torch.nn.functional.avg_pool2d(images, 2)
