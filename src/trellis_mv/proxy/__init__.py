"""The embedded proxy model: a small two-stage image-to-3D flow model with known ground truth.

It stands in for TRELLIS.2 where its weights are not available: synthetic shapes
(:func:`make_shape`), renders from its named views (:func:`render`, which is
:func:`trellis_mv.voxels.render` with :data:`NAMED_VIEWS`), a structure stage (dense
latent) and a texture stage (sparse latent), each sampled by its own
:class:`~trellis_mv.samplers.FlowEulerGuidanceIntervalSampler`, so
:func:`trellis_mv.patch_sampler` and every aggregator work on it unchanged. Its scores
are :mod:`trellis_mv.eval`'s (the old names here warn).

>>> import tempfile, trellis_mv.proxy as proxy
>>> summary = proxy.demo(tempfile.mkdtemp() + "/out", num_views=2, params={"texture": {"steps": 4}})
>>> summary["aggregators"], summary["num_views"]
({'sparse_structure': 'multidiffusion', 'texture': 'multidiffusion'}, 2)
"""

import functools
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
    preprocess,
    render,
    visible_faces,
)
from trellis_mv.voxels import FACES as FACES  # now trellis_mv.voxels'; still importable from here
from trellis_mv.voxels import mesh_from_voxels as mesh_from_voxels

__all__ = [
    "COMPONENTS", "DEFAULT_PARAMS", "GRID", "HELD_OUT_SEED", "NAMED_VIEWS", "PALETTE", "STAGES", "VIEW_SETS", "ProxyConfig",
    "ProxyModels", "ProxyPipeline", "ProxyResult", "Shape", "View", "default_weights", "demo", "example_images",
    "input_views", "load_models", "make_shape", "make_shapes", "palette_index", "preprocess", "render", "save_models",
    "visible_faces",
]

#: Old names here -> where they are now (the scores in eval, the camera vocabulary in the core).
_MOVED = {"HELDOUT_VIEWS": "eval.HELD_OUT_VIEWS", "NEAREST_VOXEL": "eval.NEAREST_VOXEL", "chamfer": "eval.chamfer",
          "color_error": "eval.color_error", "fscore": "eval.fscore", "iou": "eval.iou", "reference_iou": "eval.reference_iou",
          "score": "eval.score_voxels", "parse_view": "parse_camera", "view_name": "camera_name"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'trellis_mv.proxy' has no attribute {name!r}")
    module, _, attr = f"trellis_mv.{_MOVED[name]}".rpartition(".")
    named = name in ("parse_view", "view_name")  # the proxy's names: its front is raised
    warnings.warn(f"trellis_mv.proxy.{name} is now {module}.{attr}" + (" with names=trellis_mv.proxy.NAMED_VIEWS" * named)
                  + "; import it from there", DeprecationWarning, stacklevel=2)
    found = getattr(importlib.import_module(module), attr)
    return functools.partial(found, names=NAMED_VIEWS) if named else found
