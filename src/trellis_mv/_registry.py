"""The aggregator registry: a pluggy manager over the ``trellis_mv`` entry-point group.

Built-in aggregators come through the same door as third-party ones: they are entry
points of the ``trellis-mv`` distribution. Nothing is loaded at import time; the default
registry is built on first use by :func:`get_registry`.

Environment switches:

``TRELLIS_MV_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the entry points of ``trellis-mv`` itself.
``TRELLIS_MV_PLUGINS=name,name``
    allow-list of third-party entry-point names (built-ins always load).
``TRELLIS_MV_TRACE=1``
    trace every hook call and every patched model call to stderr.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any

import pluggy

from . import _spec
from ._errors import AggregatorOptionError, PluginLoadError, UnknownAggregatorError
from ._spec import Aggregator

__all__ = ["AggregatorInfo", "Registry", "get_aggregator", "get_registry", "instantiate", "list_aggregators"]

GROUP = "trellis_mv"
CORE_DISTRIBUTION = "trellis-mv"
_BUILTINS = {
    "stochastic": "trellis_mv.aggregators.stochastic",
    "multidiffusion": "trellis_mv.aggregators.multidiffusion",
}


@dataclass(frozen=True)
class AggregatorInfo:
    """One registered aggregator, as ``trellis-mv list`` shows it."""

    name: str
    summary: str
    plugin: str
    distribution: str | None
    version: str | None
    factory: type

    def options(self) -> dict[str, Any]:
        """The aggregator's options and their defaults."""
        sig = inspect.signature(self.factory)
        return {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in sig.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }


def _summary(factory: type) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def instantiate(factory: type, options: dict[str, Any]) -> Aggregator:
    """Build an aggregator, turning an unknown option into an error that lists the known ones."""
    name = getattr(factory, "name", factory.__name__)
    sig = inspect.signature(factory)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    known = [p.name for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(known))
    if unknown and not accepts_any:
        raise AggregatorOptionError(
            f"aggregator {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(known) or 'none'}",
            aggregator=name,
        )
    return factory(**options)


