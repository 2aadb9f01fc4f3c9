"""The embedded proxy model: a small two-stage image-to-3D flow model with known ground truth.

It stands in for TRELLIS.2 where its weights are not available: synthetic shapes
(:func:`make_shape`), renders from its named views (:func:`render`, which is
:func:`trellis_mv.voxels.render` with :data:`NAMED_VIEWS`), a structure stage (dense
latent) and a texture stage (sparse latent), each sampled by its own
:class:`~trellis_mv.samplers.FlowEulerGuidanceIntervalSampler`, so
:func:`trellis_mv.patch_sampler` and every aggregator work on it unchanged. Its scores
are :mod:`trellis_mv.eval`'s.

It is the built-in adapter of ``--model proxy`` (:class:`ProxyAdapter`) plus its synthetic data set.

>>> import trellis_mv
>>> result = trellis_mv.run_multi_image(ProxyAdapter(), example_images()[:2], params={"texture": {"steps": 4}})
>>> tuple(result.output.occupancy.shape)
(1, 16, 16, 16)
"""

import functools
import warnings
from typing import Any

from trellis_mv._views import camera_name, parse_camera
from trellis_mv.proxy._data import COMPONENTS, GRID, HELD_OUT_SEED, PALETTE, SIDES, Shape, make_shape, make_shapes, palette_index
from trellis_mv.proxy._models import ProxyConfig, ProxyModels, load_models, save_models
from trellis_mv.proxy._pipeline import (
    DEFAULT_PARAMS,
    NAMED_VIEWS,
    PRECISIONS,
    STAGES,
    VIEW_SETS,
    ProxyAdapter,
    ProxyResult,
    View,
    check_precision,
    default_weights,
    example_images,
    input_views,
    preprocess,
    render,
    visible_faces,
)
from trellis_mv.proxy._pipeline import ProxyPipeline as ProxyPipeline
from trellis_mv.voxels import FACES as FACES  # now trellis_mv.voxels'; still importable from here
from trellis_mv.voxels import mesh_from_voxels as mesh_from_voxels

__all__ = [
    "COMPONENTS", "DEFAULT_PARAMS", "GRID", "HELD_OUT_SEED", "NAMED_VIEWS", "PALETTE", "PRECISIONS", "SIDES", "STAGES",
    "VIEW_SETS", "ProxyAdapter", "ProxyConfig", "ProxyModels", "ProxyResult", "Shape", "View", "check_precision",
    "default_weights", "example_images", "input_views", "load_models", "make_shape", "make_shapes", "palette_index",
    "preprocess", "render", "save_models", "visible_faces",
]

#: The scores that moved to the harness (an adapter does not import it): old name here -> name in trellis_mv.eval.
_SCORES = {"HELDOUT_VIEWS": "HELD_OUT_VIEWS", "NEAREST_VOXEL": "NEAREST_VOXEL", "chamfer": "chamfer",
           "color_error": "color_error", "fscore": "fscore", "iou": "iou", "reference_iou": "reference_iou",
           "score": "score_voxels"}
_CAMERAS = {"parse_view": parse_camera, "view_name": camera_name}


def __getattr__(name: str) -> Any:
    if name in _CAMERAS:
        warnings.warn(f"trellis_mv.proxy.{name} is now trellis_mv.{_CAMERAS[name].__name__} with "
                      "names=trellis_mv.proxy.NAMED_VIEWS", DeprecationWarning, stacklevel=2)
        return functools.partial(_CAMERAS[name], names=NAMED_VIEWS)
    if name in _SCORES:  # ImportError: a from-import would drop an AttributeError's message
        raise ImportError(f"trellis_mv.proxy.{name} is now trellis_mv.eval.{_SCORES[name]}; import it from there")
    raise AttributeError(f"module 'trellis_mv.proxy' has no attribute {name!r}")
