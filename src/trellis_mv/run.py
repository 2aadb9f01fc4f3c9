"""The one run path: any model adapter, several views, one aggregator per stage.

An *adapter* (:class:`~trellis_mv.Adapter`) says what a model's stages and samplers
are, how images become views, how one generation runs and how its result is written.
Adapters are plugins (:func:`load_adapter` asks the registry which one runs a model): the
embedded proxy, TRELLIS.2 and TRELLIS are built in, and nothing here knows any of them.
:func:`run_multi_image` checks everything before any model work, patches every stage's
sampler with its aggregator, runs the adapter and restores the samplers;
:func:`generate` does the same and writes the outputs atomically.

>>> import tempfile, trellis_mv
>>> adapter = trellis_mv.load_adapter("proxy")
>>> images = [path for path, _ in adapter.examples()[:2]]
>>> result = trellis_mv.run_multi_image(adapter, images, stages={"texture": "single:view=0"}, seed=1,
...                                     params={"sparse_structure": {"steps": 4}, "texture": {"steps": 4}})
>>> {stage: agg.name for stage, agg in result.aggregators.items()}
{'sparse_structure': 'multidiffusion', 'texture': 'single'}
>>> result.cost()["stages"]["sparse_structure"]["model_forwards"]      # views and negative in one forward
4
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._distributed import check_same_job, rows_for, writes_outputs
from ._errors import ParameterError
from ._images import load_images
from ._outputs import MARKER, check_output, output_folder
from ._params import DIALECTS, SAMPLER_PARAMS, check_int, check_sampler_params, check_seed
from ._patch import Patch, StepCallback, check_views, patch_sampler
from ._registry import Registry, get_registry, parse_aggregator, parse_value, resolve
from ._spec import ADAPTER_DEFAULTS, Adapter, Aggregator
from ._views import Camera, normalise_cameras, normalise_weights

__all__ = [
    "AdapterTraits",
    "BatchResult",
    "MultiViewResult",
    "StageSpec",
    "adapter_class",
    "canonical_stage",
    "check_device",
    "demo",
    "generate",
    "load_adapter",
    "parse_aggregator",
    "parse_sampler_params",
    "parse_stage",
    "parse_stage_values",
    "parse_value",
    "patch_stages",
    "plan_stages",
    "run_many",
    "run_multi_image",
    "traits",
]

#: How a stage's aggregator is given: a registered name, ``"name:option=value,..."``, ``(name, options)``, or an instance.
StageSpec = str | tuple[str, Mapping[str, Any]] | Aggregator


# -- command-line spellings ---------------------------------------------------------------------


def parse_stage(text: str) -> tuple[str, str, dict[str, Any]]:
    """Parse a command-line stage choice ``STAGE=AGGREGATOR[:OPTION=VALUE,...]``.

    >>> parse_stage("texture=single:view=0")
    ('texture', 'single', {'view': 0})
    """
    stage, sep, rest = text.partition("=")
    if not sep or not stage.strip() or not rest.strip():
        raise ParameterError(f"expected STAGE=AGGREGATOR[:OPTION=VALUE,...], e.g. shape=multidiffusion; got {text!r}")
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


def parse_sampler_params(
    values: Mapping[str, Sequence[str] | None], stage_names: Sequence[str], aliases: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Command-line sampler parameters, ``{parameter: ["12", "shape=8"]}``, as ``{stage: {parameter: value}}``.

    >>> parse_sampler_params({"steps": ["12", "texture=4"], "rescale_t": None}, ("sparse_structure", "texture"))
    {'sparse_structure': {'steps': 12}, 'texture': {'steps': 4}}
    """
    params: dict[str, dict[str, Any]] = {}
    for name in SAMPLER_PARAMS:
        for stage, value in parse_stage_values(values.get(name), stage_names, aliases).items():
            params.setdefault(stage, {})[name] = value
    return params


