"""The context manager that makes a sampler multi-view, and always puts it back."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _tensors as T
from ._distributed import rows_for
from ._errors import AggregatorError, PatchError
from ._registry import Registry, resolve
from ._spec import Aggregator
from ._step import Step, StepRecord, _Counter
from ._views import Views, normalise_cameras, normalise_weights, prepare_views

__all__ = ["Patch", "StepCallback", "check_views", "patch_sampler"]

#: ``on_step(stage, step, num_steps)``: called after each model evaluation of a patched sampler, with the
#: stage label, the 0-based denoising step and the run's step count (None where the sampler does not say it).
StepCallback = Callable[[str | None, int, int | None], None]

logger = logging.getLogger("trellis_mv")

_MARK = "_trellis_mv_patch"
_PATCHED = ("_inference_model", "sample_once", "sample")
_INSTALL_LOCK = threading.Lock()


@dataclass
class _Run:
    """One sampling run (one ``sampler.sample`` call) in one thread."""

    index: int
    num_steps: int | None
    cond: Any = None
    views: Views | None = None
    step: int = -1
    in_step: bool = False
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Patch:
    """What :func:`patch_sampler` yields: the patch's identity and what it has done so far.

    :ivar model_calls: model forwards made through the patch.
    :ivar batch_rows: latent rows those forwards evaluated (a forward of 4 views and a
        negative for 2 samples counts 10).
    :ivar runs: sampling runs started (``sampler.sample`` calls).
    :ivar records: one :class:`StepRecord` per patched ``_inference_model`` call.
    :ivar diagnostics: what the aggregator recorded with :meth:`Step.record`, per key the
        value of the latest step.
    """

    sampler: Any
    aggregator: Aggregator
    stage: str | None = None
    model_calls: int = 0
    batch_rows: int = 0
    runs: int = 0
    records: list[StepRecord] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.aggregator.name


def _check_sampler(sampler: Any) -> None:
    existing = getattr(sampler, _MARK, None)
    if existing is not None:
        raise PatchError(
            f"{type(sampler).__name__} is already patched by trellis-mv (aggregator {existing.name!r}, "
            f"stage {existing.stage!r}); leave that `with patch_sampler(...)` block before patching again"
        )
    if not callable(getattr(sampler, "_inference_model", None)):
        raise PatchError(
            f"{type(sampler).__name__} has no `_inference_model` method; patch_sampler works on TRELLIS.2 and "
            "TRELLIS flow samplers, or any sampler whose _inference_model(model, x_t, t, cond, **kw) calls "
            "model(x_t, 1000 * t, cond, **kw)"
        )
    if not hasattr(sampler, "__dict__"):
        raise PatchError(f"{type(sampler).__name__} does not accept instance attributes, so it cannot be patched")
    if "_old_inference_model" in vars(sampler):
        raise PatchError(
            f"{type(sampler).__name__} is inside TRELLIS's own inject_sampler_multi_image; leave that block "
            "before patching it with trellis-mv"
        )


def _bound_arguments(sig: inspect.Signature | None, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    if sig is None:
        return None
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return None  # let the sampler itself report its own signature errors
    values = dict(bound.arguments)
    for name, param in sig.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            values.update(values.pop(name, {}))
        elif name not in values and param.default is not inspect.Parameter.empty:
            values[name] = param.default
    return values


@contextmanager
def patch_sampler(
    sampler: Any,
    aggregator: str | Aggregator | type,
    *,
    weights: Sequence[float] | None = None,
    stage: str | None = None,
    max_batch: int | None = None,
    cameras: Sequence[Any] | None = None,
    frame: Any = None,
    registry: Registry | None = None,
    group: Any = None,
    on_step: StepCallback | None = None,
    **options: Any,
) -> Iterator[Patch]:
    """Make every ``sampler.sample(...)`` inside the block multi-view.

    Inside the block, the sampler's ``cond`` holds the N views' conditioning stacked on
    dim 0, as ``pipeline.get_cond([img1, ..., imgN], res)`` returns it, and each call of
    its ``_inference_model`` is answered by ``aggregator``. Works on TRELLIS.2's
    ``FlowEulerSampler``, ``FlowEulerCfgSampler`` and ``FlowEulerGuidanceIntervalSampler``,
    on TRELLIS v1's samplers (``cfg_strength``, ``cfg_interval``) and on
    :mod:`trellis_mv.samplers`; the guidance dialect is the sampler's own. The sampler is
    restored exactly when the block ends, however it ends.

    :param sampler: the sampler instance to patch (only this instance is touched).
    :param aggregator: a registered name (see :func:`list_aggregators`), an aggregator
        class, or an instance.
    :param weights: one non-negative weight per view; normalised to sum to 1.
    :param stage: a label passed to the aggregator as ``step.stage`` (e.g. ``"shape"``).
    :param max_batch: at most this many latent rows per model forward (memory cap); the
        default evaluates all views and the negative in one forward. It must be at least the
        number of samples, since one forward holds every sample of one view.
    :param cameras: one camera per view (a name, ``"AZ,EL"``, a pair or None), passed to the
        aggregator as ``step.cameras``.
    :param frame: 3x3 map from the object frame (x right, y up, z front) to the latent's
        axes, for ``step.view_directions`` (default: identity).
    :param registry: where names are looked up (default: :func:`get_registry`).
    :param group: a ``torch.distributed`` process group (e.g. ``torch.distributed.group.WORLD``
        under ``torchrun``) over whose ranks the views' rows of each forward are spread; every
        rank runs the same sampling and ends each step with the same latent. ``model_calls``
        and ``batch_rows`` then count this rank's forwards. See :mod:`trellis_mv._distributed`.
    :param on_step: a progress hook, ``on_step(stage, step, num_steps)``, called after each
        patched model evaluation (a sampler that evaluates twice a step reports that step twice).
    :param options: the aggregator's options, when it is given by name or class.
    :yields: a :class:`Patch` that counts model calls and records each step.

    >>> import torch, trellis_mv
    >>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
    >>> sampler = FlowEulerGuidanceIntervalSampler()
    >>> model = lambda x, t, cond, **kw: x - cond.mean(dim=(1, 2)).view(-1, 1)
    >>> views = torch.randn(3, 4, 8)                      # 3 views, 4 tokens each
    >>> with trellis_mv.patch_sampler(sampler, "multidiffusion") as patch:
    ...     out = sampler.sample(model, torch.randn(1, 5), views, torch.zeros(1, 4, 8),
    ...                          steps=10, guidance_strength=3.0, verbose=False)
    >>> patch.model_calls          # one forward per step: 3 views + the negative
    10
    >>> "sample" in vars(sampler)  # restored
    False
    """
    agg = resolve(aggregator, options=options, registry=registry)
    user_weights = normalise_weights(weights)
    user_cameras = normalise_cameras(cameras)
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise PatchError(f"max_batch must be a positive integer or None; got max_batch={max_batch!r}")
    rows = rows_for(group)

    patch = Patch(sampler=sampler, aggregator=agg, stage=stage)
    where = f" in stage {stage!r}" if stage else ""
    local = threading.local()
    trace = os.environ.get("TRELLIS_MV_TRACE", "") not in ("", "0")
    with _INSTALL_LOCK:  # check and install at once: two threads never both patch one sampler
        _check_sampler(sampler)
        object.__setattr__(sampler, _MARK, patch)
    saved = {name: vars(sampler)[name] for name in _PATCHED if name in vars(sampler)}
    orig_inference = sampler._inference_model
    orig_sample_once = getattr(sampler, "sample_once", None)
    orig_sample = getattr(sampler, "sample", None)
    try:
        sample_sig = inspect.signature(orig_sample) if callable(orig_sample) else None
    except (TypeError, ValueError):
        sample_sig = None
    lock = threading.Lock()

    def views_for(run: _Run, cond: Any, neg_cond: Any) -> Views:
        if run.views is None or cond is not run.cond:
            run.cond, run.views = cond, prepare_views(cond, neg_cond, user_weights, user_cameras)
            check_views(agg, run.views.count, run.views.cameras)
        return run.views

    def current_run() -> _Run:
        run = getattr(local, "run", None)
        if run is None:  # _inference_model called outside sample(): one implicit run
            with lock:
                run = local.run = _Run(index=patch.runs, num_steps=None)
                patch.runs += 1
        return run

    def sample(*args: Any, **kwargs: Any) -> Any:
        values = _bound_arguments(sample_sig, args, kwargs)
        previous = getattr(local, "run", None)
        with lock:
            run = _Run(index=patch.runs, num_steps=None)
            patch.runs += 1
        if values is not None:
            steps = values.get("steps")
            run.num_steps = steps if isinstance(steps, int) else None
            if "cond" in values:  # validate before any model work
                views_for(run, values["cond"], values.get("neg_cond"))
            noise = values.get("noise")
            if max_batch is not None and hasattr(noise, "shape") and int(noise.shape[0]) > max_batch:
                raise PatchError(
                    f"max_batch={max_batch} is smaller than the {int(noise.shape[0])} samples drawn at once{where}; "
                    "one forward holds every sample of a view, so raise max_batch or draw fewer samples"
                )
        local.run = run
        try:
            return orig_sample(*args, **kwargs)
        finally:
            local.run = previous

    def sample_once(*args: Any, **kwargs: Any) -> Any:
        run = current_run()
        run.step += 1
        run.in_step = True
        try:
            return orig_sample_once(*args, **kwargs)
        finally:
            run.in_step = False

    def inference_model(model: Any, x_t: Any, t: Any, cond: Any = None, **kwargs: Any) -> Any:
        run = current_run()
        if not run.in_step:
            run.step += 1
        views = views_for(run, cond, kwargs.get("neg_cond"))
        counter = _Counter()
        step = Step(
            sampler=sampler, inference=orig_inference, model=model, x_t=x_t, t=float(t), kwargs=kwargs,
            views=views, index=run.step, num_steps=run.num_steps, run=run.index, stage=stage,
            state=run.state, max_batch=max_batch, counter=counter, diagnostics=patch.diagnostics, frame=frame,
            rows=rows,
        )
        # a step that needs the negative branch alone (guidance strength 0) is the core's, not the aggregator's
        pred = agg(step) if step.needs_positive else step.guide(None)
        _check_prediction(agg, x_t, pred, f"{where}, step {run.step} (t={float(t):.4f})")
        record = StepRecord(
            run=run.index, step=run.step, t=float(t), views=tuple(sorted(counter.views)),
            forwards=counter.forwards, rows=counter.rows,
        )
        with lock:
            patch.records.append(record)
            patch.model_calls += counter.forwards
            patch.batch_rows += counter.rows
        if trace:
            logger.warning("trellis_mv trace: %s stage=%s %s", agg.name, stage, record)
        if on_step is not None:
            on_step(stage, run.step, run.num_steps)
        return pred

    try:
        functools.update_wrapper(inference_model, orig_inference)
        object.__setattr__(sampler, "_inference_model", inference_model)
        if callable(orig_sample_once):
            object.__setattr__(sampler, "sample_once", functools.update_wrapper(sample_once, orig_sample_once))
        if callable(orig_sample):
            object.__setattr__(sampler, "sample", functools.update_wrapper(sample, orig_sample))
        yield patch
    finally:
        with _INSTALL_LOCK:
            for name in _PATCHED:
                if name in saved:
                    object.__setattr__(sampler, name, saved[name])
                elif name in vars(sampler):
                    object.__delattr__(sampler, name)
            object.__delattr__(sampler, _MARK)


def check_views(agg: Aggregator, num_views: int, cameras: Sequence[Any] = ()) -> None:
    """Let an aggregator refuse a view set before any model work (its optional ``check`` method)."""
    check = getattr(agg, "check", None)
    if callable(check):
        check(num_views=num_views, cameras=tuple(cameras) or (None,) * num_views)


def _check_prediction(agg: Aggregator, x_t: Any, pred: Any, where: str) -> None:
    if T.is_sparse(x_t):
        ok = T.is_sparse(pred) and tuple(pred.feats.shape) == tuple(x_t.feats.shape)
        got = f"{type(pred).__name__} with feats {tuple(pred.feats.shape)}" if T.is_sparse(pred) else repr(type(pred))
        want = f"a sparse tensor with feats {tuple(x_t.feats.shape)}"
    else:
        ok = hasattr(pred, "shape") and tuple(pred.shape) == tuple(x_t.shape)
        got = f"shape {tuple(pred.shape)}" if hasattr(pred, "shape") else repr(type(pred))
        want = f"shape {tuple(x_t.shape)}"
    if not ok:
        raise AggregatorError(
            f"aggregator {agg.name!r} returned {got}{where}; it must return a prediction shaped like x_t ({want})",
            aggregator=agg.name,
        )
    values = T.feats(pred)
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise AggregatorError(
            f"the prediction{where} holds NaN or Inf (aggregator {agg.name!r}); check the views, the sampler "
            "parameters and the model's dtype",
            aggregator=agg.name,
        )
