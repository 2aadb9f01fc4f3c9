"""Which view drove each voxel, and how much the views disagreed: arrays, a coloured mesh and a picture.

A per-element aggregator records, with :meth:`Step.record <trellis_mv.Step.record>` at each
step (the latest step is kept on :attr:`Patch.diagnostics <trellis_mv.Patch>`),
``"view_weights"`` (per view and element), ``"disagreement"`` (per element), ``"cameras"``
and, on sparse stages, ``"coords"``, as ``visibility``, ``attention`` and ``robust`` do.
After a run, the texture stage's record says which view decided the colour of each voxel;
:func:`trellis_mv.generate` saves it with the result (:func:`save_diagnostics`).

>>> import tempfile, torch
>>> record = {"view_weights": torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.5]]),
...           "disagreement": torch.tensor([0.1, 0.3, 0.0]), "cameras": (None, None)}
>>> coords = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 1], [0, 3, 1, 1]])
>>> dominant_view(record)[0].tolist()
[0, 1, 0]
>>> sorted(p.rsplit("/", 1)[1] for p in save_diagnostics(record, coords, tempfile.mkdtemp()))
['dominant_view.glb', 'dominant_view.png', 'view_weights.npz']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trellis_mv._views import camera_name, parse_camera
from trellis_mv.voxels import mesh_from_voxels, render

__all__ = ["VIEW_COLOURS", "dominant_view", "save_diagnostics", "voxel_arrays"]

#: RGB in [0, 1] of view 0, 1, ... in the dominant-view pictures (repeated beyond eight views).
VIEW_COLOURS = np.array(
    [[0.90, 0.10, 0.29], [0.24, 0.71, 0.29], [0.00, 0.51, 0.78], [0.96, 0.51, 0.19],
     [0.57, 0.12, 0.71], [0.27, 0.94, 0.94], [0.94, 0.20, 0.90], [0.82, 0.96, 0.24]],
    dtype=np.float32,
)


def _record(source: Any) -> Mapping[str, Any]:
    record = getattr(source, "diagnostics", source)
    if not isinstance(record, Mapping) or "view_weights" not in record:
        raise ValueError(
            "expected a Patch or its .diagnostics holding 'view_weights', as the aggregators visibility, attention "
            f"and robust record it; got {type(source).__name__} with keys "
            f"{sorted(record) if isinstance(record, Mapping) else '-'}"
        )
    return record


def dominant_view(source: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element, the view of largest weight and that weight (``[rows]`` or ``[B, *spatial]`` each).

    :param source: a :class:`~trellis_mv.Patch` or its ``diagnostics``.
    """
    weights = torch.as_tensor(_record(source)["view_weights"]).float()
    share, view = weights.max(0)
    return view, share


def voxel_arrays(source: Any, coords: Any = None) -> dict[str, np.ndarray]:
    """The texture stage's record as per-voxel arrays.

    :param coords: the voxels ``[M, 4]`` ``(batch, x, y, z)`` the record's rows stand for (or
        ``[M, 3]``, or an occupancy grid ``[B, R, R, R]`` / ``[R, R, R]`` whose ``nonzero()`` order
        they follow); default: the ``"coords"`` the aggregator recorded.
    :returns: ``coords [M, 4]``, ``view_weights [N, M]``, ``dominant [M]``, ``share [M]``,
        ``disagreement [M]`` (NaN where not recorded) and ``cameras`` (strings).
    """
    record = _record(source)
    weights = torch.as_tensor(record["view_weights"]).float().cpu()
    if coords is None:
        coords = record.get("coords")
    if coords is None:
        raise ValueError("no coords given and none recorded: pass the voxels [M, 4] the texture stage sampled")
    coords = torch.as_tensor(coords).cpu()
    if coords.dtype == torch.bool:
        grid = coords if coords.ndim == 4 else coords[None]
        coords = grid.nonzero()
    coords = coords.long()
    if coords.ndim == 2 and coords.shape[1] == 3:
        coords = torch.cat([torch.zeros_like(coords[:, :1]), coords], 1)
    if weights.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 4 or weights.shape[1] != coords.shape[0]:
        raise ValueError(
            f"view_weights {tuple(weights.shape)} do not match coords {tuple(coords.shape)}: per-voxel arrays come from a "
            "sparse stage's record (e.g. the texture stage), one weight row per voxel of the coords given"
        )
    share, dominant = weights.max(0)
    dis = record.get("disagreement")
    dis = torch.as_tensor(dis).float().cpu().reshape(-1) if dis is not None else torch.full((coords.shape[0],), float("nan"))
    cams = [("none" if c is None else camera_name(c)) for c in record.get("cameras", (None,) * weights.shape[0])]
    return {
        "coords": coords.numpy(), "view_weights": weights.numpy(), "dominant": dominant.numpy(),
        "share": share.numpy(), "disagreement": dis.numpy(), "cameras": np.array(cams),
    }


