"""Multi-view runs over a whole pipeline: one aggregator per stage, every stage sampler patched at once.

A pipeline adapter is anything with ``samplers`` (stage name → sampler instance; each
stage its own instance) and ``run(images, **kwargs)``. The proxy model
(:mod:`trellis_mv.proxy`) and the TRELLIS.2 / TRELLIS integrations
(:mod:`trellis_mv.integrations`) provide one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

from ._errors import PatchError
from ._patch import Patch, patch_sampler
from ._registry import get_aggregator
from ._spec import Aggregator

__all__ = [
    "MultiViewPipeline",
    "StageSpec",
    "canonical_stage",
    "parse_aggregator",
    "parse_stage",
    "parse_stage_values",
    "parse_value",
    "patch_stages",
    "plan_stages",
    "run_multi_image",
]

#: How a stage's aggregator is given: a registered name, ``(name, options)``, or an instance.
StageSpec = str | tuple[str, Mapping[str, Any]] | Aggregator


class MultiViewPipeline(Protocol):
    """What :func:`run_multi_image` needs from a pipeline adapter."""

    @property
    def samplers(self) -> Mapping[str, Any]:
        """Stage name → the sampler instance that stage uses."""
        ...

    def run(self, images: Sequence[Any], **kwargs: Any) -> Any:
        """Run every stage with all views' conditioning stacked as ``cond``."""
        ...


def parse_value(text: str) -> Any:
    """A command-line option value: a Python literal, true/false/none, or else the bare word.

    >>> parse_value("3"), parse_value("(0.1, 0.9)"), parse_value("true"), parse_value("random")
    (3, (0.1, 0.9), True, 'random')
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_aggregator(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``AGGREGATOR[:OPTION=VALUE,...]``.

    >>> parse_aggregator("stochastic:order=random,seed=3")
    ('stochastic', {'order': 'random', 'seed': 3})
    """
    name, _, opts = text.partition(":")
    if not name.strip():
        raise ValueError(f"no aggregator name in {text!r}; expected AGGREGATOR[:OPTION=VALUE,...]")
    options: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"option {item!r} in {text!r} is not OPTION=VALUE")
        options[key.strip()] = parse_value(value.strip())
    return name.strip(), options


def parse_stage(text: str) -> tuple[str, str, dict[str, Any]]:
    """Parse a command-line stage choice ``STAGE=AGGREGATOR[:OPTION=VALUE,...]``.

    >>> parse_stage("texture=single:view=0")
    ('texture', 'single', {'view': 0})
    """
    stage, sep, rest = text.partition("=")
    if not sep or not stage.strip() or not rest.strip():
        raise ValueError(f"expected STAGE=AGGREGATOR[:OPTION=VALUE,...], e.g. shape=multidiffusion; got {text!r}")
    return (stage.strip(), *parse_aggregator(rest))


def parse_stage_values(
    values: Sequence[str] | None, stage_names: Sequence[str], aliases: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Command-line values for every stage (``"12"``) or one (``"shape=12"``), per stage.

    A value for one stage wins over a value for every stage, whatever their order.

    >>> parse_stage_values(["8", "shape=12"], ("sparse_structure", "shape"))
    {'sparse_structure': 8, 'shape': 12}
    """
    every: dict[str, Any] = {}
    one: dict[str, Any] = {}
    for item in values or []:
        stage, sep, value = item.partition("=")
        if sep and stage.replace("_", "").replace("-", "").isalpha():
            one[canonical_stage(stage, stage_names, aliases)] = parse_value(value)
        else:
            every.update(dict.fromkeys(stage_names, parse_value(item)))
    return {**every, **one}


def canonical_stage(name: str, stage_names: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """A stage name as the pipeline spells it (case, ``-``/``_`` and ``aliases`` forgiven)."""
    key = name.strip().lower().replace("-", "_")
    key = (aliases or {}).get(key, key)
    if key not in stage_names:
        known = ", ".join(stage_names)
        extra = f" (or {', '.join(sorted(aliases))})" if aliases else ""
        raise PatchError(f"unknown stage {name!r}; this pipeline's stages are: {known}{extra}")
    return key


def plan_stages(
    stage_names: Sequence[str],
    mode: StageSpec = "multidiffusion",
    stages: Mapping[str, StageSpec] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Aggregator]:
    """One aggregator per stage: ``stages`` where given, ``mode`` elsewhere.

    A spec is a registered name, ``"name:option=value,..."``, ``(name, options)`` or an instance.

    >>> plan = plan_stages(["sparse_structure", "texture"], "stochastic", {"texture": "single:view=0"})
    >>> {k: v.name for k, v in plan.items()}
    {'sparse_structure': 'stochastic', 'texture': 'single'}
    """
    chosen = {canonical_stage(k, stage_names, aliases): v for k, v in (stages or {}).items()}
    return {name: _build(chosen.get(name, mode)) for name in stage_names}


def _build(spec: StageSpec) -> Aggregator:
    if isinstance(spec, str):
        name, options = parse_aggregator(spec)
        return get_aggregator(name, **options)
    if isinstance(spec, tuple):
        name, options = spec
        return get_aggregator(name, **dict(options))
    if not isinstance(spec, Aggregator):
        raise PatchError(
            f"expected a registered name, 'name:option=value,...', (name, options) or an aggregator instance; got {spec!r}"
        )
    return spec


@contextmanager
def patch_stages(
    samplers: Mapping[str, Any],
    aggregators: Mapping[str, StageSpec],
    *,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
) -> Iterator[dict[str, Patch]]:
    """Patch every stage's sampler with its aggregator; all are restored on exit.

    Stages that share one sampler instance share one patch (labelled ``"a+b"``), which
    needs the same aggregator for both; different ones are an error.
    """
    groups: dict[int, list[str]] = {}
    for stage in aggregators:
        groups.setdefault(id(samplers[stage]), []).append(stage)
    built = {stage: _build(spec) for stage, spec in aggregators.items()}
    with ExitStack() as stack:
        patches: dict[str, Patch] = {}
        for group in groups.values():
            first = built[group[0]]
            for other in group[1:]:
                if repr(built[other]) != repr(first) or built[other].name != first.name:
                    raise PatchError(
                        f"stages {group[0]!r} and {other!r} share one sampler instance, so they need the same "
                        "aggregator; give them the same one, or give each stage its own sampler"
                    )
            patch = stack.enter_context(
                patch_sampler(samplers[group[0]], first, weights=weights, stage="+".join(group), max_batch=max_batch)
            )
            patches.update(dict.fromkeys(group, patch))
        yield patches


def run_multi_image(
    pipeline: MultiViewPipeline,
    images: Sequence[Any],
    *,
    mode: StageSpec = "multidiffusion",
    stages: Mapping[str, StageSpec] | None = None,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Patch]]:
    """Run ``pipeline`` on several views of one object.

    :param mode: the aggregator for every stage not named in ``stages``.
    :param stages: per-stage aggregators, e.g. ``{"texture": ("single", {"view": 0})}``.
    :param weights: one weight per view, for aggregators that honour weights.
    :param max_batch: at most this many latent rows per model forward.
    :param kwargs: passed to ``pipeline.run``.
    :returns: what ``pipeline.run`` returns, and the :class:`~trellis_mv.Patch` of each stage.
    """
    if not images:
        raise ValueError("no views: give at least one image")
    plan = plan_stages(list(pipeline.samplers), mode, stages)
    with patch_stages(pipeline.samplers, plan, weights=weights, max_batch=max_batch) as patches:
        result = pipeline.run(images, **kwargs)
    return result, patches