class Registry:
    """The aggregators a set of plugins provides.

    >>> reg = Registry()                      # empty: nothing loaded
    >>> from trellis_mv.aggregators import multidiffusion
    >>> reg.register(multidiffusion, name="multidiffusion", distribution="trellis-mv")
    >>> [info.name for info in reg.list()]
    ['multidiffusion']
    """

    def __init__(self, *, trace: bool = False) -> None:
        self.pm = pluggy.PluginManager(_spec.PROJECT)
        self.pm.add_hookspecs(_spec)
        self.errors: list[PluginLoadError] = []
        self._infos: dict[str, AggregatorInfo] | None = None
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        if trace:
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()

    @classmethod
    def from_entry_points(
        cls,
        *,
        autoload: bool | None = None,
        allow: list[str] | None = None,
        trace: bool | None = None,
    ) -> Registry:
        """Build a registry from the ``trellis_mv`` entry points (the environment switches apply
        where an argument is None). A plugin that fails to load is recorded in ``errors`` and
        reported with a warning; the others still load."""
        env = os.environ
        if autoload is None:
            autoload = not _truthy(env.get("TRELLIS_MV_DISABLE_PLUGIN_AUTOLOAD"))
        if allow is None and env.get("TRELLIS_MV_PLUGINS"):
            allow = [n.strip() for n in env["TRELLIS_MV_PLUGINS"].split(",") if n.strip()]
        if trace is None:
            trace = _truthy(env.get("TRELLIS_MV_TRACE"))
        reg = cls(trace=trace)
        seen: set[str] = set()
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            core = dist is not None and dist.replace("_", "-").lower() == CORE_DISTRIBUTION
            if ep.name in seen:
                continue
            if not core and (not autoload or (allow is not None and ep.name not in allow)):
                continue
            seen.add(ep.name)
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not stop the others
                reg._fail(
                    f"plugin {ep.name!r} from distribution {dist!r} failed to import ({ep.value}): "
                    f"{type(exc).__name__}: {exc}",
                    ep.name, dist,
                )
                continue
            reg.register(plugin, name=ep.name, distribution=dist, version=version)
        for name, module in _BUILTINS.items():  # running from a source tree without metadata
            if name not in seen:
                reg.register(import_module(module), name=name, distribution=CORE_DISTRIBUTION, version=None)
        return reg

    def _fail(self, message: str, plugin: str, dist: str | None) -> None:
        err = PluginLoadError(message, plugin=plugin, distribution=dist)
        self.errors.append(err)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def register(self, plugin: object, *, name: str | None = None, distribution: str | None = None,
                 version: str | None = None) -> None:
        """Register a plugin object (module or instance with ``@hookimpl`` functions)."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(f"plugin {name!r} from distribution {distribution!r} is invalid: {exc}", name, distribution)
            return
        self._dists[name] = (distribution, version)
        self._infos = None

    def _collect(self) -> dict[str, AggregatorInfo]:
        if self._infos is not None:
            return self._infos
        infos: dict[str, AggregatorInfo] = {}
        for impl in self.pm.hook.register_aggregators.get_hookimpls():
            plugin = impl.plugin_name
            dist, version = self._dists.get(plugin, (None, None))
            others = [p for p in self.pm.get_plugins() if p is not impl.plugin]
            try:
                factories = self.pm.subset_hook_caller("register_aggregators", others)()
                factories = [f for group in factories for f in (group or [])]
            except Exception as exc:
                self._fail(f"plugin {plugin!r} from distribution {dist!r} raised in register_aggregators: "
                           f"{type(exc).__name__}: {exc}", plugin, dist)
                continue
            for factory in factories:
                problem = _protocol_problem(factory)
                if problem:
                    self._fail(f"plugin {plugin!r} from distribution {dist!r} returned {factory!r}, which is not "
                               f"an aggregator: {problem}", plugin, dist)
                    continue
                if factory.name in infos:
                    first = infos[factory.name]
                    self._fail(f"aggregator name {factory.name!r} from plugin {plugin!r} ({dist!r}) is already "
                               f"registered by plugin {first.plugin!r} ({first.distribution!r}); it was skipped",
                               plugin, dist)
                    continue
                infos[factory.name] = AggregatorInfo(
                    factory.name, _summary(factory), plugin, dist, version, factory
                )
        self._infos = dict(sorted(infos.items()))
        return self._infos

    def list(self) -> list[AggregatorInfo]:
        """Every registered aggregator, sorted by name."""
        return list(self._collect().values())

    def info(self, name: str) -> AggregatorInfo:
        infos = self._collect()
        if name not in infos:
            raise UnknownAggregatorError(name, list(infos))
        return infos[name]

    def get(self, name: str, **options: Any) -> Aggregator:
        """A new aggregator instance by name, with its options."""
        return instantiate(self.info(name).factory, options)


def _protocol_problem(factory: Any) -> str | None:
    if not isinstance(factory, type):
        return "expected a class (an aggregator factory)"
    name = getattr(factory, "name", None)
    if not isinstance(name, str) or not name.strip():
        return "it has no `name` class attribute (a non-empty string)"
    if not any("__call__" in vars(klass) for klass in factory.__mro__[:-1]):
        return "it has no `__call__(self, step)` method"
    return None


_default: Registry | None = None


def get_registry(*, refresh: bool = False) -> Registry:
    """The default registry, built from the entry points on first use (or again with ``refresh``)."""
    global _default
    if _default is None or refresh:
        _default = Registry.from_entry_points()
    return _default


def get_aggregator(name: str, *, registry: Registry | None = None, **options: Any) -> Aggregator:
    """A registered aggregator by name, built with ``options``.

    >>> import trellis_mv
    >>> trellis_mv.get_aggregator("stochastic", order="random", seed=3).name
    'stochastic'
    """
    return (registry or get_registry()).get(name, **options)


def list_aggregators(*, registry: Registry | None = None) -> list[AggregatorInfo]:
    """Every registered aggregator with its distribution, version and one-line summary.

    >>> import trellis_mv
    >>> {"multidiffusion", "stochastic"} <= {a.name for a in trellis_mv.list_aggregators()}
    True
    """
    return (registry or get_registry()).list()
