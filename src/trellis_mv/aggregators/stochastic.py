"""Selecting aggregators: one view per denoising step.

``stochastic`` is TRELLIS v1's multi-image mode: at step ``i`` of a sampling run the
sampler sees view ``i mod N`` (``order="cycle"``) or the ``i``-th entry of a seeded random
order in which every view appears once per N steps (``order="random"``). Each step costs
exactly one single-view step. ``single`` always uses one chosen view: the single-view
baseline, and the way to condition a stage on one view (e.g. the texture on the front).

With per-sample views each sample follows its own schedule over its own views (``N`` its
own view count), exactly as a run of that sample alone would.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .._errors import AggregatorOptionError
from .._spec import hookimpl
from .._step import Step

__all__ = ["Single", "Stochastic"]


class Stochastic:
    """One view per denoising step, cycling in view order or in a seeded random order."""

    name = "stochastic"
    fuses = True
    order_free = False

    def __init__(self, *, order: str = "cycle", seed: int = 0) -> None:
        if order not in ("cycle", "random"):
            raise AggregatorOptionError(
                f"stochastic: option order must be 'cycle' or 'random'; got order={order!r}", aggregator=self.name
            )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise AggregatorOptionError(f"stochastic: option seed must be an int; got seed={seed!r}",
                                        aggregator=self.name)
        self.order = order
        self.seed = seed

    def view_at(self, index: int, num_views: int, state: dict[str, Any]) -> int:
        """The view used at step ``index`` of a run (``state`` is the run's state)."""
        if self.order == "cycle":
            return index % num_views
        # one order per view count: samples with the same count follow the order a run of one would
        order, gen = state.setdefault(f"order of {num_views}", ([], torch.Generator().manual_seed(self.seed)))
        while len(order) <= index:
            order.extend(torch.randperm(num_views, generator=gen).tolist())
        return order[index]

    def __call__(self, step: Step) -> Any:
        counts = step.sample_num_views
        most = max(counts)
        if step.num_steps is not None and most > step.num_steps and not step.state.get("warned"):
            step.state["warned"] = True
            warnings.warn(
                f"stochastic: {most} views but only {step.num_steps} steps"
                f"{f' in stage {step.stage!r}' if step.stage else ''}: each step uses one view, so "
                f"{most - step.num_steps} view(s) will not be used. Raise the steps or use "
                "multidiffusion, which uses every view at every step.",
                UserWarning,
                stacklevel=2,
            )
        if not step.per_sample:
            return step.select(self.view_at(step.index, step.num_views, step.state))
        return step.select([self.view_at(step.index, n, step.state) for n in counts])

    def __repr__(self) -> str:
        return f"Stochastic(order={self.order!r}, seed={self.seed})"


class Single:
    """One chosen view at every step: the single-view baseline."""

    name = "single"
    fuses = True
    order_free = False

    def __init__(self, *, view: int = 0) -> None:
        if not isinstance(view, int) or isinstance(view, bool) or view < 0:
            raise AggregatorOptionError(f"single: option view must be a non-negative int; got view={view!r}",
                                        aggregator=self.name)
        self.view = view

    def check(self, *, num_views: int, cameras: tuple[Any, ...] = ()) -> None:
        """Refuse a view index beyond the views given."""
        if self.view >= num_views:
            raise AggregatorOptionError(
                f"single: option view={self.view} but only {num_views} view(s) were given (views count from 0)",
                aggregator=self.name,
            )

    def __call__(self, step: Step) -> Any:
        return step.select(self.view)

    def __repr__(self) -> str:
        return f"Single(view={self.view})"


@hookimpl
def register_aggregators() -> list[type]:
    return [Stochastic, Single]
