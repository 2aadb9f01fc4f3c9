"""The proxy's files: a GLB of the voxels with their colours and a picture of inputs beside renders.

>>> import tempfile, trellis_mv
>>> summary = trellis_mv.demo(tempfile.mkdtemp() + "/demo", params={"sparse_structure": {"steps": 4}, "texture": {"steps": 4}})
>>> sorted(summary["outputs"])
['comparison.png', 'mesh.glb', 'summary.json']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from trellis_mv.proxy._render import NAMED_VIEWS, View, parse_view, render, view_name

__all__ = ["export_result", "mesh_from_voxels"]

_FACES = [  # (axis, sign): the 4 corners of the face of a unit cube, counter-clockwise seen from outside
    ((0, 1), [(1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1)]),
    ((0, -1), [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)]),
    ((1, 1), [(0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0)]),
    ((1, -1), [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)]),
    ((2, 1), [(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)]),
    ((2, -1), [(0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)]),
]


def mesh_from_voxels(occupancy: np.ndarray | torch.Tensor, colors: np.ndarray | torch.Tensor) -> Any:
    """A ``trimesh.Trimesh`` of the exposed voxel faces, with per-vertex colours, in ``[-1, 1]^3``.

    >>> occ = np.zeros((16, 16, 16), bool); occ[3, 4, 5] = True
    >>> m = mesh_from_voxels(occ, np.ones((16, 16, 16, 3)))
    >>> len(m.faces), m.is_watertight or len(m.vertices) == 24
    (12, True)
    """
    import trimesh

    occ = np.asarray(occupancy, dtype=bool)
    col = np.asarray(colors, dtype=np.float32)
    r = occ.shape[0]
    padded = np.pad(occ, 1)
    verts, faces, vcol = [], [], []
    n = 0
    for (axis, sign), corners in _FACES:
        shift = [0, 0, 0]
        shift[axis] = sign
        neighbour = padded[1 + shift[0] : 1 + shift[0] + r, 1 + shift[1] : 1 + shift[1] + r, 1 + shift[2] : 1 + shift[2] + r]
        vox = np.argwhere(occ & ~neighbour)
        if len(vox) == 0:
            continue
        quad = vox[:, None, :] + np.array(corners)[None]  # [F, 4, 3]
        verts.append(quad.reshape(-1, 3))
        idx = n + np.arange(len(vox))[:, None] * 4
        faces.append(np.concatenate([idx + np.array([0, 1, 2]), idx + np.array([0, 2, 3])]))
        rgb = col[vox[:, 0], vox[:, 1], vox[:, 2]]
        vcol.append(np.repeat(rgb, 4, axis=0))
        n += len(vox) * 4
    if not verts:
        return trimesh.Trimesh()
    v = np.concatenate(verts).astype(np.float32) / (r / 2) - 1
    c = (np.clip(np.concatenate(vcol), 0, 1) * 255).round().astype(np.uint8)
    rgba = np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(vertices=v, faces=np.concatenate(faces), vertex_colors=rgba, process=False)


def _view_of(path: Path) -> str | None:
    stem = path.stem.lower()
    for token in [stem, *stem.replace("-", "_").split("_")]:
        try:
            return view_name(parse_view(token))
        except ValueError:
            continue
    return None


def _match_view(image: torch.Tensor, occ: torch.Tensor, col: torch.Tensor) -> str:
    """The view from which the result looks most like ``image`` (a coarse search)."""
    cands: list[View] = [(float(a), float(e)) for e in (0, 20, 40) for a in range(0, 360, 30)] + [NAMED_VIEWS["top"]]
    small = torch.nn.functional.avg_pool2d(image[None], 2)[0]
    imgs, _ = render(occ, col, cands, size=32, samples=64)
    err = (imgs - small[None]).abs().mean((1, 2, 3))
    return view_name(cands[int(err.argmin())])


def _tile(img: torch.Tensor | np.ndarray | None, label: str, size: int = 128) -> Image.Image:
    tile = Image.new("RGB", (size, size + 16), (32, 32, 32))
    if img is not None:
        arr = img.permute(1, 2, 0).numpy() if isinstance(img, torch.Tensor) else img
        pil = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        tile.paste(pil, (0, 16))
    ImageDraw.Draw(tile).text((3, 2), label, fill=(230, 230, 230))
    return tile


def _comparison(inputs: list[torch.Tensor], views: list[str], occ: torch.Tensor, col: torch.Tensor) -> Image.Image:
    others = [v for v in ("front", "right", "back", "left", "top", "az45el30") if v not in views]
    same, _ = render(occ, col, views, size=128)
    rest, _ = render(occ, col, others, size=128) if others else (torch.zeros(0, 3, 128, 128), None)
    cols = len(views) + len(others)
    sheet = Image.new("RGB", (cols * 132, 2 * 148), (0, 0, 0))
    for i, v in enumerate(views):
        sheet.paste(_tile(inputs[i], f"input {i}: {v}"), (i * 132, 0))
        sheet.paste(_tile(same[i], f"result: {v}"), (i * 132, 148))
    for j, v in enumerate(others):
        x = (len(views) + j) * 132
        sheet.paste(_tile(None, "(not given)"), (x, 0))
        sheet.paste(_tile(rest[j], f"result: {v}"), (x, 148))
    return sheet


def export_result(result: Any, folder: Path) -> list[str]:
    """Write ``mesh.glb`` and ``comparison.png`` per sample of a proxy result into ``folder``.

    A view's direction in the picture is its camera where one was given, else read from its
    file name (``front``, ``az30el20``, also as ``chair_front.png``), else the closest view
    of the result (the model itself never needs it).
    """
    out = result.output
    inputs = [v.cpu() for v in result.views]
    written = []
    for k in range(out.occupancy.shape[0]):
        occ, col = out.occupancy[k], out.colors[k]
        names = []
        for i, image in enumerate(inputs):
            camera = result.cameras[i] if result.cameras else None
            name = view_name(tuple(camera)) if camera else _view_of(Path(result.inputs[i])) if i < len(result.inputs) else None
            names.append(name or _match_view(image, occ, col))
        suffix = "" if k == 0 else f"_{k}"
        mesh_from_voxels(occ.numpy(), col.numpy()).export(folder / f"mesh{suffix}.glb")
        _comparison(inputs, names, occ, col).save(folder / f"comparison{suffix}.png")
        written += [f"mesh{suffix}.glb", f"comparison{suffix}.png"]
    return written
