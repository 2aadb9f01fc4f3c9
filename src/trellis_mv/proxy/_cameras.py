"""The proxy's cameras: its named views (raised 25 degrees, as its views are rendered) and renders that use them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from trellis_mv import voxels
from trellis_mv._views import CAMERA_NAMES, Camera

__all__ = ["NAMED_VIEWS", "VIEW_SETS", "View", "input_views", "render", "visible_faces"]

View = tuple[float, float]
#: The proxy's named cameras: front, right, back and left look down from 25 degrees, as its views are rendered.
NAMED_VIEWS: dict[str, Camera] = {k: Camera(c.azimuth, 25.0 if k != "top" else c.elevation) for k, c in CAMERA_NAMES.items()}
#: The standard view sets by number of views: each adds the side the others show least.
VIEW_SETS: dict[int, list[str]] = {1: ["front"], 2: ["front", "right"], 4: ["front", "right", "back", "left"]}


def _proxy_names(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def with_names(*args: Any, samples: int | None = None, **kwargs: Any) -> Any:  # samples: ignored, as it always was
        return fn(*args, **{"names": NAMED_VIEWS, **kwargs})

    with_names.__doc__ = f"``trellis_mv.voxels.{fn.__name__}`` with the proxy's :data:`NAMED_VIEWS` as ``names``."
    return with_names


render, input_views, visible_faces = (_proxy_names(f) for f in (voxels.render, voxels.input_views, voxels.visible_faces))
