"""``visibility``: per-element view weights from where each camera looks from.

Needs each view's camera (``patch_sampler(..., cameras=[...])``; on the command line
``--images front.png@0 side.png@90``), which the core hands over as
``step.sample_directions``, unit vectors towards each camera in the latent's own axes (with
per-sample views, each sample's own cameras).

* **Sparse latents** (voxel coordinates known, e.g. the texture stage, whose shape is
  fixed): per voxel and view, the *gain* ``exp(temperature * (cos - 1))``, where ``cos`` is
  how squarely the voxel faces the camera: the largest ``n . d`` over the voxel's exposed
  faces (``n`` the face normal, ``d`` the direction to the camera) whose ray towards the
  camera leaves the voxel set unblocked. Occlusion is exact for the voxel set of the same
  sample: a 3D DDA march from each exposed face's centre through the occupied coordinates.
  A voxel hidden from a camera gets that view's gain 0, i.e. the floor.
* **Dense latents** (the structure stage, where the shape is still being made): the same
  gain with ``cos`` the cosine between the element's offset from the grid centre and the
  direction to the camera: a softmax over views of ``temperature * cos``, as directional
  blending in the ComfyUI-Trellis2 multi-view sampler does.

Weights: a view without a camera keeps its share (``step.weights``) everywhere; views with a
camera share the rest in proportion to ``weight * max(gain, floor)``. Then the per-element
weighted mean of the views' predictions is guided once. With ``floor = 1`` this is
``multidiffusion``; larger ``temperature`` sharpens the choice towards the most frontal view.

Cost: the predictions of all views in one batched forward, as ``multidiffusion``; the
occlusion march once per sampling run (cached: the voxels do not change within a run),
``O(voxels x views x grid side)`` element-wise work.

>>> import torch, trellis_mv
>>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
>>> from trellis_mv.sparse import SparseTensor
>>> sampler = FlowEulerGuidanceIntervalSampler()
>>> model = lambda x, t, cond, **kw: x.replace(x.feats - cond.mean(dim=(1, 2))[x.coords[:, 0].long(), None])
>>> coords = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 2]])      # two voxels in a row along z
>>> views = torch.stack([torch.full((4, 8), 1.0), torch.full((4, 8), -1.0)])   # front (+z), back
>>> with trellis_mv.patch_sampler(sampler, "visibility", cameras=["front", "back"], floor=0.0) as patch:
...     out = sampler.sample(model, SparseTensor(torch.zeros(2, 3), coords), views, torch.zeros(1, 4, 8),
...                          steps=4, guidance_strength=1.0, verbose=False).samples
>>> patch.diagnostics["view_weights"]                       # voxel z=0 only the back sees, z=2 only the front
tensor([[0., 1.],
        [1., 0.]])
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trellis_mv import AggregatorOptionError, Step, hookimpl

from ._elements import ElementAggregator, Elements, combine_known, number_option

__all__ = ["Visibility", "directional_gain", "voxel_visibility"]

_NORMALS = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


def voxel_visibility(coords: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How squarely each voxel faces each direction, and whether it is seen from it at all.

    :param coords: ``[M, 4]`` ``(batch, x, y, z)`` (or ``[M, 3]``, one sample); each sample's
        voxels occlude only each other.
    :param directions: ``[K, 3]`` unit vectors towards the cameras (rows of NaN are skipped).
    :returns: ``facing [K, M]``: the largest ``n . d`` over the voxel's exposed faces whose ray
        towards the camera escapes (0 where none does), and ``visible [K, M]`` (bool).

    >>> coords = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2]])   # a column along z
    >>> facing, visible = voxel_visibility(coords, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    >>> visible.tolist()                                         # from +z only the last; from +x all
    [[False, False, True], [True, True, True]]
    """
    coords = coords.long()
    if coords.shape[1] == 3:
        coords = torch.cat([torch.zeros_like(coords[:, :1]), coords], 1)
    dev = coords.device
    m = coords.shape[0]
    dirs = directions.to(device=dev, dtype=torch.float64)
    facing = torch.zeros(dirs.shape[0], m, dtype=torch.float64, device=dev)
    visible = torch.zeros(dirs.shape[0], m, dtype=torch.bool, device=dev)
    if m == 0:
        return facing, visible
    batch = coords[:, 0]
    xyz = coords[:, 1:] - coords[:, 1:].min(0).values
    size = xyz.max(0).values + 1
    nb = int(batch.max()) + 1
    occ = torch.zeros(nb, *size.tolist(), dtype=torch.bool, device=dev)
    occ[batch, xyz[:, 0], xyz[:, 1], xyz[:, 2]] = True
    normals = _NORMALS.to(dev)
    exposed = []
    for n in normals:
        nxt = xyz + n
        inside = ((nxt >= 0) & (nxt < size)).all(1)
        clamped = torch.minimum(nxt.clamp_min(0), size - 1)
        exposed.append(~inside | ~occ[batch, clamped[:, 0], clamped[:, 1], clamped[:, 2]])
    for k, d in enumerate(dirs):
        if not bool(torch.isfinite(d).all()):
            continue
        for f, n in enumerate(normals):
            cos = float((n.double() * d).sum())
            if cos <= 1e-9:  # faces edge-on (or away) see nothing; also absorbs rounding of sin(180 deg)
                continue
            rows = exposed[f].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            free = _march(occ, batch[rows], xyz[rows] + n, xyz[rows].double() + 0.5 + 0.5 * n.double(), d, size)
            hit = rows[free]
            facing[k, hit] = torch.clamp(facing[k, hit], min=cos)
            visible[k, hit] = True
    return facing, visible


