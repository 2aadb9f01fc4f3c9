"""The exceptions trellis-mv raises. Each message names the culprit, what was expected and what came."""

from __future__ import annotations

__all__ = [
    "AggregatorError",
    "AggregatorOptionError",
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


class PluginLoadError(TrellisMVError, ImportError):
    """A plugin failed to load or returned something that is not an aggregator.

    :ivar plugin: the entry-point name. :ivar distribution: the distribution that declares it.
    """

    def __init__(self, message: str, *, plugin: str, distribution: str | None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.distribution = distribution
