"""The embedded proxy model: a small two-stage image-to-3D flow model with known ground truth.

It stands in for TRELLIS.2 where its weights are not available: synthetic shapes
(:func:`make_shape`), renders from named views (:func:`render`), a structure stage (dense
latent) and a texture stage (sparse latent), each sampled by its own
:class:`~trellis_mv.samplers.FlowEulerGuidanceIntervalSampler`, so
:func:`trellis_mv.patch_sampler` and every aggregator work on it unchanged.

>>> import tempfile, trellis_mv.proxy as proxy
>>> summary = proxy.demo(tempfile.mkdtemp() + "/out", num_views=2, params={"texture": {"steps": 4}})
>>> summary["aggregators"], summary["num_views"]
({'sparse_structure': 'multidiffusion', 'texture': 'multidiffusion'}, 2)
"""

from trellis_mv.proxy._data import GRID, HELD_OUT_SEED, Shape, make_shape, make_shapes
from trellis_mv.proxy._export import demo, mesh_from_voxels
from trellis_mv.proxy._metrics import chamfer, color_error, iou
from trellis_mv.proxy._models import ProxyConfig, ProxyModels, load_models, save_models
from trellis_mv.proxy._pipeline import (
    DEFAULT_PARAMS,
    STAGES,
    ProxyPipeline,
    ProxyResult,
    default_weights,
    example_images,
    preprocess,
)
from trellis_mv.proxy._render import NAMED_VIEWS, input_views, parse_view, render, view_name

__all__ = [
    "DEFAULT_PARAMS",
    "GRID",
    "HELD_OUT_SEED",
    "NAMED_VIEWS",
    "STAGES",
    "ProxyConfig",
    "ProxyModels",
    "ProxyPipeline",
    "ProxyResult",
    "Shape",
    "chamfer",
    "color_error",
    "default_weights",
    "demo",
    "example_images",
    "input_views",
    "iou",
    "load_models",
    "make_shape",
    "make_shapes",
    "mesh_from_voxels",
    "parse_view",
    "preprocess",
    "render",
    "save_models",
    "view_name",
]