def _march(occ: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor, origin: torch.Tensor, d: torch.Tensor,
           size: torch.Tensor) -> torch.Tensor:
    """3D DDA (Amanatides and Woo): whether rays from ``origin`` along ``d`` leave the grid without
    entering an occupied cell; ``cell`` is the (empty) cell each ray starts in."""
    cell = cell.clone()
    step = torch.sign(d).long()
    moving = step != 0
    inv = torch.where(moving, 1.0 / torch.where(moving, d.abs(), torch.ones_like(d)), math.inf)
    bound = torch.where(step > 0, cell + 1, cell).double()
    t_max = torch.where(moving, (bound - origin) / torch.where(moving, d, torch.ones_like(d)), math.inf)
    free = torch.zeros(cell.shape[0], dtype=torch.bool, device=cell.device)
    active = torch.arange(cell.shape[0], device=cell.device)
    for _ in range(int(size.sum()) + 3):
        if active.numel() == 0:
            break
        axis = t_max[active].argmin(1)
        cell[active, axis] += step[axis]
        t_max[active, axis] += inv[axis]
        c = cell[active]
        inside = ((c >= 0) & (c < size)).all(1)
        free[active[~inside]] = True
        active, c = active[inside], c[inside]
        hit = occ[batch[active], c[:, 0], c[:, 1], c[:, 2]]
        active = active[~hit]
    free[active] = True  # cannot happen within the bound above; a ray still going is not blocked
    return free


