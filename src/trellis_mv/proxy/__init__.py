"""The embedded proxy model: a small two-stage image-to-3D flow model with known ground truth.

It stands in for TRELLIS.2 where its weights are not available: synthetic shapes
(:func:`make_shape`), renders from its named views (:func:`render`, which is
:func:`trellis_mv.voxels.render` with :data:`NAMED_VIEWS`), a structure stage (dense
latent) and a texture stage (sparse latent), each sampled by its own
:class:`~trellis_mv.samplers.FlowEulerGuidanceIntervalSampler`, so
:func:`trellis_mv.patch_sampler` and every aggregator work on it unchanged. Its scores
(``iou``, ``score``, ...) live in :mod:`trellis_mv.eval`; the old names here still work
and warn.

>>> import tempfile, trellis_mv.proxy as proxy
>>> summary = proxy.demo(tempfile.mkdtemp() + "/out", num_views=2, params={"texture": {"steps": 4}})
>>> summary["aggregators"], summary["num_views"]
({'sparse_structure': 'multidiffusion', 'texture': 'multidiffusion'}, 2)
"""

import importlib
import warnings
from typing import Any

from trellis_mv.proxy._data import COMPONENTS, GRID, HELD_OUT_SEED, PALETTE, Shape, make_shape, make_shapes, palette_index
from trellis_mv.proxy._export import demo
from trellis_mv.proxy._models import ProxyConfig, ProxyModels, load_models, save_models
from trellis_mv.proxy._pipeline import (
    DEFAULT_PARAMS,
    NAMED_VIEWS,
    STAGES,
    VIEW_SETS,
    ProxyPipeline,
    ProxyResult,
    View,
    default_weights,
    example_images,
    input_views,
    parse_view,
    preprocess,
    render,
    view_name,
    visible_faces,
)
from trellis_mv.voxels import FACES as FACES  # now trellis_mv.voxels'; still importable from here
from trellis_mv.voxels import mesh_from_voxels as mesh_from_voxels

__all__ = [
    "COMPONENTS",
    "DEFAULT_PARAMS",
    "GRID",
    "HELD_OUT_SEED",
    "NAMED_VIEWS",
    "PALETTE",
    "STAGES",
    "VIEW_SETS",
    "ProxyConfig",
    "ProxyModels",
    "ProxyPipeline",
    "ProxyResult",
    "Shape",
    "View",
    "default_weights",
    "demo",
    "example_images",
    "input_views",
    "load_models",
    "make_shape",
    "make_shapes",
    "palette_index",
    "parse_view",
    "preprocess",
    "render",
    "save_models",
    "view_name",
    "visible_faces",
]

#: The scores that moved to trellis_mv.eval: old name here -> name there.
_MOVED = {"HELDOUT_VIEWS": "HELD_OUT_VIEWS", "NEAREST_VOXEL": "NEAREST_VOXEL", "chamfer": "chamfer",
          "color_error": "color_error", "fscore": "fscore", "iou": "iou", "reference_iou": "reference_iou",
          "score": "score_voxels"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'trellis_mv.proxy' has no attribute {name!r}")
    warnings.warn(f"trellis_mv.proxy.{name} is now trellis_mv.eval.{_MOVED[name]}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("trellis_mv.eval"), _MOVED[name])
