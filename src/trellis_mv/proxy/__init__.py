"""The embedded proxy model: a small two-stage image-to-3D flow model with known ground truth.

It stands in for TRELLIS.2 where its weights are not available: synthetic shapes
(:func:`make_shape`), renders from named views (:func:`render`), a structure stage (dense
latent) and a texture stage (sparse latent), each sampled by its own
:class:`~trellis_mv.samplers.FlowEulerGuidanceIntervalSampler`, so
:func:`trellis_mv.patch_sampler` and every aggregator work on it unchanged.

It is the built-in adapter of ``--model proxy`` (:class:`ProxyAdapter`) plus its synthetic data set.

>>> import trellis_mv
>>> result = trellis_mv.run_multi_image(ProxyAdapter(), example_images()[:2], params={"texture": {"steps": 4}})
>>> tuple(result.output.occupancy.shape)
(1, 16, 16, 16)
"""

from trellis_mv.proxy._data import COMPONENTS, GRID, HELD_OUT_SEED, PALETTE, Shape, make_shape, make_shapes, palette_index
from trellis_mv.proxy._export import mesh_from_voxels
from trellis_mv.proxy._metrics import HELDOUT_VIEWS, NEAREST_VOXEL, chamfer, color_error, fscore, iou, reference_iou, score
from trellis_mv.proxy._models import ProxyConfig, ProxyModels, load_models, save_models
from trellis_mv.proxy._pipeline import (
    DEFAULT_PARAMS,
    STAGES,
    ProxyAdapter,
    ProxyResult,
    default_weights,
    example_images,
    preprocess,
)
from trellis_mv.proxy._pipeline import (
    ProxyPipeline as ProxyPipeline,
)
from trellis_mv.proxy._render import (
    FACES,
    NAMED_VIEWS,
    VIEW_SETS,
    View,
    input_views,
    parse_view,
    render,
    view_name,
    visible_faces,
)

__all__ = [
    "COMPONENTS",
    "DEFAULT_PARAMS",
    "FACES",
    "GRID",
    "HELDOUT_VIEWS",
    "HELD_OUT_SEED",
    "NAMED_VIEWS",
    "NEAREST_VOXEL",
    "PALETTE",
    "STAGES",
    "VIEW_SETS",
    "ProxyAdapter",
    "ProxyConfig",
    "ProxyModels",
    "ProxyResult",
    "Shape",
    "View",
    "chamfer",
    "color_error",
    "default_weights",
    "example_images",
    "fscore",
    "input_views",
    "iou",
    "load_models",
    "make_shape",
    "make_shapes",
    "mesh_from_voxels",
    "palette_index",
    "parse_view",
    "preprocess",
    "reference_iou",
    "render",
    "save_models",
    "score",
    "view_name",
    "visible_faces",
]
