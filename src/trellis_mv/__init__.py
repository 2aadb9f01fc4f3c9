"""Tuning-free multi-view conditioning for TRELLIS.2 and TRELLIS flow samplers."""

from ._errors import (
    AggregatorError,
    AggregatorOptionError,
    PatchError,
    PluginLoadError,
    TrellisMVError,
    UnknownAggregatorError,
    ViewError,
)
from ._patch import Patch, patch_sampler
from ._registry import AggregatorInfo, Registry, get_aggregator, get_registry, list_aggregators, resolve
from ._spec import Aggregator, hookimpl
from ._step import Step, StepRecord
from ._views import Camera, parse_camera

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "AggregatorError",
    "AggregatorInfo",
    "AggregatorOptionError",
    "Camera",
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
    "get_aggregator",
    "get_registry",
    "hookimpl",
    "list_aggregators",
    "parse_camera",
    "patch_sampler",
    "resolve",
]
