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
from ._views import Views, normalise_cameras, normalise_sample_weights, normalise_weights, prepare_views

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
    #: inside ``sampler.sample`` on a GPU: each step's "prediction is finite" flag, left on the device and
    #: read once when the run ends (a read per step would stall the GPU at every step)
    finite: list[tuple[Any, str]] | None = None


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
    weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
    per_sample: bool = False,
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
    its ``_inference_model`` is answered by ``aggregator``. With ``per_sample=True`` each
    sample of the batch has its own views (e.g. different objects in one forward): ``cond``
    is ``[B, N, ...]``, sample ``b``'s views in ``cond[b]``, padded at the end with views of
    weight 0 where a sample has fewer (:func:`~trellis_mv.pad_views` builds both). Works on TRELLIS.2's
    ``FlowEulerSampler``, ``FlowEulerCfgSampler`` and ``FlowEulerGuidanceIntervalSampler``,
    on TRELLIS v1's samplers (``cfg_strength``, ``cfg_interval``) and on
    :mod:`trellis_mv.samplers`; the guidance dialect is the sampler's own. The sampler is
    restored exactly when the block ends, however it ends.

    :param sampler: the sampler instance to patch (only this instance is touched).
    :param aggregator: a registered name (see :func:`list_aggregators`), an aggregator
        class, or an instance.
    :param weights: one non-negative weight per view, normalised to sum to 1; with
        ``per_sample``, one such list per sample (``[B, N]``, 0 on a sample's padding views,
        which come last; uniform over all N views when omitted).
    :param per_sample: each sample has its own views: ``cond`` ``[B, N, ...]`` (B the
        samples drawn at once), ``weights`` ``[B, N]``, ``cameras`` one list per sample. The
        negative stays one row per sample (``[1, ...]``, ``[B, ...]`` or ``zeros_like(cond)``).
        One forward of view ``i`` pairs every sample's latent with its own view ``i``.
    :param stage: a label passed to the aggregator as ``step.stage`` (e.g. ``"shape"``).
    :param max_batch: at most this many latent rows per model forward (memory cap); the
        default evaluates all views and the negative in one forward. It must be at least the
        number of samples, since one forward holds every sample of one view.
    :param cameras: one camera per view (a name, ``"AZ,EL"``, a pair or None), passed to the
        aggregator as ``step.sample_cameras``; with ``per_sample``, one list per sample.
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

    Two objects in one run, the first seen from 3 views, the second from 1:

    >>> cond, weights = trellis_mv.pad_views([torch.randn(3, 4, 8), torch.randn(1, 4, 8)])
    >>> with trellis_mv.patch_sampler(sampler, "multidiffusion", per_sample=True, weights=weights,
    ...                               cameras=[["front", "90", "back"], ["front"]]) as patch:
    ...     out = sampler.sample(model, torch.randn(2, 5), cond, torch.zeros(1, 4, 8),
    ...                          steps=10, guidance_strength=3.0, verbose=False)
    >>> patch.model_calls, patch.batch_rows // patch.model_calls   # a forward: 3 views + the negative, 2 samples each
    (10, 8)
    """
    agg = resolve(aggregator, options=options, registry=registry)
    if not isinstance(per_sample, bool):
        raise PatchError(f"per_sample must be True or False; got per_sample={per_sample!r}")
    user_weights: Any = weights
    user_cameras: Any = cameras
    if per_sample:
        if weights is not None:  # the form now; the numbers of samples and views when cond arrives
            given: Any = weights.tolist() if isinstance(weights, torch.Tensor) else weights
            first = given[0] if isinstance(given, Sequence) and given and isinstance(given[0], Sequence) else ()
            user_weights = normalise_sample_weights(given, len(given) if isinstance(given, Sequence) else 0, len(first))
    else:
        user_weights = normalise_weights(weights)  # type: ignore[arg-type]
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
    orig_sample_once: Any = getattr(sampler, "sample_once", None)
    orig_sample: Any = getattr(sampler, "sample", None)
    try:
        sample_sig = inspect.signature(orig_sample) if callable(orig_sample) else None
    except (TypeError, ValueError):
        sample_sig = None
    lock = threading.Lock()

    def views_for(run: _Run, cond: Any, neg_cond: Any, batch: int | None) -> Views:
        if run.views is None or cond is not run.cond:
            views = prepare_views(cond, neg_cond, user_weights, user_cameras, per_sample=per_sample)
            if per_sample:
                if batch is not None and batch != int(views.cond.shape[0]):
                    raise PatchError(
                        f"per_sample=True: cond holds the views of {int(views.cond.shape[0])} samples but the sampler "
                        f"draws {batch} at once{where}; give one view set per sample (cond [B, N, ...] with B the "
                        "batch of the noise)"
                    )
                for b, (n, cams) in enumerate(zip(views.counts, views.cameras, strict=True)):
                    _check_sample(agg, b, n, cams[:n])
            else:
                check_views(agg, views.count, views.cameras)
            run.cond, run.views = cond, views
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
            noise: Any = values.get("noise")
            if "cond" in values:  # validate before any model work
                views_for(run, values["cond"], values.get("neg_cond"), T.batch_size(noise) if hasattr(noise, "shape") else None)
            if max_batch is not None and hasattr(noise, "shape") and int(noise.shape[0]) > max_batch:
                raise PatchError(
                    f"max_batch={max_batch} is smaller than the {int(noise.shape[0])} samples drawn at once{where}; "
                    "one forward holds every sample of a view, so raise max_batch or draw fewer samples"
                )
        run.finite = []
        local.run = run
        try:
            out = orig_sample(*args, **kwargs)
            _check_finite_steps(agg, run.finite)
            return out
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
        views = views_for(run, cond, kwargs.get("neg_cond"), T.batch_size(x_t))
        counter = _Counter()
        step = Step(
            sampler=sampler, inference=orig_inference, model=model, x_t=x_t, t=float(t), kwargs=kwargs,
            views=views, index=run.step, num_steps=run.num_steps, run=run.index, stage=stage,
            state=run.state, max_batch=max_batch, counter=counter, diagnostics=patch.diagnostics, frame=frame,
            rows=rows,
        )
        # a step that needs the negative branch alone (guidance strength 0) is the core's, not the aggregator's
        try:
            pred = agg(step) if step.needs_positive else step.guide(None)
        except Exception as exc:
            error = _raised_by(agg, exc, f"{where}, step {run.step}")
            if error is None:
                raise
            raise error from exc
        _check_prediction(agg, x_t, pred, f"{where}, step {run.step} (t={float(t):.4f})", run.finite)
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


def _check_sample(agg: Aggregator, sample: int, num_views: int, cameras: Sequence[Any]) -> None:
    try:
        check_views(agg, num_views, cameras)
    except AggregatorError as exc:  # name the sample whose view set the aggregator refuses
        raise type(exc)(f"sample {sample}: {exc}", aggregator=exc.aggregator) from None
def _raised_by(agg: Any, exc: Exception, where: str) -> AggregatorError | None:
    """An error naming the aggregator and its distribution when ``exc`` was raised by the aggregator's own code."""
    import importlib.metadata
    import sys

    from ._errors import TrellisMVError

    module = sys.modules.get(type(agg).__module__)
    home = os.path.dirname(getattr(module, "__file__", None) or "") if module is not None else ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if isinstance(exc, TrellisMVError) or not home or tb is None or os.path.dirname(tb.tb_frame.f_code.co_filename) != home:
        return None  # the model's, torch's or trellis-mv's own error: unchanged
    from ._registry import distribution_of

    known = distribution_of(type(agg))
    dists = [known] if known else importlib.metadata.packages_distributions().get(type(agg).__module__.split(".")[0]) or ["?"]
    name = getattr(agg, "name", type(agg).__name__)
    return AggregatorError(f"aggregator {name!r} (from distribution {', '.join(dists)}) raised {type(exc).__name__}: "
                           f"{exc} ({where}); report it to that distribution or choose another aggregator",
                           aggregator=name)


