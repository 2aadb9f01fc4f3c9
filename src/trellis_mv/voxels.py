"""Voxel grids as images and meshes, on the grid's own device: rays, renders, visible faces, meshes.

Model-free: any adapter whose output holds an occupancy grid ``bool [R, R, R]`` with colours
``float [R, R, R, 3]`` can render and mesh it here, on the tensors' device. Voxel ``[x, y, z]``
spans ``[-1, 1]^3``, ``+y`` up, the front camera on ``+z`` (trellis-mv's object frame).

Cameras are anything :func:`trellis_mv.parse_camera` reads (``"front"``, ``"90,20"``,
``"az30el20"``, ``(azimuth, elevation)``, a :class:`~trellis_mv.Camera`); ``names`` are the
adapter's ``named_cameras`` (the proxy's ``front`` is raised 25 degrees), else the core's
(``front`` is level). Renders are orthographic and span ``[-1, 1]`` in both directions; each
pixel's ray stops at the first occupied voxel (an exact voxel traversal, so each pixel knows
the voxel and the face it sees: :func:`visible_faces`). The light is fixed to the world (a sun
above, right and in front), so each face direction has its own brightness and an image tells
the direction it was seen from. The background is black, as TRELLIS.2's preprocessing's.

>>> occ = torch.zeros(16, 16, 16, dtype=torch.bool); occ[4:12, 4:10, 6:10] = True
>>> img, mask = render(occ, torch.ones(16, 16, 16, 3), ["front", "az45el30"], size=32)
>>> tuple(img.shape), tuple(mask.shape), mask[0].sum().item(), mask[0, 16].tolist() == [False] * 8 + [True] * 16 + [False] * 8
((2, 3, 32, 32), (2, 32, 32), 192, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from trellis_mv._views import parse_camera

if TYPE_CHECKING:
    import trimesh

__all__ = ["FACES", "Hits", "input_views", "mesh_from_voxels", "render", "trace", "visible_faces"]

#: Face order of :func:`visible_faces`: ``(axis, sign)`` of each face's outward normal.
FACES: tuple[tuple[int, int], ...] = ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1))
#: Per face of :data:`FACES`, the 4 corners of a unit cube's face, counter-clockwise seen from outside.
_CORNERS = torch.tensor([
    [(1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1)], [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)],
    [(0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0)], [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)],
    [(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)], [(0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)],
])
_LIGHT = torch.tensor([0.3, 0.8, 0.52])
_LIGHT = _LIGHT / _LIGHT.norm()
Cameras = Sequence[Any]


def _camera(camera: Any, names: Mapping[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cam = parse_camera(camera, names)
    if cam is None:
        raise ValueError("a camera is None; every image needs one (a name, 'AZ,EL' or an (azimuth, elevation) pair)")
    az, el = math.radians(cam.azimuth), math.radians(cam.elevation)
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


def trace(occupancy: torch.Tensor, cameras: Cameras, size: int, *, names: Mapping[str, Any] | None = None,
          compact: bool | None = None) -> Hits:
    """Cast one orthographic ray per pixel through ``occupancy`` (``bool [B, R, R, R]``, ``B`` 1 or ``len(cameras)``).

    An exact grid traversal (Amanatides and Woo, 1987): the ray steps from voxel to voxel
    across one face at a time, so the first occupied voxel and the face it is entered by
    are exact at any resolution. Rays start where they enter the box around their shape's
    occupied voxels and take at most ``3 R`` steps. On a GPU every ray takes every step,
    masked once it has hit or left its box: fixed shapes, no host synchronisation, a whole
    batch of shapes and cameras at once. On a CPU, where synchronising is free and work on
    finished rays is not, finished rays are dropped after each step (``compact``: force either;
    both give the same hits).
    """
    occ = occupancy
    dev = occ.device
    b, r = occ.shape[0], occ.shape[1]
    cams = [_camera(v, names) for v in cameras]
    nv = len(cams)
    if b not in (1, nv):
        raise ValueError(f"render got {b} shapes and {nv} cameras; pass one camera per shape or one shape")
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
    n = len(g0)
    item = torch.arange(n, device=dev) // (size * size) if b > 1 else torch.zeros(n, dtype=torch.long, device=dev)
    # each shape's box around its occupied voxels, per axis, without leaving the device
    cells = torch.arange(r, device=dev)
    proj = torch.stack([occ.any(dims[0]).any(dims[1] - 1) for dims in ((2, 3), (1, 3), (1, 2))], 1)  # [B, 3, R]
    lo_b = torch.where(proj, cells, r).amin(-1)
    hi_b = torch.where(proj, cells + 1, 0).amax(-1)
    lo_l, hi_l = lo_b[item], hi_b[item]  # [n, 3]
    lo, hi = lo_l.double(), hi_l.double()
    t_lo = torch.minimum((lo - g0) * inv, (hi - g0) * inv).nan_to_num(-math.inf)
    t_hi = torch.maximum((lo - g0) * inv, (hi - g0) * inv).nan_to_num(math.inf)
    t_in, axis = t_lo.max(-1)
    alive = (t_in < t_hi.min(-1).values) & (hi_l > lo_l).all(-1)  # rays that cross their shape's box
    step = torch.sign(d).long()
    vox = torch.floor(g0 + (t_in.nan_to_num(0.0, 0.0, 0.0)[:, None] + 1e-9) * d).long()
    vox = torch.minimum(torch.maximum(vox, lo_l), (hi_l - 1).clamp_min(0))
    nxt = torch.where(step > 0, vox + 1, vox).double()
    t_max = torch.where(step != 0, (nxt - g0) * inv, torch.full_like(g0, math.inf))
    t_delta = torch.where(step != 0, inv.abs(), torch.full_like(g0, math.inf))
    flat = occ.reshape(b, -1)
    stride = torch.tensor([r * r, r, 1], device=dev)
    hit = torch.zeros(n, dtype=torch.bool, device=dev)
    hit_vox = torch.zeros((n, 3), dtype=torch.long, device=dev)
    hit_axis = torch.zeros(n, dtype=torch.long, device=dev)
    compact = dev.type == "cpu" if compact is None else compact
    ray = torch.arange(n, device=dev)
    if compact:
        ray, vox, t_max, t_delta, step, axis, item, lo_l, hi_l = (
            a[alive] for a in (ray, vox, t_max, t_delta, step, axis, item, lo_l, hi_l))
        alive = alive[alive]
    for _ in range(3 * r):
        inside = ((vox >= lo_l) & (vox < hi_l)).all(-1)
        now = alive & inside & flat[item, (vox.clamp(0, r - 1) * stride).sum(-1)]
        if compact:
            done = ray[now]
            hit[done], hit_vox[done], hit_axis[done] = True, vox[now], axis[now]
        else:
            hit, hit_vox, hit_axis = hit | now, torch.where(now[:, None], vox, hit_vox), torch.where(now, axis, hit_axis)
        alive = alive & inside & ~now
        axis = t_max.argmin(-1)
        one = torch.nn.functional.one_hot(axis, 3).bool()
        vox = torch.where(one, vox + step, vox)
        t_max = torch.where(one, t_max + t_delta, t_max)
        if compact:
            ray, vox, t_max, t_delta, step, axis, item, lo_l, hi_l = (
                a[alive] for a in (ray, vox, t_max, t_delta, step, axis, item, lo_l, hi_l))
            alive = alive[alive]
            if not len(ray):
                break
    # the face entered faces the camera: its outward normal is -step along the entry axis
    steps = torch.sign(d).long()
    sign = -steps.gather(-1, hit_axis[:, None])[:, 0]
    face = 2 * hit_axis + (sign < 0).long()
    return Hits(hit.reshape(nv, size, size), hit_vox.reshape(nv, size, size, 3), face.reshape(nv, size, size))


def _as_batch(occupancy: Any, colors: Any = None) -> tuple[torch.Tensor, Any]:
    occ = torch.as_tensor(occupancy)
    if occ.ndim == 3:
        occ = occ[None]
    occ = occ > 0.5 if occ.dtype != torch.bool else occ
    if colors is None:
        return occ, None
    col = torch.as_tensor(colors, dtype=torch.float32)
    return occ, col[None] if col.ndim == 4 else col


def render(
    occupancy: Any, colors: Any, cameras: Cameras, size: int = 64, *, names: Mapping[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a voxel shape (or a batch of them) from each of ``cameras``, on the shape's device.

    :param occupancy: ``[R, R, R]`` or ``[B, R, R, R]`` (bool or float > 0.5; tensors or arrays).
    :param colors: ``[(B,) R, R, R, 3]`` albedo in ``[0, 1]``.
    :param cameras: one camera per output image; with a batch, one camera per batch item
        (``len(cameras) == B``) or one list shared by all items when ``B == 1``.
    :param size: image side in pixels.
    :param names: named cameras (an adapter's ``named_cameras``).
    :returns: ``images float [V, 3, size, size]`` in ``[0, 1]`` and ``mask bool [V, size, size]``.
    """
    occ, col = _as_batch(occupancy, colors)
    hits = trace(occ, cameras, size, names=names)
    nv = len(cameras)
    dev = occ.device
    normal = torch.zeros((*hits.face.shape, 3), device=dev)
    normal.scatter_(-1, (hits.face // 2)[..., None], (1 - 2 * (hits.face % 2)).float()[..., None])
    shade = 0.3 + 0.7 * (0.5 + 0.5 * (normal * _LIGHT.to(dev)).sum(-1))
    item = torch.arange(nv, device=dev)[:, None, None] if col.shape[0] > 1 else torch.zeros(1, 1, 1, dtype=torch.long, device=dev)
    vx = hits.voxel
    albedo = col[item.expand(hits.hit.shape), vx[..., 0], vx[..., 1], vx[..., 2]]  # [V,H,W,3]
    img = albedo * shade[..., None] * hits.hit[..., None]
    return img.permute(0, 3, 1, 2).clamp(0, 1).contiguous(), hits.hit


def visible_faces(occupancy: Any, cameras: Cameras, size: int | None = None, *, names: Mapping[str, Any] | None = None
                  ) -> torch.Tensor:
    """Which voxel faces each camera sees: ``bool [V, 6, R, R, R]``, faces in the order of :data:`FACES`.

    A face is visible from a view when at least one pixel's ray enters the grid through
    empty space and meets that face first, at a resolution of ``size`` pixels (default
    ``12 * R``: a voxel spans 12 pixels, so a face turned 25 degrees from edge-on still
    gets about five rows of pixels). Faces between two occupied voxels, faces turned away
    from the camera and faces hidden behind other voxels are never visible.

    :param occupancy: one shape, ``[R, R, R]`` (bool or float > 0.5), or a batch ``[B, R, R, R]``:
        then every shape is seen from every camera and the result is ``[B, V, 6, R, R, R]``.
    :param cameras: the cameras (see the module's description).
    :param size: the resolution of the traversal, in pixels.
    :param names: named cameras (an adapter's ``named_cameras``).

    >>> occ = torch.zeros(16, 16, 16, dtype=torch.bool); occ[5, 5, 5] = True
    >>> vis = visible_faces(occ, ["0,25", "top"])
    >>> [FACES[f] for f in vis[0].nonzero()[:, 0].tolist()], [FACES[f] for f in vis[1].nonzero()[:, 0].tolist()]
    ([(1, 1), (2, 1)], [(1, 1)])
    """
    occ, _ = _as_batch(occupancy)
    b, r, nv = occ.shape[0], occ.shape[1], len(cameras)
    hits = trace(occ.repeat_interleave(nv, 0) if b > 1 else occ, list(cameras) * b, size or 12 * r, names=names)
    out = torch.zeros(b * nv * 6 * r**3, dtype=torch.uint8, device=occ.device)
    v = torch.arange(b * nv, device=occ.device)[:, None, None].expand(hits.hit.shape)
    vx = hits.voxel
    idx = (((v * 6 + hits.face) * r + vx[..., 0]) * r + vx[..., 1]) * r + vx[..., 2]
    out.scatter_reduce_(0, idx.flatten(), hits.hit.flatten().to(torch.uint8), "amax")  # no host sync
    return out.bool().reshape(b, nv, 6, r, r, r) if b > 1 else out.bool().reshape(nv, 6, r, r, r)


def input_views(occupancy: Any, colors: Any, cameras: Cameras, size: int = 64, *, names: Mapping[str, Any] | None = None
                ) -> torch.Tensor:
    """The views a user would pass a model: rendered at twice ``size``, box-filtered to ``size``.

    This is what preprocessing a larger photo gives (and what the proxy was trained on).

    >>> occ = torch.zeros(16, 16, 16, dtype=torch.bool); occ[4:12, 4:12, 4:12] = True
    >>> tuple(input_views(occ, torch.ones(16, 16, 16, 3), ["front", "back"]).shape)
    (2, 3, 64, 64)
    """
    images, _ = render(occupancy, colors, cameras, size=2 * size, names=names)
    return torch.nn.functional.avg_pool2d(images, 2)


def mesh_from_voxels(occupancy: Any, colors: Any) -> trimesh.Trimesh:
    """A ``trimesh.Trimesh`` of the exposed voxel faces of one grid, with per-vertex colours, in ``[-1, 1]^3``.

    The faces are found on the grid's device; only the finished mesh comes to the CPU.

    >>> occ = torch.zeros(16, 16, 16, dtype=torch.bool); occ[3, 4, 5] = True
    >>> m = mesh_from_voxels(occ, torch.ones(16, 16, 16, 3))
    >>> len(m.faces), len(m.vertices), m.bounds.tolist()
    (12, 24, [[-0.625, -0.5, -0.375], [-0.5, -0.375, -0.25]])
    """
    import trimesh

    occ, col = _as_batch(occupancy, colors)
    if occ.shape[0] != 1:
        raise ValueError(f"mesh_from_voxels takes one grid [R, R, R], got occupancy of shape {tuple(occ.shape)}")
    occ, col = occ[0], col[0]
    r = occ.shape[0]
    padded = torch.nn.functional.pad(occ, (1, 1, 1, 1, 1, 1))
    corners, tris = _CORNERS.to(occ.device), torch.tensor([[0, 1, 2], [0, 2, 3]], device=occ.device)
    verts, faces, vcol = [], [], []
    n = 0
    for f, (axis, sign) in enumerate(FACES):
        vox = (occ & ~torch.roll(padded, -sign, axis)[1 : r + 1, 1 : r + 1, 1 : r + 1]).nonzero()
        verts.append((vox[:, None, :] + corners[f][None]).reshape(-1, 3))
        idx = n + torch.arange(len(vox), device=occ.device)[:, None] * 4
        faces.append(torch.cat([idx + tris[0], idx + tris[1]]))
        vcol.append(col[vox[:, 0], vox[:, 1], vox[:, 2]].repeat_interleave(4, 0))
        n += len(vox) * 4
    if n == 0:
        return trimesh.Trimesh()
    v = torch.cat(verts).float() / (r / 2) - 1
    rgb = (torch.cat(vcol).clamp(0, 1) * 255).round().to(torch.uint8)
    rgba = torch.cat([rgb, torch.full_like(rgb[:, :1], 255)], 1)
    return trimesh.Trimesh(vertices=v.cpu().numpy(), faces=torch.cat(faces).cpu().numpy(), vertex_colors=rgba.cpu().numpy(),
                           process=False)
