"""The exceptions trellis-mv raises. Each message names the culprit, what was expected and what came.

Everything raised on purpose derives from :class:`TrellisMVError`; bad input is reported
before any model work::

    TrellisMVError
    ├── ViewError (ValueError)          the views' conditioning, weights or cameras
    │   └── ImageError                  an input image
    ├── ParameterError (ValueError)     stages, sampler parameters, seed, num_samples, max_batch
    ├── OutputError (OSError)           the output folder
    ├── PatchError (RuntimeError)       a sampler that cannot be patched
    ├── AggregatorError (RuntimeError)  an aggregator that breaks the protocol
    │   └── AggregatorOptionError       an aggregator option (also a TypeError)
    ├── UnknownAggregatorError (KeyError)
    ├── PluginLoadError (ImportError)
    └── ModelNotAvailable (ImportError) TRELLIS.2 / TRELLIS not importable
"""

from __future__ import annotations

__all__ = [
    "AggregatorError",
    "AggregatorOptionError",
    "ImageError",
    "ModelNotAvailable",
    "OutputError",
    "ParameterError",
    "PatchError",
    "PluginLoadError",
    "TrellisMVError",
    "UnknownAggregatorError",
    "ViewError",
]


class TrellisMVError(Exception):
    """Base class of every error trellis-mv raises on purpose."""


class ViewError(TrellisMVError, ValueError):
    """The views' conditioning (or their weights) cannot be used as given."""


class ImageError(ViewError):
    """An input view cannot be used: unreadable, too large, no foreground, an unknown pixel mode."""


class ParameterError(TrellisMVError, ValueError):
    """A run parameter is unknown or out of range (a stage, a sampler parameter, a seed, ...)."""


class OutputError(TrellisMVError, OSError):
    """The output folder cannot be used as asked (a file, not writable, holds other files, ...)."""


class PatchError(TrellisMVError, RuntimeError):
    """A sampler cannot be patched (already patched, or not a sampler)."""


class AggregatorError(TrellisMVError, RuntimeError):
    """An aggregator broke the protocol (wrong return type, wrong shape, ...).

    :ivar aggregator: the aggregator's registered name.
    """

    def __init__(self, message: str, *, aggregator: str | None = None) -> None:
        super().__init__(message)
        self.aggregator = aggregator


class AggregatorOptionError(AggregatorError, TypeError):
    """An aggregator was given an option it does not take, or a value out of range."""


class UnknownAggregatorError(TrellisMVError, KeyError):
    """No registered aggregator has this name.

    :ivar name: the name asked for. :ivar known: the registered names.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(name)

    def __str__(self) -> str:
        listed = ", ".join(self.known) or "none"
        return (
            f"unknown aggregator {self.name!r}; registered aggregators: {listed}. "
            "Install the distribution that provides it, or check `trellis-mv list`."
        )


class ModelNotAvailable(TrellisMVError, ImportError):
    """A model's code (TRELLIS.2, TRELLIS, or one of their extensions) cannot be imported; the message says how to install it."""


class PluginLoadError(TrellisMVError, ImportError):
    """A plugin failed to load or returned something that is not an aggregator.

    :ivar plugin: the entry-point name. :ivar distribution: the distribution that declares it.
    """

    def __init__(self, message: str, *, plugin: str, distribution: str | None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.distribution = distribution