def canonical_stage(name: str, stage_names: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """A stage name as the adapter spells it (case, ``-``/``_`` and ``aliases`` forgiven)."""
    key = str(name).strip().lower().replace("-", "_")
    key = (aliases or {}).get(key, key)
    if key not in stage_names:
        known = ", ".join(stage_names)
        extra = f" (or {', '.join(sorted(aliases))})" if aliases else ""
        raise ParameterError(f"unknown stage {name!r}; this model's stages are: {known}{extra}")
    return key


# -- the adapter's optional members -----------------------------------------------------------------


class _Member:
    """One optional adapter member, read from the adapter when asked (a property may do work), default filled in."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    def __get__(self, traits: Any, owner: type | None = None) -> Any:
        value = getattr(traits.adapter, self.key, ADAPTER_DEFAULTS[self.key])
        if self.key in ("stage_aliases", "default_params", "named_cameras"):
            return value or {}
        return value


class AdapterTraits:
    """An adapter's optional members (:data:`~trellis_mv._spec.ADAPTER_DEFAULTS`), each read when used, defaults
    filled in: ``name`` (the class name by default), ``stage_names`` (the running adapter's: ``tuple(samplers)``),
    ``dialect`` (checked), and the others as the adapter gives them or their default."""

    stage_aliases: Mapping[str, str] = _Member()  # type: ignore[assignment]
    default_params: Mapping[str, Mapping[str, Any]] = _Member()  # type: ignore[assignment]
    named_cameras: Mapping[str, Any] = _Member()  # type: ignore[assignment]
    latent_frame: Any = _Member()
    device: Any = _Member()
    verbose: bool | None = _Member()  # type: ignore[assignment]
    render: Any = _Member()
    to_mesh: Any = _Member()
    to_voxels: Any = _Member()
    examples: Any = _Member()
    sample_many: Any = _Member()

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.name: str = getattr(adapter, "name", None) or type(adapter).__name__
        self.dialect: str = getattr(adapter, "dialect", ADAPTER_DEFAULTS["dialect"])
        if self.dialect not in DIALECTS:
            raise ParameterError(f"adapter {adapter!r} has dialect {self.dialect!r}; expected one of {', '.join(DIALECTS)}")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.adapter.samplers)


def traits(adapter: Adapter) -> AdapterTraits:
    """The one place an adapter's optional members are read.

    >>> t = traits(load_adapter("proxy"))
    >>> t.name, t.stage_names, t.dialect, tuple(t.named_cameras["front"])
    ('proxy', ('sparse_structure', 'texture'), 'trellis2', (0.0, 25.0))
    """
    return AdapterTraits(adapter)


# -- planning -------------------------------------------------------------------------------------


def plan_stages(
    stage_names: Sequence[str],
    mode: StageSpec = "multidiffusion",
    stages: Mapping[str, StageSpec] | None = None,
    aliases: Mapping[str, str] | None = None,
    *,
    registry: Registry | None = None,
) -> dict[str, Aggregator]:
    """One aggregator per stage: ``stages`` where given, ``mode`` elsewhere (:func:`trellis_mv.resolve` each).

    >>> plan = plan_stages(["sparse_structure", "texture"], "stochastic", {"texture": "single:view=0"})
    >>> {k: v.name for k, v in plan.items()}
    {'sparse_structure': 'stochastic', 'texture': 'single'}
    """
    if stages is not None and not isinstance(stages, Mapping):
        raise ParameterError(f"stages must be a dict of stage: aggregator; got stages={stages!r}")
    chosen = {canonical_stage(k, stage_names, aliases): v for k, v in (stages or {}).items()}
    return {name: resolve(chosen.get(name, mode), registry=registry) for name in stage_names}


@contextmanager
def patch_stages(
    samplers: Mapping[str, Any],
    aggregators: Mapping[str, StageSpec],
    *,
    weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
    max_batch: int | None = None,
    cameras: Sequence[Any] | None = None,
    frame: Any = None,
    registry: Registry | None = None,
    group: Any = None,
    per_sample: bool = False,
    on_step: StepCallback | None = None,
) -> Iterator[dict[str, Patch]]:
    """Patch every stage's sampler with its aggregator; all are restored on exit.

    Stages that share one sampler instance share one patch (labelled ``"a+b"``), which
    needs the same aggregator for both; different ones are an error. ``group``,
    ``per_sample`` and ``on_step``: as in :func:`~trellis_mv.patch_sampler`.
    """
    process_group = group  # the name `group` is taken below by stages sharing a sampler
    groups: dict[int, list[str]] = {}
    for stage in aggregators:
        groups.setdefault(id(samplers[stage]), []).append(stage)
    built = {stage: resolve(spec, registry=registry) for stage, spec in aggregators.items()}
    with ExitStack() as stack:
        patches: dict[str, Patch] = {}
        for group in groups.values():
            first = built[group[0]]
            for other in group[1:]:
                if repr(built[other]) != repr(first) or built[other].name != first.name:
                    raise ParameterError(
                        f"stages {group[0]!r} and {other!r} share one sampler instance, so they need the same "
                        "aggregator; give them the same one, or give each stage its own sampler"
                    )
            patch = stack.enter_context(patch_sampler(
                samplers[group[0]], first, weights=weights, stage="+".join(group), max_batch=max_batch,
                cameras=cameras, frame=frame, group=process_group, per_sample=per_sample, on_step=on_step,
            ))
            patches.update(dict.fromkeys(group, patch))
        yield patches


@dataclass
class _Plan:
    views: list[Any]
    aggregators: dict[str, Aggregator]
    params: dict[str, dict[str, Any]]
    weights: tuple[float, ...] | None
    cameras: tuple[Camera | None, ...] | None
    seed: int
    num_samples: int
    max_batch: int | None


def _plan(
    adapter: Adapter, images: Sequence[Any], *, mode: StageSpec, stages: Mapping[str, StageSpec] | None,
    weights: Sequence[float] | None, max_batch: int | None, params: Mapping[str, Any] | None, seed: int,
    num_samples: int, cameras: Sequence[Any] | None, registry: Registry | None,
    aggregators: dict[str, Aggregator] | None = None,
) -> _Plan:
    """Every check of a run, in one place, before any model work (``aggregators``: the stages' already
    resolved from ``mode`` and ``stages``, when several runs share them)."""
    info = traits(adapter)
    names, aliases, dialect = info.stage_names, info.stage_aliases, info.dialect
    seed = check_seed(seed)
    num_samples = check_int("num_samples", num_samples, 1)
    if max_batch is not None:
        max_batch = check_int("max_batch", max_batch, 1)
        if max_batch < num_samples:
            raise ParameterError(
                f"max_batch={max_batch} is smaller than num_samples={num_samples}: one forward holds every sample "
                "of a view, so raise max_batch or lower num_samples"
            )
    if params is not None and not isinstance(params, Mapping):
        raise ParameterError(f"params must be a dict of stage: {{parameter: value}}; got params={params!r}")
    checked: dict[str, dict[str, Any]] = {}
    for stage, values in (params or {}).items():
        key = canonical_stage(stage, names, aliases)
        checked[key] = {**checked.get(key, {}), **check_sampler_params(key, values, dialect)}
    views = load_images(images)
    n = len(views)
    norm_weights = normalise_weights(weights, n) if weights is not None else None
    norm_cameras = normalise_cameras(cameras, n, info.named_cameras)
    if aggregators is None:
        aggregators = plan_stages(names, mode, stages, aliases, registry=registry)
    for agg in aggregators.values():
        check_views(agg, n, norm_cameras or ())
    return _Plan(views, aggregators, checked, norm_weights, norm_cameras, seed, num_samples, max_batch)


# -- running --------------------------------------------------------------------------------------


@dataclass
class MultiViewResult:
    """What :func:`run_multi_image` returns.

    :ivar output: what the adapter's ``sample`` returned (proxy: a
        :class:`~trellis_mv.proxy.ProxyResult`; TRELLIS.2: meshes and latents).
    :ivar adapter: the adapter that ran.
    :ivar views: the views as the adapter prepared them.
    :ivar aggregators: ``{stage: aggregator}``.
    :ivar patches: ``{stage: Patch}``: forwards, rows, per-step records and diagnostics.
    :ivar params: the sampler parameters given per stage (the adapter's defaults apply elsewhere).
    :ivar seconds: wall-clock time of sampling.
    """

    output: Any
    adapter: Any
    views: list[Any]
    aggregators: dict[str, Aggregator]
    patches: dict[str, Patch]
    params: dict[str, dict[str, Any]]
    seed: int
    num_samples: int
    weights: tuple[float, ...] | None = None
    cameras: tuple[Camera | None, ...] | None = None
    seconds: float = 0.0
    inputs: list[str] = field(default_factory=list)

    def cost(self) -> dict[str, Any]:
        """Per patch: aggregator, sampling runs, steps, model forwards and latent rows; their totals; the seconds.

        Stages that share one sampler share one patch, listed once under their joined name
        (``"a+b"``), so every forward is counted once.
        """
        return _cost(self.patches, self.seconds)

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds (without the file list)."""
        from . import __version__

        info = traits(self.adapter)
        defaults = info.default_params
        return {
            MARKER: __version__,
            "model": info.name,
            "images": self.inputs,
            "num_views": len(self.views),
            "cameras": [list(c) if c else None for c in self.cameras] if self.cameras else None,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "weights": list(self.weights) if self.weights else None,
            "aggregators": {s: a.name for s, a in self.aggregators.items()},
            "aggregator_options": {s: repr(a) for s, a in self.aggregators.items()},
            "params": {s: {**dict(defaults.get(s, {})), **self.params.get(s, {})} for s in self.aggregators},
            "cost": self.cost(),
        }


def _cost(patches: Mapping[str, Patch], seconds: float) -> dict[str, Any]:
    unique = {id(p): p for p in patches.values()}.values()
    stages = {
        p.stage or "": {"aggregator": p.name, "sampling_runs": p.runs, "steps": len(p.records),
                        "model_forwards": p.model_calls, "latent_rows": p.batch_rows}
        for p in unique
    }
    return {"stages": stages, "model_forwards": sum(s["model_forwards"] for s in stages.values()),
            "latent_rows": sum(s["latent_rows"] for s in stages.values()), "seconds": round(seconds, 3)}


@dataclass
class BatchResult:
    """What :func:`run_many` returns: one sampler run per stage that generated several objects.

    :ivar output: what the adapter's ``sample_many`` returned: sample ``b`` is object ``b``'s.
    :ivar views: per object, its views as the adapter prepared them.
    :ivar seeds: per object, its seed (sample ``b`` equals :func:`run_multi_image` with ``seeds[b]``).
    """

    output: Any
    adapter: Any
    views: list[list[Any]]
    aggregators: dict[str, Aggregator]
    patches: dict[str, Patch]
    params: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    cameras: tuple[tuple[Camera | None, ...] | None, ...]
    seconds: float = 0.0

    def cost(self) -> dict[str, Any]:
        """As :meth:`MultiViewResult.cost`, for the whole batch (each forward holds every object)."""
        return _cost(self.patches, self.seconds)


_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock(adapter: Any) -> threading.Lock:
    """One lock per adapter: concurrent runs on one model (an app's users) wait their turn."""
    with _LOCKS_GUARD:
        try:
            return _LOCKS.setdefault(adapter, threading.Lock())
        except TypeError:  # not weak-referenceable: a lock of its own each time
            return threading.Lock()


def run_multi_image(
    adapter: Adapter,
    images: Sequence[Any],
    *,
    mode: StageSpec = "multidiffusion",
    stages: Mapping[str, StageSpec] | None = None,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 42,
    num_samples: int = 1,
    cameras: Sequence[Any] | None = None,
    registry: Registry | None = None,
    group: Any = None,
    on_step: StepCallback | None = None,
) -> MultiViewResult:
    """One generation of ``adapter`` steered by several views of one object.

    Every argument is checked before any model work (:class:`~trellis_mv.ParameterError`,
    :class:`~trellis_mv.ImageError`, ...). Concurrent calls on one adapter run one at a time.

    :param adapter: the model (:func:`load_adapter`).
    :param images: one view each: a path, a PIL image (any mode Pillow reads), or what the
        adapter accepts beside (e.g. the proxy's ``[3, 64, 64]`` tensors).
    :param mode: the aggregator of every stage not named in ``stages``.
    :param stages: per-stage aggregators, e.g. ``{"texture": "single:view=0"}``.
    :param weights: one weight per view, for aggregators that honour weights.
    :param max_batch: at most this many latent rows per model forward (at least ``num_samples``).
    :param params: per-stage sampler parameters in the adapter's dialect, e.g.
        ``{"shape": {"steps": 12}}``; what is not given keeps the adapter's defaults.
    :param seed: the noise seed. :param num_samples: samples drawn at once.
    :param cameras: one camera per view (``"front"``, ``"90,20"``, ``(az, el)`` or None),
        for aggregators that use them (``step.cameras``).
    :param registry: where aggregator names are looked up (default: the installed plugins).
    :param group: a ``torch.distributed`` process group over whose ranks each step's views are
        spread (one sample, several GPUs; every rank calls this with the same arguments); see
        :func:`~trellis_mv.patch_sampler`.
    :param on_step: a progress hook ``on_step(stage, step, num_steps)``, called after each model
        evaluation of every stage (:func:`~trellis_mv.patch_sampler`).
    """
    rows_for(group)  # a bad group is refused before any model work
    plan = _plan(adapter, images, mode=mode, stages=stages, weights=weights, max_batch=max_batch, params=params,
                 seed=seed, num_samples=num_samples, cameras=cameras, registry=registry)
    check_same_job(group, {"aggregators": {s: repr(a) for s, a in plan.aggregators.items()}, "views": len(plan.views),
                           "params": plan.params, "seed": plan.seed, "num_samples": plan.num_samples,
                           "weights": plan.weights, "cameras": plan.cameras, "max_batch": plan.max_batch})
    with _lock(adapter):
        views = adapter.prepare(plan.views)
        start = time.perf_counter()
        with patch_stages(adapter.samplers, plan.aggregators, weights=plan.weights, max_batch=plan.max_batch,
                          cameras=plan.cameras, frame=traits(adapter).latent_frame, group=group,
                          on_step=on_step) as patches:
            output = adapter.sample(views, seed=plan.seed, num_samples=plan.num_samples, params=plan.params)
        seconds = time.perf_counter() - start
    inputs = [str(im) if isinstance(im, (str, os.PathLike)) else f"view {i}" for i, im in enumerate(images)]
    return MultiViewResult(output=output, adapter=adapter, views=list(views), aggregators=plan.aggregators,
                           patches=patches, params=plan.params, seed=plan.seed, num_samples=plan.num_samples,
                           weights=plan.weights, cameras=plan.cameras, seconds=seconds, inputs=inputs)


def run_many(
    adapter: Adapter,
    image_sets: Sequence[Sequence[Any]],
    *,
    seeds: Sequence[int],
    mode: StageSpec = "multidiffusion",
    stages: Mapping[str, StageSpec] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    cameras: Sequence[Sequence[Any] | None] | None = None,
    max_batch: int | None = None,
    registry: Registry | None = None,
) -> BatchResult:
    """Several objects in one generation: each stage's sampler runs once over all of them, every object
    with its own views (its own number of them, too), cameras and seed.

    Object ``b``'s sample equals :func:`run_multi_image` on ``image_sets[b]`` with seed ``seeds[b]``
    (to floating-point tolerance), at the cost of one sampler run per stage for the whole batch:
    a forward of view ``i`` pairs every object's latent with its own view ``i``
    (:func:`~trellis_mv.patch_sampler`'s ``per_sample``). The adapter needs the optional
    member ``sample_many(view_sets, *, seeds, params)``.

    >>> adapter = load_adapter("proxy")
    >>> images = [path for path, _ in adapter.examples()]
    >>> batch = run_many(adapter, [images[:2], images[2:]], seeds=[1, 2], params={"texture": {"steps": 4}})
    >>> tuple(batch.output.occupancy.shape), batch.cost()["stages"]["sparse_structure"]["model_forwards"]
    ((2, 16, 16, 16), 12)
    """
    info = traits(adapter)
    if info.sample_many is None:
        raise ParameterError(f"the {info.name} adapter has no sample_many, so it cannot generate several objects in "
                             "one run; call run_multi_image once per object")
    if isinstance(image_sets, (str, bytes)) or not isinstance(image_sets, Sequence) or not image_sets:
        raise ParameterError("image_sets must be a non-empty list with one list of images per object")
    seeds = [check_seed(s) for s in seeds]
    if len(seeds) != len(image_sets):
        raise ParameterError(f"seeds has {len(seeds)} entries but there are {len(image_sets)} objects; give one seed each")
    if cameras is not None and len(cameras) != len(image_sets):
        raise ParameterError(f"cameras has {len(cameras)} entries but there are {len(image_sets)} objects; give one "
                             "list (or None) per object")
    first = _plan(adapter, image_sets[0], mode=mode, stages=stages, weights=None, max_batch=max_batch, params=params,
                  seed=seeds[0], num_samples=1, cameras=None if cameras is None else cameras[0], registry=registry)
    plans = [first] + [_plan(adapter, images, mode=mode, stages=stages, weights=None, max_batch=max_batch, params=params,
                             seed=seed, num_samples=1, cameras=None if cameras is None else cameras[b], registry=registry,
                             aggregators=first.aggregators)  # one resolution for the batch: they run one patch
                       for b, (images, seed) in enumerate(zip(image_sets, seeds)) if b > 0]
    if max_batch is not None and max_batch < len(plans):
        raise ParameterError(f"max_batch={max_batch} is smaller than the {len(plans)} objects: one forward holds every "
                             "object of a view, so raise max_batch or give fewer objects")
    counts = [len(p.views) for p in plans]
    weights = [[1.0 / n] * n + [0.0] * (max(counts) - n) for n in counts]
    cams = [list(p.cameras) if p.cameras else [None] * len(p.views) for p in plans]
    with _lock(adapter):
        view_sets = [adapter.prepare(p.views) for p in plans]
        start = time.perf_counter()
        with patch_stages(adapter.samplers, first.aggregators, weights=weights, max_batch=max_batch, cameras=cams,
                          frame=info.latent_frame, registry=registry, per_sample=True) as patches:
            output = info.sample_many(view_sets, seeds=seeds, params=first.params)
        seconds = time.perf_counter() - start
    return BatchResult(output=output, adapter=adapter, views=view_sets, aggregators=first.aggregators, patches=patches,
                       params=first.params, seeds=tuple(seeds), cameras=tuple(p.cameras for p in plans),
                       seconds=seconds)


def generate(
    adapter: Adapter,
    images: Sequence[Any],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    **run: Any,
) -> dict[str, Any]:
    """:func:`run_multi_image`, then the adapter's files, ``diagnostics.npz`` and ``summary.json`` in ``out_dir``.

    Nothing is written unless everything succeeds: the files are made in a staging folder on
    ``out_dir``'s filesystem and moved into place at the end (an exception, Ctrl-C or
    SIGTERM leaves ``out_dir`` as it was). A folder holding an earlier run is refused
    unless ``overwrite``, which replaces its whole content; a folder holding files that
    trellis-mv did not write, or one of ``images``, is never overwritten (the rules:
    :mod:`trellis_mv._outputs`).

    With ``group`` (a keyword of :func:`run_multi_image`), rank 0 alone writes; the other
    ranks sample along and return ``{}``.

    :param run: the keyword arguments of :func:`run_multi_image`.
    :returns: the summary, also written as ``summary.json``; ``outputs`` lists the files.
    """
    if not writes_outputs(run.get("group")):
        run_multi_image(adapter, images, **run)
        return {}
    check_output(out_dir, overwrite=overwrite, inputs=images)
    start = time.perf_counter()
    with output_folder(out_dir, overwrite=overwrite, inputs=images) as staging:
        result = run_multi_image(adapter, images, **run)
        files = list(adapter.export(result, staging))
        files += _save_diagnostics(result, staging)
        summary = result.summary()
        summary["seconds"] = {"sampling": round(result.seconds, 3), "total": round(time.perf_counter() - start, 3)}
        summary["outputs"] = sorted({*files, "summary.json"})
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["out_dir"] = str(out_dir)
    return summary


def _save_diagnostics(result: MultiViewResult, folder: Path) -> list[str]:
    """What the aggregators recorded (``step.record``): every tensor, per stage, as ``diagnostics.npz``; and
    for the last sparse stage with per-voxel view weights, the dominant-view mesh and picture
    (:func:`trellis_mv.diagnostics.save_diagnostics`)."""
    import numpy as np
    import torch

    from .diagnostics import save_diagnostics

    arrays, per_voxel = {}, None
    for stage, patch in result.patches.items():
        for key, value in patch.diagnostics.items():
            values = getattr(value, "feats", value)
            if isinstance(values, torch.Tensor):
                arrays[f"{stage}/{key}"] = values.detach().float().cpu().numpy()
        if "view_weights" in patch.diagnostics and patch.diagnostics.get("coords") is not None:
            per_voxel = patch
    if not arrays:
        return []
    np.savez_compressed(folder / "diagnostics.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub types the first keyword
    written = [Path(p).name for p in save_diagnostics(per_voxel, None, folder)] if per_voxel is not None else []
    return ["diagnostics.npz", *written]


# -- adapters -------------------------------------------------------------------------------------


def load_adapter(model: str = "proxy", *, device: str | None = None, registry: Registry | None = None,
                 **options: Any) -> Adapter:
    """The adapter of a model: ``"proxy"`` (embedded, CPU), a TRELLIS.2 / TRELLIS hub id or local folder,
    or whatever an installed adapter plugin answers for (:func:`adapter_class`).

    ``options`` go to the adapter's ``load`` (e.g. TRELLIS.2's ``pipeline_type``).

    >>> load_adapter("proxy").name
    'proxy'
    """
    check_device(device)
    return adapter_class(model, registry=registry).load(model, device=device, **options)  # type: ignore[attr-defined]


def check_device(device: Any) -> None:
    """Refuse a device torch does not know, or CUDA where there is none, before any model loads."""
    import torch

    if device is None or (isinstance(device, torch.device) and device.type != "cuda"):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ParameterError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"--device {device!r}, but CUDA is not available here; use --device cpu")


def adapter_class(model: str = "proxy", *, registry: Registry | None = None) -> type:
    """The adapter class that runs ``model``, found without loading it: the one installed adapter plugin that
    answers :func:`~trellis_mv._spec.adapter_for` (TRELLIS.2 and TRELLIS read a folder's or hub id's ``pipeline.json``).

    >>> adapter_class("proxy").__name__
    'ProxyAdapter'
    """
    return (registry or get_registry()).adapter_for(model)


def demo(out_dir: str | os.PathLike[str], *, model: str = "proxy", num_views: int = 4, overwrite: bool = False,
         adapter: Adapter | None = None, **run: Any) -> dict[str, Any]:
    """:func:`generate` on a model's bundled example views (its adapter's ``examples``), with their cameras.

    :param num_views: how many of the bundled views to use, from the first.
    :param adapter: an adapter to reuse (default: :func:`load_adapter` of ``model``).
    :param run: the keyword arguments of :func:`run_multi_image`.

    >>> import tempfile
    >>> summary = demo(tempfile.mkdtemp() + "/out", num_views=2, params={"texture": {"steps": 4}})
    >>> summary["aggregators"], summary["num_views"]
    ({'sparse_structure': 'multidiffusion', 'texture': 'multidiffusion'}, 2)
    """
    adapter = adapter or load_adapter(model)
    examples = traits(adapter).examples
    bundled = list(examples()) if examples is not None else []
    if not bundled:
        raise ParameterError(f"the {traits(adapter).name} adapter has no bundled example views; use generate with your own")
    if isinstance(num_views, bool) or not isinstance(num_views, int) or not 1 <= num_views <= len(bundled):
        raise ParameterError(f"num_views must be between 1 and {len(bundled)} (there are {len(bundled)} bundled views), "
                             f"got num_views={num_views!r}")
    images = [path for path, _ in bundled[:num_views]]
    run.setdefault("cameras", [camera for _, camera in bundled[:num_views]])
    return generate(adapter, images, out_dir, overwrite=overwrite, **run)
