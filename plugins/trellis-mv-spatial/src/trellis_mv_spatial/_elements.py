"""Per-element fusion shared by the spatial aggregators: views' predictions as ``[V, R, E]``.

A latent *element* is one spatial position of one sample of a dense latent (all its
channels), or one voxel row of a sparse latent. Every aggregator here derives from
:class:`ElementAggregator`: it predicts the kept views, computes weights per view and element
(``[V, R]``) or per view, element and channel (``[V, R, E]``), fuses with them, records the
same two diagnostics, so that any of them can be inspected the same way, and guides once.
A subclass gives only its weights (:meth:`ElementAggregator.element_weights`).

With per-sample views each element's prior is its own sample's weights: a sample's padding
views have prior 0 at its elements, and every rule here gives them weight 0 there.

>>> import torch, trellis_mv
>>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
>>> class Nearest(ElementAggregator):
...     "Per element, all weight on the view whose prediction is closest to the views' mean."
...     name = "nearest"
...     def element_weights(self, step, el):
...         far = (el.values - el.values.mean(0)).abs().sum(-1)                  # [V, R]
...         far = far.masked_fill(el.prior == 0, float("inf"))                   # a sample's padding never wins
...         return torch.nn.functional.one_hot(far.argmin(0), len(el.views)).T.double()
>>> sampler = FlowEulerGuidanceIntervalSampler()
>>> model = lambda x, t, cond, **kw: x - cond.mean(dim=(1, 2)).view(-1, 1, 1)
>>> latent = torch.randn(2, 4, 5)                                              # 2 samples, 4 channels, 5 positions
>>> with trellis_mv.patch_sampler(sampler, Nearest()) as patch:
...     out = sampler.sample(model, latent, torch.randn(3, 4, 8), torch.zeros(1, 4, 8), steps=3, verbose=False)
>>> tuple(patch.diagnostics["view_weights"].shape)      # [N, B, *spatial]: 3 views, 2 samples, 5 positions
(3, 2, 5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from trellis_mv import AggregatorOptionError, Step
from trellis_mv.sparse import feats, is_sparse, with_feats

__all__ = [
    "ElementAggregator",
    "Elements",
    "combine_known",
    "elements",
    "kept_views",
    "number_option",
    "record_view_diagnostics",
]


def number_option(aggregator: str, option: str, value: Any, *, low: float, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False, meaning: str = "") -> float:
    """Validate a numeric option, raising :class:`~trellis_mv.AggregatorOptionError` naming it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open or high == math.inf else "]")
        raise AggregatorOptionError(
            f"{aggregator}: option {option} must be a finite number in {lo}, {hi}{meaning}; got {option}={value!r}",
            aggregator=aggregator,
        )
    return float(value)


def kept_views(step: Step) -> list[int]:
    """The views some sample weights positively (a view of weight 0 for every sample is never evaluated)."""
    return [i for i, kept in enumerate((step.sample_weights > 0).any(0).tolist()) if kept]


@dataclass
class Elements:
    """The kept views' predictions of one step as ``values [V, R, E]``.

    :ivar views: which views (indices into the step's views) the ``V`` rows are.
    :ivar prior: their weights at each element ``[V, R]``, normalised over views: each
        element's sample's own weights (0 for a sample's padding views).
    :ivar sample_of_row: ``[R]``, the sample each element belongs to.
    :ivar spatial: the dense latent's spatial shape (``None`` for a sparse latent).
    """

    step: Step
    preds: list[Any]
    values: torch.Tensor
    views: list[int]
    prior: torch.Tensor
    sample_of_row: torch.Tensor
    spatial: tuple[int, ...] | None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.values.shape[1])

    def positions(self) -> torch.Tensor:
        """Each element's integer position ``[R, D]``: the voxel ``(x, y, z)`` or the dense grid index."""
        if self.spatial is None:
            return self.step.x_t.coords[:, 1:].long()
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in self.spatial], indexing="ij"), -1)
        return grid.reshape(-1, len(self.spatial)).repeat(self.step.batch_size, 1).to(self.values.device)

    def latent(self, fused: torch.Tensor) -> Any:
        """``[R, E]`` fused values back into a prediction shaped like ``step.x_t``."""
        like = self.preds[0]
        if self.spatial is None:
            return with_feats(like, fused.to(feats(like).dtype))
        b, c = self.step.batch_size, self.values.shape[-1]
        return fused.reshape(b, -1, c).movedim(-1, 1).reshape(like.shape).to(like.dtype)

    def per_element(self, a: torch.Tensor) -> torch.Tensor:
        """``[V, R]`` to the recorded layout: ``[V, B, *spatial]`` (dense) or ``[V, rows]`` (sparse)."""
        return a if self.spatial is None else a.reshape(a.shape[0], self.step.batch_size, *self.spatial)

    def fuse(self, a: torch.Tensor) -> Any:
        """Fuse with weights ``[V, R]`` or ``[V, R, E]`` (summing to 1 over views)."""
        if a.ndim == 2:
            a = a.unsqueeze(-1)
        return self.latent((a.to(self.values.dtype) * self.values).sum(0))