def _grid(coords: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xyz = coords[:, 1:] - coords[:, 1:].min(0)
    r = int(max(xyz.max() + 1, 2))
    r += r % 2
    occ = np.zeros((r, r, r), bool)
    col = np.zeros((r, r, r, 3), np.float32)
    occ[xyz[:, 0], xyz[:, 1], xyz[:, 2]] = True
    col[xyz[:, 0], xyz[:, 1], xyz[:, 2]] = values
    return occ, col


def save_diagnostics(patch_or_diagnostics: Any, coords: Any = None, out_dir: str | os.PathLike = ".") -> list[str]:
    """Write the texture stage's diagnostics into ``out_dir``; return the paths written.

    * ``view_weights.npz``: the arrays of :func:`voxel_arrays`;
    * ``dominant_view.glb`` (``dominant_view_<k>.glb`` for sample ``k > 0``): the voxels coloured
      by the view that drove them (:data:`VIEW_COLOURS`), darker where the choice was close;
    * ``dominant_view.png``: renders of that colouring and of the disagreement (dark = the views
      agreed, bright red = among the 5% where they disagreed most) from each view's camera (or front, right, back,
      left where no camera is known), with a legend.

    :param patch_or_diagnostics: the texture stage's :class:`~trellis_mv.Patch` or its ``diagnostics``.
    :param coords: the voxels the record's rows stand for (see :func:`voxel_arrays`).
    """
    from PIL import Image, ImageDraw

    arrays = voxel_arrays(patch_or_diagnostics, coords)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [str(out / "view_weights.npz")]
    np.savez_compressed(written[0], **arrays)  # type: ignore[arg-type]  # numpy's stub types the first keyword
    n = arrays["view_weights"].shape[0]
    confidence = np.clip((arrays["share"] - 1 / n) / max(1 - 1 / n, 1e-6), 0, 1)
    colour = VIEW_COLOURS[arrays["dominant"] % len(VIEW_COLOURS)] * (0.35 + 0.65 * confidence[:, None])
    dis = np.nan_to_num(arrays["disagreement"])
    top = np.quantile(dis, 0.95) if dis.size else 0.0
    dis = np.clip(dis / top, 0, 1) ** 0.7 if top > 0 else dis  # the top 5% saturate
    heat = np.stack([0.15 + 0.85 * dis, 0.15 * (1 - dis), 0.15 * (1 - dis)], 1).astype(np.float32)
    batches = np.unique(arrays["coords"][:, 0])
    for k in batches:
        rows = arrays["coords"][:, 0] == k
        occ, col = _grid(arrays["coords"][rows], colour[rows])
        name = "dominant_view.glb" if k == batches[0] else f"dominant_view_{int(k)}.glb"
        mesh_from_voxels(occ, col).export(out / name)
        written.append(str(out / name))

    rows = arrays["coords"][:, 0] == batches[0]
    occ, col = _grid(arrays["coords"][rows], colour[rows])
    _, hot = _grid(arrays["coords"][rows], heat[rows])
    cams = [c for c in arrays["cameras"] if c != "none"]
    views = [parse_camera(c) for c in cams] or [parse_camera(c) for c in ("front", "right", "back", "left")]
    size, pad = 112, 18
    a, _ = render(occ, col, views, size=size)
    b, _ = render(occ, hot, views, size=size)
    sheet = Image.new("RGB", (max(len(views) * size, 4 * 120), 2 * (size + pad) + pad * ((n + 3) // 4)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for j, view in enumerate(views):
        label = camera_name(view)
        for row, img in enumerate((a[j], b[j])):
            pil = Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            sheet.paste(pil, (j * size, row * (size + pad) + pad))
            draw.text((j * size + 3, row * (size + pad) + 3), ("view: " if row == 0 else "disagree: ") + label,
                      fill=(230, 230, 230))
    for i in range(n):
        x, y = (i % 4) * 120 + 4, 2 * (size + pad) + (i // 4) * pad + 3
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(255 * c) for c in VIEW_COLOURS[i % len(VIEW_COLOURS)]))
        draw.text((x + 14, y), f"view {i} ({arrays['cameras'][i]})", fill=(230, 230, 230))
    sheet.save(out / "dominant_view.png")
    written.append(str(out / "dominant_view.png"))
    return written
