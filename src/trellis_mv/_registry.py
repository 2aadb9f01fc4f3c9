"""The plugin registry: a pluggy manager over the ``trellis_mv`` entry-point group.

Plugins provide aggregators (:func:`~trellis_mv._spec.register_aggregators`) and model
adapters (:func:`~trellis_mv._spec.register_adapters`, :func:`~trellis_mv._spec.adapter_for`).
Built-ins come through the same door as third-party ones: they are entry points of the
``trellis-mv`` distribution (the proxy, TRELLIS.2 and TRELLIS adapters among them). Nothing is loaded at import time; the default
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

import ast
import builtins
import inspect
import os
import sys
import warnings
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any

import pluggy

from . import _spec
from ._errors import (
    AggregatorError,
    AggregatorOptionError,
    ParameterError,
    PluginLoadError,
    TrellisMVError,
    UnknownAggregatorError,
)
from ._spec import Aggregator

__all__ = [
    "AdapterInfo",
    "AggregatorInfo",
    "Registry",
    "get_aggregator",
    "get_registry",
    "instantiate",
    "list_adapters",
    "list_aggregators",
    "parse_aggregator",
    "parse_value",
    "resolve",
]

GROUP = "trellis_mv"
CORE_DISTRIBUTION = "trellis-mv"
_BUILTINS = {
    "stochastic": "trellis_mv.aggregators.stochastic",
    "multidiffusion": "trellis_mv.aggregators.multidiffusion",
    "proxy": "trellis_mv.proxy._pipeline",
    "trellis2": "trellis_mv.integrations.trellis2",
    "trellis": "trellis_mv.integrations.trellis",
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

    @property
    def qualified_name(self) -> str:
        """``distribution/name``: always unique, also where two distributions claim one name."""
        return f"{self.distribution or self.plugin}/{self.name}"

    def options(self) -> dict[str, Any]:
        """The aggregator's options and their defaults."""
        sig = inspect.signature(self.factory)
        return {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in sig.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }


@dataclass(frozen=True)
class AdapterInfo:
    """One registered model adapter, as ``trellis-mv list`` shows it."""

    name: str
    summary: str
    plugin: str
    distribution: str | None
    version: str | None
    factory: type


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
    needed = [p.name for p in sig.parameters.values()
              if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in options]
    if needed:
        raise AggregatorOptionError(
            f"aggregator {name!r} needs the option(s) {', '.join(needed)}; give them as "
            f"{name}:{needed[0]}=VALUE", aggregator=name)
    try:
        return factory(**options)
    except (AggregatorError, ValueError):
        raise
    except TypeError as exc:  # still a TypeError, now naming the aggregator
        raise AggregatorOptionError(f"aggregator {name!r} failed to build with options {options!r}: {exc}",
                                    aggregator=name) from exc
    except Exception as exc:  # a plugin's constructor failing: name it
        raise AggregatorError(
            f"aggregator {name!r} failed to build with options {options!r}: {type(exc).__name__}: {exc}", aggregator=name
        ) from exc