def directional_gain(positions: torch.Tensor, spatial: tuple[int, ...], directions: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """``exp(temperature * (cos - 1))`` per view and grid element, ``[K, R]``.

    ``cos`` is the cosine between the element's offset from the grid centre and the view's
    direction (0 at the centre, where every view counts the same). A grid of fewer than three
    spatial dimensions uses the first components of the directions. ``directions`` is ``[K, 3]``,
    or per element ``[R, K, 3]`` (each element its own sample's cameras).

    >>> pos = torch.tensor([[0, 0, 0], [1, 1, 1]])           # two corners of a 2^3 grid
    >>> directional_gain(pos, (2, 2, 2), torch.tensor([[1.0, 1.0, 1.0]]) / 3**0.5, 2.0).round(decimals=3)
    tensor([[0.0180, 1.0000]], dtype=torch.float64)
    """
    dims = len(spatial)
    if dims > 3:
        raise AggregatorOptionError(f"visibility: a dense latent with {dims} spatial dimensions has no 3D directions; "
                                    "use it on latents with at most three spatial dimensions", aggregator="visibility")
    centre = torch.tensor(spatial, dtype=torch.float64, device=positions.device) / 2
    offset = positions.double() + 0.5 - centre
    offset = offset / offset.norm(dim=1, keepdim=True).clamp_min(1e-9)
    if directions.ndim == 3:
        cos = (offset.unsqueeze(1) * directions[..., :dims].to(offset)).sum(-1)  # [R, K]
    else:
        cos = offset @ directions[:, :dims].to(offset).T  # [R, K]
    return torch.exp(temperature * (cos.nan_to_num(0.0) - 1)).T


class Visibility(ElementAggregator):
    """Per element, views weighted by how squarely they see it (occlusion exact on voxels); needs cameras."""

    name = "visibility"
    #: refuses several views without cameras: a loop over every aggregator gives cameras or skips this one
    needs_cameras = True

    def __init__(self, *, temperature: float = 4.0, floor: float = 0.05, require_cameras: bool = True) -> None:
        self.temperature = number_option("visibility", "temperature", temperature, low=0.0,
                                         meaning=" (how sharply the most frontal view wins)")
        self.floor = number_option("visibility", "floor", floor, low=0.0, high=1.0,
                                   meaning=" (the smallest gain of a view, also where it is hidden)")
        if not isinstance(require_cameras, bool):
            raise AggregatorOptionError(f"visibility: option require_cameras must be true or false; "
                                        f"got require_cameras={require_cameras!r}", aggregator="visibility")
        self.require_cameras = require_cameras

    def check(self, *, num_views: int, cameras: tuple[Any, ...]) -> None:
        if self.require_cameras and num_views > 1 and all(c is None for c in cameras):
            raise AggregatorOptionError(
                "visibility: no view has a camera; give one per view, e.g. patch_sampler(..., cameras=['front', "
                "'back']) or run_multi_image(..., cameras=['front', '90,20']), on the command line "
                "--images front.png@front side.png@90; or pass require_cameras=False to fall back to the weighted mean",
                aggregator="visibility",
            )

    def gains(self, step: Step, el: Elements, directions: torch.Tensor) -> torch.Tensor:
        """``[V, R]`` gains in ``[0, 1]`` of the kept views (any value where a view has no camera).

        ``directions``: the kept views' ``[V, 3]``, or per sample ``[B, V, 3]``, on the host (the
        voxel march is cached by their values, read without a device sync).
        """
        if el.spatial is not None:
            directions = directions.to(el.values.device)
            per_row = directions[el.sample_of_row] if directions.ndim == 3 else directions
            return directional_gain(el.positions(), el.spatial, per_row, self.temperature)
        coords = step.x_t.coords
        # the distinct directions: per sample they repeat (the same named cameras), so each is marched once
        flat = directions.reshape(-1, 3)
        key = tuple(round(v, 9) for v in flat.nan_to_num(9.0).flatten().tolist())
        cached = step.state.get("visibility")
        if cached is None or cached[0] is not coords or cached[1] != key:
            unique, which = torch.unique(flat.nan_to_num(9.0), dim=0, return_inverse=True)
            unique = torch.where(unique == 9.0, torch.nan, unique)
            facing, visible = voxel_visibility(coords, unique)
            gain = visible * torch.exp(self.temperature * (facing - 1))  # [U, M]
            if directions.ndim == 3:  # per sample: each row's view from its own sample's cameras
                rows = torch.arange(coords.shape[0], device=gain.device)
                which = which.view(directions.shape[:2]).to(gain.device)[el.sample_of_row.to(gain.device)].T
                gain = gain[which, rows]
            else:
                gain = gain[which.to(gain.device)]
            cached = (coords, key, gain)
            step.state["visibility"] = cached
        return cached[2]

    def element_weights(self, step: Step, el: Elements) -> torch.Tensor:
        device = el.values.device
        if step.per_sample:
            directions = step.sample_directions[:, el.views]  # [B, V, 3], on the host
            seen = torch.isfinite(directions).all(-1)
            known = seen.to(device)[el.sample_of_row].T  # [V, R]
        else:
            directions = step.view_directions[el.views]
            seen = known = torch.isfinite(directions).all(1)
        if not bool(seen.any()):  # a host tensor: no device sync
            return el.prior
        gain = self.gains(step, el, directions)
        return combine_known(el.prior.to(gain.device), gain.to(torch.float64), known.to(gain.device), self.floor)

    def __repr__(self) -> str:
        return f"Visibility(temperature={self.temperature}, floor={self.floor}, require_cameras={self.require_cameras})"


@hookimpl
def register_aggregators() -> list[type]:
    return [Visibility]

