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

from trellis_mv._errors import ViewError
from trellis_mv._views import camera_name
from trellis_mv.proxy._cameras import NAMED_VIEWS, View, render
from trellis_mv.voxels import mesh_from_voxels

__all__ = ["export_result"]


def _view_of(path: Path) -> str | None:
    stem = path.stem.lower()
    for token in [stem, *stem.replace("-", "_").split("_")]:
        if not token[:1].isalpha():  # a name or az30el20; "photo_01" is not at azimuth 1
            continue
        try:
            return camera_name(token, NAMED_VIEWS)
        except ViewError:
            continue
    return None


def _match_view(image: torch.Tensor, occ: torch.Tensor, col: torch.Tensor) -> str:
    """The view from which the result looks most like ``image`` (a coarse search)."""
    cands: list[View] = [(float(a), float(e)) for e in (0, 20, 40) for a in range(0, 360, 30)] + [NAMED_VIEWS["top"]]
    small = torch.nn.functional.avg_pool2d(image[None], 2)[0]
    imgs, _ = render(occ, col, cands, size=32)
    err = (imgs - small[None]).abs().mean((1, 2, 3))
    return camera_name(cands[int(err.argmin())], NAMED_VIEWS)


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
            given = _view_of(Path(result.inputs[i])) if i < len(result.inputs) else None
            name = camera_name(camera, NAMED_VIEWS) if camera else given
            names.append(name or _match_view(image, occ, col))
        suffix = "" if k == 0 else f"_{k}"
        mesh_from_voxels(occ, col).export(folder / f"mesh{suffix}.glb")
        _comparison(inputs, names, occ, col).save(folder / f"comparison{suffix}.png")
        written += [f"mesh{suffix}.glb", f"comparison{suffix}.png"]
    return written
