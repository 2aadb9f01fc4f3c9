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

__all__ = ["MultiViewPipeline", "StageSpec", "parse_stage", "patch_stages", "plan_stages", "run_multi_image"]

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


def parse_stage(text: str) -> tuple[str, str, dict[str, Any]]:
    """Parse a command-line stage choice ``STAGE=AGGREGATOR[:OPTION=VALUE,...]``.

    >>> parse_stage("texture=single:view=0")
    ('texture', 'single', {'view': 0})
    >>> parse_stage("shape=stochastic:order='random',seed=3")
    ('shape', 'stochastic', {'order': 'random', 'seed': 3})
    """
    stage, sep, rest = text.partition("=")
    if not sep or not stage.strip() or not rest.strip():
        raise ValueError(f"expected STAGE=AGGREGATOR[:OPTION=VALUE,...], e.g. shape=multidiffusion; got {text!r}")
    name, _, opts = rest.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"option {item!r} in {text!r} is not OPTION=VALUE")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()  # a bare word: keep it as a string
    return stage.strip(), name.strip(), options


def plan_stages(
    stage_names: Sequence[str],
    mode: StageSpec = "multidiffusion",
    stages: Mapping[str, StageSpec] | None = None,
) -> dict[str, Aggregator]:
    """One aggregator per stage: ``stages`` where given, ``mode`` elsewhere.

    >>> plan = plan_stages(["sparse_structure", "texture"], "stochastic", {"texture": ("single", {"view": 0})})
    >>> {k: v.name for k, v in plan.items()}
    {'sparse_structure': 'stochastic', 'texture': 'single'}
    """
    stages = dict(stages or {})
    unknown = sorted(set(stages) - set(stage_names))
    if unknown:
        raise PatchError(f"unknown stage(s) {unknown}; this pipeline's stages are: {', '.join(stage_names)}")
    return {name: _build(stages.get(name, mode)) for name in stage_names}


def _build(spec: StageSpec) -> Aggregator:
    if isinstance(spec, str):
        return get_aggregator(spec)
    if isinstance(spec, tuple):
        name, options = spec
        return get_aggregator(name, **dict(options))
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

    Stages that share one sampler instance cannot have different aggregators; that is an error.
    """
    seen: dict[int, str] = {}
    for stage, sampler in samplers.items():
        if id(sampler) in seen:
            raise PatchError(f"stages {seen[id(sampler)]!r} and {stage!r} share one sampler instance; "
                             "give each stage its own sampler so each can have its own aggregator")
        seen[id(sampler)] = stage
    with ExitStack() as stack:
        patches = {
            stage: stack.enter_context(
                patch_sampler(samplers[stage], _build(spec), weights=weights, stage=stage, max_batch=max_batch)
            )
            for stage, spec in aggregators.items()
        }
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
