"""Input views as images: every mode Pillow opens becomes RGB or RGBA faithfully, or is refused clearly."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ._errors import ImageError

__all__ = ["check_foreground", "convert", "describe_view", "image_tensor", "load_image", "load_images"]

_TO_RGB = {"1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


def describe_view(item: Any, index: int) -> str:
    """How errors name a view: its path, or its position."""
    return f"view {index} ({item})" if isinstance(item, (str, os.PathLike)) else f"view {index}"


def _high_depth(im: Image.Image, name: str) -> Image.Image:
    """16-bit and float grayscale to 8 bits, keeping the image's own range (I;16: 0..65535; F: 0..1 or 0..255)."""
    values = np.asarray(im, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageError(f"{name} holds NaN or Inf pixel values; save it as an ordinary 8- or 16-bit image")
    if im.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif im.mode.startswith("I;16") or values.max(initial=0.0) > 255:
        top = 65535.0
    else:
        top = 255.0
    scaled = np.clip(values / top, 0.0, 1.0) * 255.0
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L").convert("RGB")


def convert(im: Image.Image, name: str) -> Image.Image:
    """An opened image as RGB, or RGBA where it carries transparency."""
    im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode in ("RGB", "RGBA"):
        return im.copy()
    if mode in ("LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    if mode == "F" or mode.startswith("I"):
        return _high_depth(im, name)
    if mode in _TO_RGB:
        return im.convert("RGB")
    raise ImageError(f"{name} has pixel mode {mode!r}, which trellis-mv cannot read; save it as RGB or RGBA PNG/JPEG")


def load_image(item: Any, index: int = 0) -> Image.Image:
    """A view (a path or a PIL image) as an RGB or RGBA PIL image, read completely.

    16-bit and float grayscale keep their range, palette images keep their transparency,
    CMYK becomes RGB, EXIF rotation is applied. An image over Pillow's decompression-bomb
    limit is refused, as is an RGBA image with no opaque pixel.

    >>> load_image(Image.new("I;16", (4, 4), 65535)).getpixel((0, 0))
    (255, 255, 255)
    """
    name = describe_view(item, index)
    if isinstance(item, Image.Image):
        im = convert(item, name)
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            raise ImageError(f"{name} does not exist; check the path")
        if not path.is_file():
            raise ImageError(f"{name} is not a file; pass image files (PNG, JPEG, ...)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as opened:
                    opened.load()
                    im = convert(opened, name)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(
                f"{name} is too large to decode safely ({exc}); downscale it (e.g. to 2048 px a side) first"
            ) from exc
        except ImageError:
            raise
        except Exception as exc:  # Pillow raises several types for unreadable files
            raise ImageError(f"{name} is not a readable image ({type(exc).__name__}: {exc}); pass PNG or JPEG files") from exc
    else:
        raise ImageError(f"{name} is a {type(item).__name__}; expected an image path or a PIL image")
    if min(im.size) < 1:
        raise ImageError(f"{name} is empty ({im.size[0]}x{im.size[1]} pixels)")
    return im


def check_foreground(im: Image.Image, name: str) -> None:
    """An RGBA view must show something: at least one pixel more than 80% opaque."""
    if im.mode == "RGBA" and not np.any(np.asarray(im)[:, :, 3] > 0.8 * 255):
        raise ImageError(
            f"{name} has no foreground: no pixel is more than 80% opaque; give an image whose object is opaque, "
            "or an RGB image"
        )


def load_images(images: Sequence[Any]) -> list[Any]:
    """:func:`load_image` on every path or PIL image; anything else (e.g. a tensor an adapter accepts) passes through.

    >>> len(load_images([Image.new("RGB", (8, 8)), Image.new("LA", (8, 8), (9, 255))]))
    2
    """
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise ImageError(f"images must be a list with one image per view; got {images!r}")
    if len(images) == 0:
        raise ImageError("no views: images is empty; give at least one image")
    out = []
    for i, item in enumerate(images):
        if isinstance(item, (str, os.PathLike, Image.Image)):
            item = load_image(item, i)
            check_foreground(item, describe_view(images[i], i))
        out.append(item)
    return out


def image_tensor(item: Any, index: int = 0) -> torch.Tensor:
    """A view at its own size as ``float [3, H, W]`` in ``[0, 1]``, RGBA composited on black; tensors pass through.

    >>> image_tensor(Image.new("RGBA", (6, 4), (255, 128, 0, 255))).shape
    torch.Size([3, 4, 6])
    """
    if isinstance(item, torch.Tensor):
        return item
    rgba = torch.from_numpy(np.asarray(load_image(item, index).convert("RGBA"), dtype=np.float32) / 255)
    return (rgba[..., :3] * rgba[..., 3:]).permute(2, 0, 1).contiguous()
