"""``weighted``: a weighted mean of the per-view predictions, the weights fixed or scheduled over t.

At every step: the conditional prediction of each view with a positive weight, in one
batched forward (with the negative branch when guidance needs it); their weighted mean;
the sampler's guidance applied once to it. The weight of view ``i`` at time ``t`` is

    ``w_i(t) = s_i(t) * p_i / sum_j s_j(t) * p_j``

where ``p`` are the user's weights per view, given to the patch
(``patch_sampler(..., weights=[...])``, or the ``weights`` of a pipeline run; uniform by
default), and ``s(t)`` is the option ``schedule``, a piecewise-linear function of the
sampler's time ``t`` (``t = 1`` is pure noise, the start of sampling; ``t = 0`` the end),
constant when no schedule is given. A view whose weight is 0 is not evaluated at all.
With per-sample views (``patch_sampler(..., per_sample=True)``) each sample's schedule is
the one for its own number of views, times its own weights; a view no sample weights is not
evaluated.

A schedule is a list of knots ``(t, [s_0, ..., s_{N-1}])`` whose times cover ``[0, 1]``
(one knot at 1, one at 0); each knot's weights are normalised, then interpolated linearly
in t. Presets, for any number of views:

``"front-early"``
    the first view weighs 3 times each other view at ``t = 1``, all are equal from ``t = 0.5``
    on: the front view decides the coarse shape, every view refines it.
``"front-late"``
    all views equal until ``t = 0.5``, the first view 3 times each other at ``t = 0``.

>>> import torch, trellis_mv
>>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
>>> agg = Weighted(schedule=[(1.0, [4, 1, 1, 1]), (0.5, [1, 1, 1, 1]), (0.0, [1, 1, 1, 1])])
>>> [round(w, 3) for w in agg.weights_at(0.75, 4)]   # halfway between [4,1,1,1]/7 and uniform
[0.411, 0.196, 0.196, 0.196]
>>> sampler, model = FlowEulerGuidanceIntervalSampler(), lambda x, t, cond, **kw: x - cond.mean()
>>> with trellis_mv.patch_sampler(sampler, "weighted", weights=[1, 1, 2, 2], schedule="front-early") as patch:
...     out = sampler.sample(model, torch.randn(1, 5), torch.randn(4, 3, 8), torch.zeros(1, 3, 8),
...                          steps=8, guidance_strength=3.0, verbose=False)
>>> patch.model_calls                                 # one forward per step: 4 views + the negative
8
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from trellis_mv import AggregatorOptionError, Step, hookimpl

__all__ = ["PRESETS", "Weighted"]

Knots = list[tuple[float, list[float]]]


def _front(at: float, n: int) -> Knots:
    front = [3.0] + [1.0] * (n - 1)
    flat = [1.0] * n
    return [(1.0, front if at == 1.0 else flat), (0.5, flat), (0.0, front if at == 0.0 else flat)]


#: Named schedules: each maps a number of views to knots ``[(t, weights), ...]``.
PRESETS: dict[str, Callable[[int], Knots]] = {
    "front-early": lambda n: _front(1.0, n),
    "front-late": lambda n: _front(0.0, n),
}


def _fail(option: str, message: str) -> AggregatorOptionError:
    return AggregatorOptionError(f"weighted: option {option} {message}", aggregator="weighted")


def _check_weights(values: Any, option: str) -> list[float]:
    """One finite, non-negative number per view, not all zero."""
    if isinstance(values, (str, bytes)) or (not isinstance(values, Sequence) and not hasattr(values, "tolist")):
        raise _fail(option, f"must be a sequence of non-negative numbers, one per view; got {values!r}")
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise _fail(option, f"must be a non-empty sequence of non-negative numbers, one per view; got {values!r}")
    floats = [float(v) for v in items]
    if any(not math.isfinite(v) or v < 0 for v in floats):
        raise _fail(option, f"must hold finite, non-negative numbers; got {floats!r}")
    if sum(floats) <= 0:
        raise _fail(option, f"gives every view weight 0 ({floats!r}); at least one view needs a positive weight")
    total = sum(floats)
    return [v / total for v in floats]


def _check_schedule(schedule: Any) -> Knots:
    """Knots sorted by t, each knot's weights normalised; the times cover [0, 1]."""
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence) or len(schedule) < 2:
        raise _fail("schedule", f"must be a preset ({', '.join(map(repr, PRESETS))}) or a list of at least two "
                                f"(t, weights) knots; got schedule={schedule!r}")
    knots: Knots = []
    for k, knot in enumerate(schedule):
        if not isinstance(knot, Sequence) or isinstance(knot, (str, bytes)) or len(knot) != 2:
            raise _fail("schedule", f"knot {k} must be a pair (t, weights); got {knot!r}")
        t, w = knot
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
            raise _fail("schedule", f"knot {k} has t={t!r}; each t must be a number in [0, 1] (1 = start of sampling)")
        knots.append((float(t), _check_weights(w, f"schedule (knot {k}, t={t})")))
    knots.sort(key=lambda kw: kw[0])
    times = [t for t, _ in knots]
    if times[0] != 0.0 or times[-1] != 1.0:
        raise _fail("schedule", f"must cover [0, 1], with one knot at t=1 and one at t=0; its knots span "
                                f"[{times[0]}, {times[-1]}]")
    if len(set(times)) != len(times):
        raise _fail("schedule", f"has two knots at the same t ({times}); give each t once")
    if len({len(w) for _, w in knots}) != 1:
        raise _fail("schedule", f"knots give different numbers of views ({[len(w) for _, w in knots]}); "
                                "give one weight per view in every knot")
    return knots


