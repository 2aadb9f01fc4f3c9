"""The one run path: any model adapter, several views, one aggregator per stage.

An *adapter* (:class:`~trellis_mv.Adapter`) says what a model's stages and samplers
are, how images become views, how one generation runs and how its result is written.
The embedded proxy (:class:`trellis_mv.proxy.ProxyPipeline`), TRELLIS.2
(:class:`trellis_mv.integrations.trellis2.Trellis2Adapter`) and TRELLIS
(:class:`trellis_mv.integrations.trellis.TrellisAdapter`) are three adapters.
:func:`run_multi_image` checks everything before any model work, patches every stage's
sampler with its aggregator, runs the adapter and restores the samplers;
:func:`generate` does the same and writes the outputs atomically.

>>> import tempfile, trellis_mv
>>> adapter = trellis_mv.load_adapter("proxy")
>>> images = trellis_mv.proxy.example_images()[:2]
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

from ._distributed import rows_for, writes_outputs
from ._errors import ModelNotAvailable, ParameterError
from ._images import load_images
from ._outputs import MARKER, check_output, output_folder
from ._params import DIALECTS, check_int, check_sampler_params, check_seed
from ._patch import Patch, StepCallback, check_views, patch_sampler
from ._registry import Registry, parse_aggregator, parse_value, resolve
from ._spec import Adapter, Aggregator
from ._views import Camera, normalise_cameras, normalise_weights

__all__ = [
    "MultiViewResult",
    "StageSpec",
    "adapter_class",
    "canonical_stage",
    "generate",
    "load_adapter",
    "parse_aggregator",
    "parse_stage",
    "parse_stage_values",
    "parse_value",
    "patch_stages",
    "plan_stages",
    "run_multi_image",
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


def canonical_stage(name: str, stage_names: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """A stage name as the adapter spells it (case, ``-``/``_`` and ``aliases`` forgiven)."""
    key = str(name).strip().lower().replace("-", "_")
    key = (aliases or {}).get(key, key)
    if key not in stage_names:
        known = ", ".join(stage_names)
        extra = f" (or {', '.join(sorted(aliases))})" if aliases else ""
        raise ParameterError(f"unknown stage {name!r}; this model's stages are: {known}{extra}")
    return key


# -- planning -------------------------------------------------------------------------------------


def _stages(adapter: Adapter) -> tuple[str, ...]:
    return tuple(adapter.samplers)


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
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    cameras: Sequence[Any] | None = None,
    frame: Any = None,
    registry: Registry | None = None,
    group: Any = None,
    on_step: StepCallback | None = None,
) -> Iterator[dict[str, Patch]]:
    """Patch every stage's sampler with its aggregator; all are restored on exit.

    Stages that share one sampler instance share one patch (labelled ``"a+b"``), which
    needs the same aggregator for both; different ones are an error. ``group`` and
    ``on_step``: as in :func:`~trellis_mv.patch_sampler`.
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
                cameras=cameras, frame=frame, group=process_group, on_step=on_step,
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
) -> _Plan:
    """Every check of a run, in one place, before any model work."""
    names = _stages(adapter)
    aliases = getattr(adapter, "stage_aliases", None) or {}
    dialect = getattr(adapter, "dialect", "trellis2")
    if dialect not in DIALECTS:
        raise ParameterError(f"adapter {adapter!r} has dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
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
    norm_cameras = normalise_cameras(cameras, n, getattr(adapter, "named_cameras", None))
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
        """Per stage: aggregator, sampling runs, steps, model forwards and latent rows; and the seconds."""
        stages = {
            stage: {"aggregator": p.name, "sampling_runs": p.runs, "steps": len(p.records),
                    "model_forwards": p.model_calls, "latent_rows": p.batch_rows}
            for stage, p in self.patches.items()
        }
        return {"stages": stages, "model_forwards": sum(s["model_forwards"] for s in stages.values()),
                "seconds": round(self.seconds, 3)}

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds (without the file list)."""
        from . import __version__

        defaults = getattr(self.adapter, "default_params", {}) or {}
        return {
            MARKER: __version__,
            "model": getattr(self.adapter, "name", type(self.adapter).__name__),
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
    with _lock(adapter):
        views = adapter.prepare(plan.views)
        start = time.perf_counter()
        with patch_stages(adapter.samplers, plan.aggregators, weights=plan.weights, max_batch=plan.max_batch,
                          cameras=plan.cameras, frame=getattr(adapter, "latent_frame", None), group=group,
                          on_step=on_step) as patches:
            output = adapter.sample(views, seed=plan.seed, num_samples=plan.num_samples, params=plan.params)
        seconds = time.perf_counter() - start
    inputs = [str(im) if isinstance(im, (str, os.PathLike)) else f"view {i}" for i, im in enumerate(images)]
    return MultiViewResult(output=output, adapter=adapter, views=list(views), aggregators=plan.aggregators,
                           patches=patches, params=plan.params, seed=plan.seed, num_samples=plan.num_samples,
                           weights=plan.weights, cameras=plan.cameras, seconds=seconds, inputs=inputs)


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
    trellis-mv did not write is never overwritten.

    With ``group`` (a keyword of :func:`run_multi_image`), rank 0 alone writes; the other
    ranks sample along and return ``{}``.

    :param run: the keyword arguments of :func:`run_multi_image`.
    :returns: the summary, also written as ``summary.json``; ``outputs`` lists the files.
    """
    if not writes_outputs(run.get("group")):
        run_multi_image(adapter, images, **run)
        return {}
    check_output(out_dir, overwrite=overwrite)
    start = time.perf_counter()
    with output_folder(out_dir, overwrite=overwrite) as staging:
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
    np.savez_compressed(folder / "diagnostics.npz", **arrays)
    written = [Path(p).name for p in save_diagnostics(per_voxel, None, folder)] if per_voxel is not None else []
    return ["diagnostics.npz", *written]


# -- adapters -------------------------------------------------------------------------------------


def load_adapter(model: str = "proxy", *, device: str | None = None, **options: Any) -> Adapter:
    """The adapter of a model: ``"proxy"`` (embedded, CPU), or a TRELLIS.2 / TRELLIS hub id or local folder.

    Which of TRELLIS.2 and TRELLIS a hub id or folder holds is read from its
    ``pipeline.json``. ``options`` go to the adapter (e.g. TRELLIS.2's ``pipeline_type``).

    >>> load_adapter("proxy").name
    'proxy'
    """
    cls = adapter_class(model)
    if model == "proxy":
        return cls(device=device or "cpu", **options)
    return cls.load(model, device=device, **options)


def adapter_class(model: str = "proxy") -> type:
    """The adapter class of a model, found without loading it (a hub id's or folder's ``pipeline.json`` names it).

    >>> adapter_class("proxy").__name__, tuple(adapter_class("proxy")().samplers)
    ('ProxyPipeline', ('sparse_structure', 'texture'))
    """
    if not isinstance(model, str) or not model.strip():
        raise ParameterError(f"model must be 'proxy', a hub id or a model folder; got model={model!r}")
    if model == "proxy":
        from .proxy import ProxyPipeline

        return ProxyPipeline
    from .integrations._base import importable, pipeline_name
    from .integrations.trellis import TrellisAdapter
    from .integrations.trellis2 import Trellis2Adapter

    if not (importable("trellis2") or importable("trellis")):  # say so before any download
        raise ModelNotAvailable(Trellis2Adapter.install_hint)
    kind = pipeline_name(model)
    classes = {"Trellis2ImageTo3DPipeline": Trellis2Adapter, "TrellisImageTo3DPipeline": TrellisAdapter}
    if kind not in classes:
        raise ParameterError(f"{model}'s pipeline.json names {kind!r}; trellis-mv runs TRELLIS.2 and TRELLIS image-to-3D "
                             "pipelines")
    return classes[kind]
