"""What the TRELLIS.2 and TRELLIS (v1) integrations share.

Both pipelines have the same shape: ``preprocess_image``, ``get_cond`` returning one row per
image, one sampler per stage, stage methods that call ``sampler.sample(model, noise,
**cond, **params)``, and a ``run`` that strings them together for *one* image. A multi-view
run here is that same ``run``, with

* ``get_cond`` answering the N views' conditioning (one negative row), and
* every stage sampler patched by :func:`trellis_mv.patch_sampler` with its stage's aggregator,

both undone when the run ends, however it ends. Nothing of the pipeline's own logic (the
cascade, its token-budget fallback, the decoders) is copied.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import TrellisMVError, ViewError
from .._spec import Aggregator
from ..pipeline import plan_stages

__all__ = [
    "ImageError",
    "ParameterError",
    "load_images",
]


class ParameterError(TrellisMVError, ValueError):
    """A run parameter is outside its range or unknown; raised before any model work."""


class ImageError(ViewError):
    """An input view cannot be used: unreadable, no foreground, or a size unlike the others."""


# -- stages ---------------------------------------------------------------------------------


def plan(mode: Any, stages: Mapping[str, Any] | None, stage_names: Sequence[str],
         aliases: Mapping[str, str]) -> dict[str, Aggregator]:
    """:func:`trellis_mv.plan_stages`, its errors raised as :class:`ParameterError` (same message)."""
    try:
        aggregators = plan_stages(stage_names, mode, stages, aliases)
    except (TrellisMVError, TypeError, ValueError) as exc:
        raise ParameterError(str(exc)) from exc
    for stage, aggregator in aggregators.items():
        if not isinstance(aggregator, Aggregator):
            raise ParameterError(
                f"stage {stage!r}: expected a registered aggregator name, \"name:option=value,...\", "
                f"(name, options) or an aggregator instance; got {aggregator!r}"
            )
    return aggregators


def check_weights(weights: Sequence[float] | None, views: int) -> None:
    if weights is not None and len(weights) != views:
        raise ParameterError(f"{len(weights)} weights for {views} views; give one weight per view")


# -- parameter checks ---------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def check_sampler_params(stage: str, params: Mapping[str, Any], allowed: Sequence[str],
                         hints: Mapping[str, str] | None = None) -> None:
    """Range checks shared by both dialects; unknown names are refused with the allowed list."""
    hints = hints or {}
    for key, value in params.items():
        where = f"{stage} sampler parameter {key}"
        if key not in allowed:
            hint = f" ({hints[key]})" if key in hints else ""
            raise ParameterError(f"unknown {stage} sampler parameter {key!r}{hint}; expected one of {', '.join(allowed)}")
        if key == "steps":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ParameterError(f"{where} must be an integer >= 1; got {key}={value!r}")
        elif key in ("guidance_rescale",):
            if not _is_number(value) or not 0 <= float(value) <= 1:
                raise ParameterError(f"{where} must be in [0, 1]; got {key}={value!r}")
        elif key == "rescale_t":
            if not _is_number(value) or float(value) <= 0:
                raise ParameterError(f"{where} must be a number > 0; got {key}={value!r}")
        elif key in ("guidance_strength", "cfg_strength"):
            if not _is_number(value) or float(value) < 0:
                raise ParameterError(f"{where} must be a finite number >= 0; got {key}={value!r}")
        elif key in ("guidance_interval", "cfg_interval"):
            ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                  and 0 <= float(value[0]) <= float(value[1]) <= 1)
            if not ok:
                raise ParameterError(f"{where} must be a pair (lo, hi) with 0 <= lo <= hi <= 1; got {key}={value!r}")


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")


# -- images ---------------------------------------------------------------------------------


def load_images(images: Sequence[Any]) -> list[Any]:
    """Open paths as PIL images (fully read), pass PIL images through; errors name the view."""
    from PIL import Image

    if isinstance(images, (str, Path)) or not isinstance(images, Sequence) or len(images) == 0:
        raise ImageError(f"expected a non-empty list of images (paths or PIL images); got {images!r}")
    out = []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            out.append(item)
            continue
        if not isinstance(item, (str, Path)):
            raise ImageError(f"view {i} is {type(item).__name__}; expected a path or a PIL image")
        path = Path(item)
        try:
            with Image.open(path) as im:
                im.load()
                out.append(im.copy())
        except FileNotFoundError as exc:
            raise ImageError(f"view {i}: {path} does not exist") from exc
        except Exception as exc:
            raise ImageError(f"view {i}: cannot read {path} as an image ({type(exc).__name__}: {exc})") from exc
    return out


def view_name(images: Sequence[Any], i: int) -> str:
    item = images[i]
    return str(item) if isinstance(item, (str, Path)) else f"view {i}"


def check_images(raw: Sequence[Any], opened: Sequence[Any], *, preprocess: bool) -> None:
    """Same size for every view; a visible foreground in those that carry an alpha channel."""
    sizes = [im.size for im in opened]
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{view_name(raw, i)}: {w}x{h}" for i, (w, h) in enumerate(sizes))
        raise ImageError(f"the views have different resolutions ({listed}); give every view at the same size")
    if not preprocess:
        return
    for i, im in enumerate(opened):
        if im.mode == "RGBA":
            alpha = np.asarray(im)[:, :, 3]
            if np.all(alpha == 255):
                continue  # opaque: the pipeline removes the background itself
            if not np.any(alpha > 0.8 * 255):
                raise ImageError(
                    f"{view_name(raw, i)}: no foreground found (no pixel with alpha above 80%); "
                    "give an image whose object is opaque, or an RGB image for background removal"
                )


def preprocess_views(pipeline: Any, raw: Sequence[Any], opened: Sequence[Any]) -> list[Any]:
    """The pipeline's own ``preprocess_image`` per view, with errors that name the view."""
    out = []
    for i, im in enumerate(opened):
        try:
            out.append(pipeline.preprocess_image(im))
        except ValueError as exc:  # numpy's min() of an empty bounding box
            raise ImageError(
                f"{view_name(raw, i)}: no foreground found after background removal ({exc}); "
                "give an image with a clearly visible object"
            ) from exc
    return out


# -- patching -------------------------------------------------------------------------------


@contextlib.contextmanager
def redirect_get_cond(pipeline: Any, make: Callable[..., dict[str, torch.Tensor]]) -> Iterator[None]:
    """Make ``pipeline.get_cond`` answer ``make(*args, **kwargs)`` for the block, then restore it."""
    had = "get_cond" in vars(pipeline)
    saved = vars(pipeline).get("get_cond")
    pipeline.get_cond = make
    try:
        yield
    finally:
        if had:
            pipeline.get_cond = saved
        else:
            del pipeline.get_cond


def views_cond(encoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``get_cond``'s dict with its N identical negative rows reduced to one."""
    out = dict(encoded)
    if "neg_cond" in out and out["neg_cond"] is not None:
        out["neg_cond"] = out["neg_cond"][:1]
    return out


def summarize_patches(patches: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage, patch in patches.items():
        out[stage] = {
            "aggregator": patch.name,
            "sampling_runs": patch.runs,
            "steps": len(patch.records),
            "model_forwards": patch.model_calls,
            "latent_rows": patch.batch_rows,
        }
    return out