#: Devices on which a run's finiteness checks are read once at its end rather than at every step.
DEFERRED_DEVICES = frozenset({"cuda"})


def _check_prediction(agg: Aggregator, x_t: Any, pred: Any, where: str, deferred: list[tuple[Any, str]] | None = None
                      ) -> None:
    """The prediction's shape, now; that it is finite, now or (on a GPU inside a run: ``deferred``) when the run ends."""
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
    if not values.is_floating_point():
        return
    if deferred is not None and values.device.type in DEFERRED_DEVICES:
        deferred.append((torch.isfinite(values).all(), where))
    elif not bool(torch.isfinite(values).all()):
        raise _not_finite(agg, where)


def _not_finite(agg: Aggregator, where: str) -> AggregatorError:
    return AggregatorError(
        f"the prediction{where} holds NaN or Inf (aggregator {agg.name!r}); check the views, the sampler "
        "parameters and the model's dtype",
        aggregator=agg.name,
    )


def _check_finite_steps(agg: Aggregator, flags: list[tuple[Any, str]] | None) -> None:
    """Raise for the first step whose deferred finiteness flag is false (one read for the whole run)."""
    if not flags:
        return
    ok = torch.stack([f for f, _ in flags]).cpu().tolist()
    for good, (_, where) in zip(ok, flags, strict=True):
        if not good:
            raise _not_finite(agg, where)