def parse_value(text: str) -> Any:
    """A command-line option value: a Python literal, true/false/none, a comma list, or else the bare word.

    >>> parse_value("3"), parse_value("(0.1, 0.9)"), parse_value("true"), parse_value("random"), parse_value("1;2;0.5")
    (3, (0.1, 0.9), True, 'random', [1, 2, 0.5])
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if ";" in text:  # a list on a command line where ',' separates options: weights=1;2;0.5
        return [parse_value(part.strip()) for part in text.split(";") if part.strip()]
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _split_options(text: str) -> list[str]:
    """Split ``a=1,b=[1, 2],c=x`` on the commas outside brackets and quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_aggregator(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``AGGREGATOR[:OPTION=VALUE,...]``; a value may be a list (``[1, 2]`` or ``1;2``).

    >>> parse_aggregator("stochastic:order=random,seed=3")
    ('stochastic', {'order': 'random', 'seed': 3})
    >>> parse_aggregator("weighted:schedule=[(0.0, 1.0), (1.0, 0.5)],preset=none")
    ('weighted', {'schedule': [(0.0, 1.0), (1.0, 0.5)], 'preset': None})
    """
    name, _, opts = text.partition(":")
    if not name.strip():
        raise AggregatorOptionError(f"no aggregator name in {text!r}; expected AGGREGATOR[:OPTION=VALUE,...]")
    options: dict[str, Any] = {}
    for item in _split_options(opts):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise AggregatorOptionError(f"option {item!r} in {text!r} is not OPTION=VALUE", aggregator=name.strip())
        options[key.strip()] = parse_value(value.strip())
    return name.strip(), options


def resolve(spec: Any, *, options: Mapping[str, Any] | None = None, registry: Registry | None = None) -> Aggregator:
    """The one way from an aggregator spec to an aggregator instance.

    A spec is a registered name (``"multidiffusion"``, or ``"distribution/name"`` to pick
    one distribution's), ``"name:option=value,..."``, ``(name, options)``, an aggregator
    class, or an instance. Names are looked up in ``registry`` (default:
    :func:`get_registry`).

    >>> resolve("stochastic:order=random").order, resolve(("single", {"view": 1})).view
    ('random', 1)
    """
    options = dict(options or {})
    if isinstance(spec, str):
        name, parsed = parse_aggregator(spec)
        return (registry or get_registry()).get(name, **{**parsed, **options})
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return (registry or get_registry()).get(spec[0], **{**dict(spec[1]), **options})
    if isinstance(spec, type):
        problem = _protocol_problem(spec)
        if problem:
            raise AggregatorError(f"{spec!r} is not an aggregator class: {problem}")
        return instantiate(spec, options)
    if options:
        raise AggregatorOptionError(
            f"aggregator options {sorted(options)} were given with an aggregator instance; pass them to its "
            "constructor, or give the aggregator by name"
        )
    if not isinstance(spec, Aggregator):
        raise AggregatorError(
            "an aggregator is a registered name, 'name:option=value,...', (name, options), a class or an "
            f"instance with a `name` and `__call__(step)`; got {spec!r}"
        )
    return spec


class Registry:
    """The aggregators a set of plugins provides.

    Every aggregator is reachable by its ``name`` and by ``"distribution/name"``. A name
    claimed twice is never resolved silently: the core distribution's aggregators keep their
    names (a plugin's clashing one is reachable only qualified), and a name two plugins claim
    is refused with an error naming both, until one is chosen by its qualified name or by the
    ``TRELLIS_MV_PLUGINS`` allow-list.

    >>> reg = Registry()                      # empty: nothing loaded
    >>> from trellis_mv.aggregators import multidiffusion
    >>> reg.register(multidiffusion, name="multidiffusion", distribution="trellis-mv")
    >>> [info.name for info in reg.list()], reg.info("trellis-mv/multidiffusion").name
    (['multidiffusion'], 'multidiffusion')
    """

    def __init__(self, *, trace: bool = False) -> None:
        self.pm = pluggy.PluginManager(_spec.PROJECT)
        self.pm.add_hookspecs(_spec)
        self.errors: list[PluginLoadError] = []
        self._infos: dict[str, AggregatorInfo] | None = None
        self._all: list[AggregatorInfo] = []
        self._ambiguous: dict[str, list[AggregatorInfo]] = {}
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
        reported with a warning; the others still load. The core's entry points load first."""
        env = os.environ
        if autoload is None:
            autoload = not _truthy(env.get("TRELLIS_MV_DISABLE_PLUGIN_AUTOLOAD"))
        if allow is None and env.get("TRELLIS_MV_PLUGINS"):
            allow = [n.strip() for n in env["TRELLIS_MV_PLUGINS"].split(",") if n.strip()]
        if trace is None:
            trace = _truthy(env.get("TRELLIS_MV_TRACE"))
        reg = cls(trace=trace)

        def is_core(ep: metadata.EntryPoint) -> bool:
            return ep.dist is not None and ep.dist.name.replace("_", "-").lower() == CORE_DISTRIBUTION

        points = sorted(metadata.entry_points(group=GROUP), key=lambda ep: (not is_core(ep), ep.name, ep.value))
        seen: set[tuple[str, str]] = set()
        for ep in points:
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if (ep.name, ep.value) in seen:  # the same distribution seen twice on sys.path
                continue
            if not is_core(ep) and (not autoload or (allow is not None and ep.name not in allow)):
                continue
            seen.add((ep.name, ep.value))
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not stop the others
                reg._fail(
                    f"plugin {ep.name!r} from distribution {dist!r} failed to import ({ep.value}): "
                    f"{type(exc).__name__}: {exc}",
                    ep.name, dist,
                )
                continue
            reg.register(plugin, name=ep.name if not reg.pm.has_plugin(ep.name) else f"{dist}/{ep.name}",
                         distribution=dist, version=version)
        loaded = {name for name, _ in seen}
        for name, module in _BUILTINS.items():  # running from a source tree without metadata
            if name not in loaded:
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
        if not self.pm.get_hookcallers(plugin):
            self.pm.unregister(plugin)
            self._fail(f"plugin {name!r} from distribution {distribution!r} implements no hook: mark its "
                       "register_aggregators (or register_adapters) function with @trellis_mv.hookimpl",
                       name, distribution)
            return
        self._dists[name] = (distribution, version)
        self._infos = None

    def _per_plugin(self, hook: str, raised: builtins.list[TrellisMVError] | None = None, **kwargs: Any
                    ) -> Iterator[tuple[str, str | None, str | None, builtins.list[Any]]]:
        """``(plugin, distribution, version, answers)`` of each plugin implementing ``hook``, one plugin at a time
        (through that plugin's own hook caller, so that tracing sees each call). A plugin whose implementation
        raises is recorded in ``errors`` and skipped, except a :class:`TrellisMVError` (e.g. :class:`ModelNotAvailable`),
        which is about the user's input and passes through."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            plugin = impl.plugin_name
            dist, version = self._dists.get(plugin, (None, None))
            others = [p for p in self.pm.get_plugins() if p is not impl.plugin]
            try:
                answers = self.pm.subset_hook_caller(hook, others)(**kwargs)
            except TrellisMVError as exc:  # about the user's input (a model that cannot run here): theirs to hear
                if raised is None:
                    raise
                raised.append(exc)  # the caller decides, once every plugin has answered
                continue
            except (Exception, SystemExit) as exc:
                self._fail(f"plugin {plugin!r} from distribution {dist!r} raised in {hook}: "
                           f"{type(exc).__name__}: {exc}", plugin, dist)
                continue
            yield plugin, dist, version, [a for a in answers if a is not None]

    def _collect(self) -> dict[str, AggregatorInfo]:
        if self._infos is not None:
            return self._infos
        infos: dict[str, AggregatorInfo] = {}
        everything: list[AggregatorInfo] = []
        claims: dict[str, list[AggregatorInfo]] = {}
        for plugin, dist, version, groups in self._per_plugin("register_aggregators"):
            factories = [f for group in groups for f in group]
            for factory in factories:
                problem = _protocol_problem(factory)
                if problem:
                    self._fail(f"plugin {plugin!r} from distribution {dist!r} returned {factory!r}, which is not "
                               f"an aggregator: {problem}", plugin, dist)
                    continue
                info = AggregatorInfo(factory.name, _summary(factory), plugin, dist, version, factory)
                everything.append(info)
                claims.setdefault(info.name, []).append(info)
        ambiguous: dict[str, list[AggregatorInfo]] = {}
        for name, group in claims.items():
            core = [i for i in group if _is_core(i.distribution)]
            chosen = core[:1] or (group if len(group) == 1 else [])
            if chosen:
                infos[name] = chosen[0]
            for other in group:
                if chosen and other is not chosen[0]:
                    self._fail(f"aggregator name {name!r} from plugin {other.plugin!r} ({other.distribution!r}) clashes "
                               f"with the one of {chosen[0].distribution!r}, which keeps the name; use "
                               f"{other.qualified_name!r} for this one", other.plugin, other.distribution)
            if not chosen:
                ambiguous[name] = group
                listed = " and ".join(f"{i.distribution!r} ({i.qualified_name!r})" for i in group)
                self._fail(f"aggregator name {name!r} is claimed by {listed}; give the qualified name, or "
                           "allow one plugin with TRELLIS_MV_PLUGINS", group[0].plugin, group[0].distribution)
        for info in everything:
            infos.setdefault(info.qualified_name, info)
        self._all = sorted(everything, key=lambda i: (i.name, i.qualified_name))
        self._ambiguous = ambiguous
        self._infos = infos
        return infos

    def list(self) -> builtins.list[AggregatorInfo]:
        """Every registered aggregator, sorted by name (a clashing name once per distribution)."""
        self._collect()
        return list(self._all)

    def names(self) -> builtins.list[str]:
        """The names :meth:`get` accepts unqualified, sorted."""
        return sorted(n for n in self._collect() if "/" not in n)

    def info(self, name: str) -> AggregatorInfo:
        infos = self._collect()
        if name in self._ambiguous:
            listed = ", ".join(repr(i.qualified_name) for i in self._ambiguous[name])
            raise AggregatorError(f"aggregator name {name!r} is claimed by several distributions; choose one of {listed}",
                                  aggregator=name)
        if name not in infos:
            raise UnknownAggregatorError(name, self.names())
        return infos[name]

    def get(self, name: str, **options: Any) -> Aggregator:
        """A new aggregator instance by name, with its options; a failure names the plugin and its distribution."""
        info = self.info(name)
        _DISTRIBUTIONS[info.factory] = info.distribution or "?"
        try:
            return instantiate(info.factory, options)
        except AggregatorError as exc:
            if _is_core(info.distribution):
                raise
            raise type(exc)(f"{exc} (plugin {info.plugin!r} from distribution {info.distribution!r})",
                            aggregator=exc.aggregator) from exc

    def check(self) -> builtins.list[PluginLoadError]:
        """Build every aggregator whose options all have defaults; record those that fail in ``errors``.

        :returns: the new errors.
        """
        before = len(self.errors)
        for info in self.list():
            params = inspect.signature(info.factory).parameters.values()
            if any(p.default is inspect.Parameter.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                   for p in params):
                continue
            try:
                info.factory()
            except (Exception, SystemExit) as exc:
                self._fail(f"aggregator {info.qualified_name!r} (plugin {info.plugin!r} from distribution "
                           f"{info.distribution!r}) fails to build with its default options: {type(exc).__name__}: {exc}",
                           info.plugin, info.distribution)
        return self.errors[before:]


    # -- adapters ---------------------------------------------------------------------------
    def adapters(self) -> builtins.list[AdapterInfo]:
        """Every registered model adapter, sorted by name."""
        out = []
        for plugin, dist, version, groups in self._per_plugin("register_adapters"):
            for factory in (f for group in groups for f in group):
                name = getattr(factory, "name", None)
                if not isinstance(factory, type) or not isinstance(name, str) or not callable(getattr(factory, "load", None)):
                    self._fail(f"plugin {plugin!r} from distribution {dist!r} returned {factory!r}, which is not an "
                               "adapter class with a `name` and a classmethod `load(model, *, device=None, ...)`",
                               plugin, dist)
                    continue
                out.append(AdapterInfo(name, _summary(factory), plugin, dist, version, factory))
        return sorted(out, key=lambda i: (i.name, i.distribution or ""))

    def adapter_for(self, model: str) -> type:
        """The adapter class that runs ``model``: the one answer of the plugins' ``adapter_for`` hooks.

        :raises ParameterError: no plugin answers (the message lists the installed adapters), or
            two do (naming both distributions).
        """
        if not isinstance(model, str) or not model.strip():
            raise ParameterError(f"model must be an adapter name (e.g. 'proxy'), a hub id or a model folder; "
                                 f"got model={model!r}")
        raised: builtins.list[TrellisMVError] = []
        answers = [(dist or plugin, cls)
                   for plugin, dist, _, found in self._per_plugin("adapter_for", raised, model=model) for cls in found]
        if len(answers) > 1:
            listed = " and ".join(f"{getattr(c, 'name', c.__name__)!r} of {d!r}" for d, c in answers)
            raise ParameterError(f"model {model!r} is claimed by two adapters, {listed}; uninstall one, or "
                                 "allow one plugin with TRELLIS_MV_PLUGINS")
        if not answers:
            adapters = self.adapters()
            known = "; ".join(f"{i.name} ({i.distribution or i.plugin}): {i.summary}" for i in adapters)
            message = f"no installed adapter runs model {model!r}; the adapters are: {known or 'none'}."
            if raised:  # one could not tell (a hub unreachable, a broken folder): say why
                message += " Asking them: " + " ".join(str(e) for e in raised)
                raise type(raised[0])(message) if isinstance(raised[0], ParameterError) else ParameterError(message)
            hints = " ".join(h for h in dict.fromkeys(getattr(i.factory, "install_hint", "") for i in adapters) if h)
            raise ParameterError(message + (f" {hints}" if hints else ""))
        return answers[0][1]


_DISTRIBUTIONS: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()


def distribution_of(factory: type) -> str | None:
    """The distribution of an aggregator class that a registry built, or None."""
    return _DISTRIBUTIONS.get(factory)


def _is_core(distribution: str | None) -> bool:
    return distribution is not None and distribution.replace("_", "-").lower() == CORE_DISTRIBUTION


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


def list_adapters(*, registry: Registry | None = None) -> list[AdapterInfo]:
    """Every registered model adapter with its distribution and one-line summary.

    >>> import trellis_mv
    >>> {"proxy", "trellis2", "trellis"} <= {a.name for a in trellis_mv.list_adapters()}
    True
    """
    return (registry or get_registry()).adapters()


def list_aggregators(*, registry: Registry | None = None) -> list[AggregatorInfo]:
    """Every registered aggregator with its distribution, version and one-line summary.

    >>> import trellis_mv
    >>> {"multidiffusion", "stochastic"} <= {a.name for a in trellis_mv.list_aggregators()}
    True
    """
    return (registry or get_registry()).list()
