"""Input views as images: every mode Pillow opens becomes RGB or RGBA faithfully, or is refused clearly.

:func:`prepare_photos` is the one photo preparation of trellis-mv (``trellis-mv generate
--preprocess`` and the app's "Prepare photos"): the object cut out of a plain background and
centred at one scale across the photos, with a warning where the background is not plain.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ._errors import ImageError

__all__ = [
    "PreparedPhoto", "check_foreground", "convert", "describe_view", "image_tensor", "load_image", "load_images",
    "prepare_photos",
]

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


# -- photo preparation --------------------------------------------------------------------------------

#: Colour distance (0..1 RGB, Euclidean) within which a pixel counts as the background's colour.
BACKGROUND_TOLERANCE = 0.12
#: Share of the border that must be the background's colour for the background to count as plain.
PLAIN_BORDER = 0.9
#: The object's longest side in the prepared square, as a share of the side (TRELLIS.2 pads its crop by 1.2).
FILL = 0.8
#: Longest side of a prepared photo, in pixels.
MAX_SIDE = 1024


@dataclass
class PreparedPhoto:
    """One photo after :func:`prepare_photos`.

    :ivar image: square: the object on a transparent background (RGBA); the photo as it came,
        made square, where its background could not be removed; or the photo unchanged where it
        already was a square on black.
    :ivar note: what was done, in one line.
    :ivar warning: why the photo was not cut out, and what to do; None when it was.
    """

    image: Image.Image
    note: str
    warning: str | None = None


def _mask(im: Image.Image) -> tuple[np.ndarray | None, str, str | None]:
    """The object's mask, how it was found, and a warning when it could not be."""
    from scipy import ndimage

    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255
    alpha = rgba[..., 3]
    if im.mode == "RGBA" and float(alpha.min()) < 0.5:
        return alpha > 0.5, "transparency kept", None
    rgb = rgba[..., :3]
    h, w = alpha.shape
    if h == w and float(np.percentile(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), 95)) < 0.02:
        return None, "already a square on black, as the model's views are: used as it is", None
    k = max(1, round(0.02 * min(h, w)))
    border = np.concatenate([rgb[:k].reshape(-1, 3), rgb[-k:].reshape(-1, 3),
                             rgb[:, :k].reshape(-1, 3), rgb[:, -k:].reshape(-1, 3)])
    colour = np.median(border, axis=0)
    plain = float((np.linalg.norm(border - colour, axis=1) < BACKGROUND_TOLERANCE).mean())
    if plain < PLAIN_BORDER:
        return None, "used as it came", (
            f"the background is not plain (only {plain:.0%} of the border is one colour), so it was not removed; "
            "the model will see it as part of the object. Remove it first (any background-removal tool; "
            "save a PNG with transparency) or photograph the object against a plain wall")
    mask = np.linalg.norm(rgb - colour, axis=-1) >= BACKGROUND_TOLERANCE
    mask = ndimage.binary_opening(mask, iterations=max(1, k // 4))
    labels, count = ndimage.label(mask)
    if count == 0:
        return None, "used as it came", ("nothing differs from the background colour, so no object was found; "
                                         "check the photo shows the object against a contrasting background")
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))  # the object, not specks
    rgb_name = "#{:02x}{:02x}{:02x}".format(*(round(float(c) * 255) for c in colour))
    return ndimage.binary_fill_holes(keep), f"background {rgb_name} removed", None


def prepare_photos(images: Sequence[Any]) -> list[PreparedPhoto]:
    """Cut each photo's object out of a plain background and centre all of them at one scale.

    The background colour is the median of the photo's border; where at least 90% of the
    border lies within :data:`BACKGROUND_TOLERANCE` of it, the pixels that differ from it
    (cleaned of specks, holes filled) are the object. A photo with transparency keeps its
    own. The photos are then cropped to squares centred on their objects, all with one side
    (the largest object fills :data:`FILL` of it), so that sizes stay comparable between
    views, and downscaled to at most :data:`MAX_SIDE` pixels. A photo whose background is
    not plain is only made square, and its :attr:`PreparedPhoto.warning` says so: no
    learned matting runs here. A square photo on black is already what the model takes
    (the proxy's renders are) and is left as it is: centring it again would move the object
    in the frame, and where the object sits in each view tells where it is.

    >>> im = Image.new("RGB", (160, 120), (230, 230, 230))
    >>> im.paste((200, 30, 30), (20, 30, 60, 70))          # a red box on a grey table
    >>> [p] = prepare_photos([im])
    >>> p.image.size, p.image.mode, p.note, p.warning
    ((50, 50), 'RGBA', 'background #e6e6e6 removed; cropped to the object', None)
    """
    loaded = [load_image(item, i) for i, item in enumerate(images)]
    found = [_mask(im) for im in loaded]
    boxes: list[tuple[int, int, int, int] | None] = []
    for mask, _, _ in found:
        if mask is None or not mask.any():
            boxes.append(None)
            continue
        ys, xs = np.nonzero(mask)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    extents = [max(b[2] - b[0], b[3] - b[1]) for b in boxes if b is not None]
    side = int(np.ceil(max(extents) / FILL)) if extents else 0
    out = []
    for im, (mask, how, warning), box in zip(loaded, found, boxes):
        if how.startswith("already"):
            out.append(PreparedPhoto(im, how))
            continue
        rgba = im.convert("RGBA")
        if mask is not None:
            rgba.putalpha(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)))
        if box is None:  # made square around its centre, nothing cut out
            s = max(im.size)
            cx, cy = im.size[0] / 2, im.size[1] / 2
            note = how + "; padded to a square"
        else:
            s = side
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            note = how + "; cropped to the object"
        left, top = round(cx - s / 2), round(cy - s / 2)
        canvas = Image.new("RGBA", (s, s), (0, 0, 0, 0) if mask is not None else (0, 0, 0, 255))
        canvas.paste(rgba, (-left, -top))
        if s > MAX_SIDE:
            canvas = canvas.resize((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        out.append(PreparedPhoto(canvas, note, warning))
    return out
