"""Tuning-free multi-view conditioning for TRELLIS.2 and TRELLIS flow samplers."""

from ._errors import (
    AggregatorError,
    AggregatorOptionError,
    ImageError,
    ModelNotAvailable,
    OutputError,
    ParameterError,
    PatchError,
    PluginLoadError,
    TrellisMVError,
    UnknownAggregatorError,
    ViewError,
)
from ._patch import Patch, patch_sampler
from ._registry import (
    AdapterInfo,
    AggregatorInfo,
    Registry,
    get_aggregator,
    get_registry,
    list_adapters,
    list_aggregators,
    resolve,
)
from ._spec import Adapter, Aggregator, hookimpl
from ._step import Step, StepRecord
from ._views import Camera, camera_name, pad_views, parse_camera
from .run import MultiViewResult, adapter_class, demo, generate, load_adapter, run_multi_image

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterInfo",
    "Aggregator",
    "AggregatorError",
    "AggregatorInfo",
    "AggregatorOptionError",
    "Camera",
    "ImageError",
    "ModelNotAvailable",
    "MultiViewResult",
    "OutputError",
    "ParameterError",
    "Patch",
    "PatchError",
    "PluginLoadError",
    "Registry",
    "Step",
    "StepRecord",
    "TrellisMVError",
    "UnknownAggregatorError",
    "ViewError",
    "__version__",
    "adapter_class",
    "camera_name",
    "demo",
    "generate",
    "get_aggregator",
    "get_registry",
    "hookimpl",
    "list_adapters",
    "list_aggregators",
    "load_adapter",
    "pad_views",
    "parse_camera",
    "patch_sampler",
    "resolve",
    "run_multi_image",
]