def elements(step: Step, preds: Sequence[Any], views: Sequence[int]) -> Elements:
    """Gather predictions of ``views`` into :class:`Elements`."""
    stacked = torch.stack([feats(p) for p in preds])
    v = stacked.shape[0]
    if is_sparse(step.x_t):
        values = stacked.reshape(v, stacked.shape[1], -1)
        sample_of_row = step.x_t.coords[:, 0].long()
        spatial = None
    else:
        b, c = stacked.shape[1], stacked.shape[2]
        spatial = tuple(int(s) for s in stacked.shape[3:])
        values = stacked.reshape(v, b, c, -1).movedim(2, -1).reshape(v, -1, c)
        sample_of_row = torch.arange(b, device=values.device).repeat_interleave(max(1, math.prod(spatial)))
    sample_of_row = sample_of_row.to(values.device)
    if step.per_sample:
        w = step.sample_weights[:, list(views)].to(values.device)  # [B, V]: each sample its own weights
        prior = (w / w.sum(1, keepdim=True))[sample_of_row].T
    else:
        w = step.weights[list(views)].to(torch.float64)
        prior = (w / w.sum()).to(values.device).view(-1, 1).expand(-1, values.shape[1])
    return Elements(step, list(preds), values, list(views), prior, sample_of_row, spatial)


def record_view_diagnostics(step: Step, el: Elements, a: torch.Tensor) -> None:
    """Record which view drove each element and how much the views disagreed.

    ``"view_weights"``: the fusion weight of every view (0 for views of weight 0) per element,
    averaged over channels: ``[N, B, *spatial]`` for a dense latent, ``[N, rows]`` for a sparse
    one. ``"disagreement"``: per element, the spread (root of the prior-weighted mean squared
    deviation, over views and channels) of the views' x0 predictions, in latent units:
    ``[B, *spatial]`` or ``[rows]``. Also ``"cameras"`` (the views' cameras; with per-sample
    views ``"sample_cameras"``, each sample's) and, for a sparse latent, ``"coords"`` (the
    voxels the rows stand for), so that the record is self-contained.
    """
    if a.ndim == 3:
        a = a.mean(-1)
    full = torch.zeros(step.num_views, a.shape[1], dtype=torch.float32, device=a.device)
    full[el.views] = a.float()
    x0 = torch.stack([feats(step.to_xstart(p)) for p in el.preds]).reshape(el.values.shape).double()
    prior = el.prior.to(x0.device).unsqueeze(-1)
    centre = (prior * x0).sum(0)
    spread = (prior * (x0 - centre) ** 2).sum(0).mean(-1).sqrt().float()
    step.record("view_weights", el.per_element(full))
    step.record("disagreement", el.per_element(spread[None])[0])
    if step.per_sample:  # each sample's own cameras
        step.record("sample_cameras", step.sample_cameras)
    else:
        step.record("cameras", tuple(step.cameras))
    if el.spatial is None:
        step.record("coords", step.x_t.coords)


def combine_known(prior: torch.Tensor, gain: torch.Tensor, known: torch.Tensor, floor: float) -> torch.Tensor:
    """Per-element weights ``[V, R]`` from gains in ``[0, 1]`` of the views whose camera is known.

    ``prior`` is ``[V]`` or per element ``[V, R]``; ``known`` (bool) is ``[V]`` or ``[V, R]``.
    Per element, a view without a camera keeps its prior share; the views with a camera share
    the rest in proportion to ``prior * max(gain, floor)``. Where every known view's term is 0
    (a floor of 0 and an element no camera sees) they keep their prior shares.

    >>> prior = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    >>> gain = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.3, 0.3]], dtype=torch.float64)
    >>> combine_known(prior, gain, torch.tensor([True, True, False]), 0.0)
    tensor([[0.7500, 0.5000],
            [0.0000, 0.2500],
            [0.2500, 0.2500]], dtype=torch.float64)
    """
    rows = gain.shape[1]
    prior = prior.view(-1, 1).expand(-1, rows) if prior.ndim == 1 else prior
    known = known.view(-1, 1).expand(-1, rows) if known.ndim == 1 else known
    tiny = torch.finfo(gain.dtype).tiny
    pk = torch.where(known, prior, torch.zeros_like(prior))
    term = torch.where(known, pk * gain.clamp(min=floor), torch.zeros_like(pk))
    total = term.sum(0, keepdim=True)
    mass = pk.sum(0, keepdim=True)  # the prior share of the known views, per element
    share = torch.where(total > 0, term / total.clamp_min(tiny), pk / mass.clamp_min(tiny))
    return torch.where(known, share * mass, prior)


class ElementAggregator:
    """The skeleton of a per-element aggregator; a subclass gives :meth:`element_weights`.

    Per step: the conditional predictions of the views some sample weights (one batched
    forward, the negative riding along), as :class:`Elements`; with one such view, its
    prediction guided (the single-view result); otherwise the subclass's weights per element,
    the per-element weighted mean, the diagnostics of :func:`record_view_diagnostics`, and the
    sampler's guidance once.
    """

    name: ClassVar[str]
    fuses = True
    order_free = True
    weighted = True

    def evaluate(self, step: Step, views: list[int]) -> Elements:
        """The views' predictions as :class:`Elements` (override to observe the forward, as ``attention`` does)."""
        return elements(step, step.predict(views), views)

    def element_weights(self, step: Step, el: Elements) -> torch.Tensor:
        """Weights ``[V, R]`` or ``[V, R, E]``, summing to 1 over views, 0 where ``el.prior`` is 0."""
        raise NotImplementedError(f"{type(self).__name__} must define element_weights(step, el)")

    def __call__(self, step: Step) -> Any:
        keep = kept_views(step)
        if len(keep) == 1:
            el = elements(step, step.predict(keep), keep)
            record_view_diagnostics(step, el, torch.ones(1, el.rows, dtype=torch.float64, device=el.values.device))
            return step.guide(el.preds[0])
        el = self.evaluate(step, keep)
        a = self.element_weights(step, el)
        record_view_diagnostics(step, el, a)
        return step.guide(el.fuse(a))
