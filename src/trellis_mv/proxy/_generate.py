"""End-to-end multi-view generation with the proxy model: GLB, comparison PNG, JSON summary.

>>> import tempfile
>>> summary = demo(tempfile.mkdtemp() + "/demo", verbose=False)
>>> sorted(summary["outputs"])
['comparison.png', 'mesh.glb', 'summary.json']
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from trellis_mv.proxy._pipeline import STAGES, ProxyPipeline, example_images, preprocess
from trellis_mv.proxy._render import NAMED_VIEWS, View, parse_view, render, view_name

__all__ = ["demo", "generate", "mesh_from_voxels"]

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


# ------------------------------------------------------------------------------------------
# inputs and outputs
def _check_images(images: Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("no views: images=[] is empty; pass at least one image file, e.g. images=['front.png']")
    for i, p in enumerate(paths):
        if not p.exists():
            raise FileNotFoundError(f"images[{i}]={str(p)!r} does not exist; check the path")
        if not p.is_file():
            raise ValueError(f"images[{i}]={str(p)!r} is not a file; pass image files (PNG, JPEG, ...)")
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"images[{i}]={str(p)!r} is not a readable image ({exc}); pass PNG or JPEG files") from exc
    return paths


def _staging_dir(out_dir: Path) -> Path:
    parent = out_dir.parent
    while not parent.exists():
        parent = parent.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out={str(out_dir)!r} exists and is not a folder; choose a folder path")
    target = out_dir if out_dir.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to out={str(out_dir)!r} ({str(target)!r} is not writable); choose a writable folder")
    return Path(tempfile.mkdtemp(prefix=".trellis-mv-", dir=out_dir.parent if out_dir.parent.exists() else None))


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


def generate(
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    mode: str = "multidiffusion",
    stages: Mapping[str, Any] | None = None,
    seed: int = 42,
    steps: int | None = None,
    num_samples: int = 1,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    pipeline: ProxyPipeline | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Generate one shape from several views with the proxy model and write the results.

    Writes into ``out_dir`` (created if needed): ``mesh.glb`` (vertex colours),
    ``comparison.png`` (each input view above a render of the result from that view, then
    renders from the other sides) and ``summary.json``; with ``num_samples > 1`` also
    ``mesh_1.glb``, ``comparison_1.png``, ... Files are written to a temporary folder next
    to ``out_dir`` and moved into place only when everything succeeded.

    A view's direction is read from its file name (``front``, ``back``, ``left``, ``right``,
    ``top``, ``az30``, ``az30el20``, also as ``chair_front.png``) for the comparison picture;
    otherwise the closest view of the result is searched (the model itself never needs it).

    :param images: image files, one per view (any size, RGB, RGBA or grayscale).
    :param out_dir: the folder to write.
    :param mode: the aggregator of every stage not named in ``stages``.
    :param stages: per-stage aggregators, e.g. ``{"texture": "stochastic"}``.
    :param seed: the noise seed.
    :param steps: sampling steps of both stages (default: the pipeline's, 12).
    :param num_samples: samples drawn at once.
    :param weights: one weight per view for aggregators that use weights.
    :param max_batch: at most this many latent rows per model forward.
    :param params: per-stage sampler parameter overrides.
    :returns: the summary also written as ``summary.json``.
    :raises FileNotFoundError: an image path does not exist.
    :raises ValueError: no views, a path is not an image, or ``out_dir`` is a file.
    :raises PermissionError: ``out_dir`` cannot be written.
    """
    from trellis_mv.pipeline import plan_stages, run_multi_image

    t0 = time.perf_counter()
    paths = _check_images(images)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got num_samples={num_samples!r}")
    out = Path(out_dir)
    plan = plan_stages(list(STAGES), mode, stages)  # fails early on unknown aggregators or stages
    staging = _staging_dir(out)
    try:
        pipe = pipeline or ProxyPipeline()
        stage_params = {s: dict((params or {}).get(s, {})) for s in STAGES}
        if steps is not None:
            for s in STAGES:
                stage_params[s]["steps"] = steps
        inputs = [preprocess(p) for p in paths]
        t1 = time.perf_counter()
        result, patches = run_multi_image(
            pipe, inputs, stages=plan, weights=weights, max_batch=max_batch, seed=seed, num_samples=num_samples,
            params=stage_params,
            verbose=verbose,
        )
        t2 = time.perf_counter()
        written = []
        views_info = []
        for k in range(num_samples):
            occ, col = result.occupancy[k], result.colors[k]
            views = []
            for i, p in enumerate(paths):
                name = _view_of(p)
                src = "file name"
                if name is None:
                    name, src = _match_view(inputs[i], occ, col), "matched to the result"
                views.append(name)
                if k == 0:
                    views_info.append({"image": str(p), "view": name, "view_from": src})
            suffix = "" if k == 0 else f"_{k}"
            mesh_from_voxels(occ.numpy(), col.numpy()).export(staging / f"mesh{suffix}.glb")
            _comparison(inputs, views, occ, col).save(staging / f"comparison{suffix}.png")
            written += [f"mesh{suffix}.glb", f"comparison{suffix}.png"]
        summary = {
            "model": "proxy",
            "aggregators": {s: getattr(a, "name", type(a).__name__) for s, a in plan.items()},
            "views": views_info,
            "num_views": len(paths),
            "seed": seed,
            "num_samples": num_samples,
            "params": {s: {**pipe.params[s], **stage_params[s]} for s in STAGES},
            "model_calls": {
                **{s: p.model_calls for s, p in patches.items()},
                "total": sum(p.model_calls for p in patches.values()),
            },
            "voxels": [int(result.occupancy[k].sum()) for k in range(num_samples)],
            "seconds": {
                "sampling": round(t2 - t1, 3),
                "total": round(time.perf_counter() - t0, 3),
            },
            "outputs": sorted([*written, "summary.json"]),
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
        out.mkdir(parents=True, exist_ok=True)
        for name in summary["outputs"]:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary["out_dir"] = str(out)
    return summary


def demo(
    out_dir: str | os.PathLike, *, num_views: int = 4, mode: str = "multidiffusion", seed: int = 42, **kwargs: Any
) -> dict[str, Any]:
    """Run :func:`generate` on the bundled example views (front, right, back, left of a held-out shape).

    :param num_views: how many of the four bundled views to use (1 to 4).
    """
    if not 1 <= num_views <= 4:
        raise ValueError(f"num_views must be between 1 and 4 (there are 4 bundled views), got num_views={num_views!r}")
    return generate(example_images()[:num_views], out_dir, mode=mode, seed=seed, **kwargs)