class Weighted:
    """Weighted mean of the per-view predictions, weights fixed or scheduled over t, guided once."""

    name = "weighted"
    fuses = True
    #: True on an instance without a schedule: a schedule's weights belong to view positions,
    #: so permuting the views (with the patch's weights) changes the result.
    order_free = False
    weighted = True

    def __init__(self, *, schedule: str | Sequence[Any] | None = None) -> None:
        self.preset: str | None = None
        self.knots: Knots | None = None
        if isinstance(schedule, str):
            if schedule not in PRESETS:
                raise _fail("schedule", f"names no preset: {schedule!r}; presets: {', '.join(map(repr, PRESETS))}")
            self.preset = schedule
        elif schedule is not None:
            self.knots = _check_schedule(schedule)
        self.order_free = schedule is None

    def weights_at(self, t: float, num_views: int) -> list[float]:
        """The schedule's weights at time ``t`` for ``num_views`` views, summing to 1 (patch weights apart)."""
        if self.preset is None and self.knots is None:
            return [1.0 / num_views] * num_views
        knots = self.knots if self.knots is not None else _check_schedule(PRESETS[str(self.preset)](num_views))
        t = min(max(float(t), 0.0), 1.0)
        for (t0, w0), (t1, w1) in itertools.pairwise(knots):
            if t0 <= t <= t1:
                a = (t - t0) / (t1 - t0)
                weights = [(1 - a) * u + a * v for u, v in zip(w0, w1)]
                if len(weights) != num_views:
                    raise _fail("schedule", f"gives {len(weights)} weights but this sampler call has {num_views} views; "
                                            "give one weight per view")
                return weights
        raise AssertionError("unreachable: the knots cover [0, 1]")

    def __call__(self, step: Step) -> Any:
        if not step.per_sample:
            raw = [s * p for s, p in zip(self.weights_at(step.t, step.num_views), step.weights.tolist())]
            total = sum(raw)
            if total <= 0:
                raise self._nothing_left(step, step.weights.tolist())
            keep = [i for i, w in enumerate(raw) if w > 0]
            return step.guide(step.fuse(step.predict(keep), [raw[i] / total for i in keep]))
        n = step.num_views
        at = {k: self.weights_at(step.t, k) for k in set(step.sample_num_views)}  # each sample: its own view count
        schedule = torch.tensor([at[k] + [0.0] * (n - k) for k in step.sample_num_views], dtype=torch.float64)
        per_sample = schedule * step.sample_weights
        totals = per_sample.sum(1, keepdim=True)
        empty = (totals[:, 0] <= 0).nonzero().flatten().tolist()  # host tensors: no device sync
        if empty:
            raise self._nothing_left(step, step.sample_weights[empty[0]].tolist(), sample=empty[0])
        kept = (per_sample > 0).any(0).nonzero().flatten().tolist()
        return step.guide(step.fuse(step.predict(kept), (per_sample / totals)[:, kept]))

    def _nothing_left(self, step: Step, weights: list[float], sample: int | None = None) -> AggregatorOptionError:
        who = "" if sample is None else f" for sample {sample}"
        return _fail("schedule", f"at t={step.t:.3f} gives weight 0{who} to every view the patch weights keep "
                     f"(patch weights {weights}); no view is left to follow")

    def __repr__(self) -> str:
        if self.preset is not None:
            return f"Weighted(schedule={self.preset!r})"
        return f"Weighted(schedule={self.knots!r})"


@hookimpl
def register_aggregators() -> list[type]:
    return [Weighted]
