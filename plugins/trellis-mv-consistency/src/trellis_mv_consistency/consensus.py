"""``consensus``: fusion that down-weights, per latent element, views whose x0 disagrees with the others.

At every step: the conditional prediction ``v_i`` of each view of positive weight, in one
batched forward (with the negative branch when guidance needs it), and the x0 each implies,
``x_i = step.to_xstart(v_i)``. Per latent element (a dense entry, or a channel of a voxel):

* the centre ``m``: the weighted median of the ``x_i`` (``center="median"``, robust to one
  outlying view among three or more) or their weighted mean (``center="mean"``);
* the scale ``s``: per sample, the root of the weighted mean of ``(x_i - m)^2`` over views and
  elements, the typical disagreement of this sample at this step;
* the weight of view ``i``: ``w_i * g_i`` normalised over the views, with the gate
  ``g_i = min_weight + (1 - min_weight) * exp(-(x_i - m)^2 / (2 tau^2 s^2))``.

The fused prediction is ``sum_i a_i v_i`` with those per-element weights ``a_i``; since x0 is
affine in the velocity at fixed ``x_t`` and ``t``, this is also the same fusion of the x0
predictions. Then the sampler's guidance is applied once. A view where every view agrees
keeps its weight ``w_i``; two views of equal weight are equally far from their centre, so
their gates are equal and the result is ``multidiffusion``'s.
Smaller ``tau`` rejects disagreement harder; ``min_weight > 0`` never silences a view fully.
Views of weight 0 are not evaluated. Works on dense and sparse latents, and with per-sample
views (each sample's own weights; its padding views weigh 0 and do not enter its centre, scale
or result).

>>> import torch, trellis_mv
>>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
>>> sampler, model = FlowEulerGuidanceIntervalSampler(), lambda x, t, cond, **kw: x - cond.mean(dim=(1, 2)).view(-1, 1)
>>> views = torch.randn(4, 3, 8)
>>> views[3] += 50                                   # one view far from the others
>>> with trellis_mv.patch_sampler(sampler, "consensus", tau=0.5) as patch:
...     out = sampler.sample(model, torch.zeros(1, 5), views, torch.zeros(1, 3, 8),
...                          steps=4, guidance_strength=1.0, verbose=False).samples
>>> bool((out - views[:3].mean(dim=(1, 2)).median()).abs().max() < 1.0)   # follows the three that agree
True
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trellis_mv import AggregatorOptionError, Step, hookimpl
from trellis_mv.sparse import feats, is_sparse, with_feats

__all__ = ["Consensus", "consensus_weights"]


def _fail(option: str, message: str) -> AggregatorOptionError:
    return AggregatorOptionError(f"consensus: option {option} {message}", aggregator="consensus")


def _weighted_median(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per element over dim 0 of ``x`` (``[V, R, E]``), with view weights ``w`` (``[V]`` or ``[V, R, 1]``, sum 1).

    Where the cumulative weight reaches exactly 1/2 between two views, their mean; views of
    weight 0 never count.
    """
    w = w.view(-1, *([1] * (x.ndim - 1))) if w.ndim == 1 else w
    values, order = x.sort(dim=0)
    cum = w.expand_as(x).gather(0, order).cumsum(dim=0)
    eps = 1e-6
    last = x.shape[0] - 1
    lower = (cum < 0.5 - eps).sum(dim=0, keepdim=True).clamp(max=last)
    upper = (cum <= 0.5 + eps).sum(dim=0, keepdim=True).clamp(max=last)
    return ((values.gather(0, lower) + values.gather(0, upper)) / 2).squeeze(0)


def consensus_weights(
    x0: torch.Tensor,
    weights: torch.Tensor,
    sample_of_row: torch.Tensor,
    num_samples: int,
    *,
    tau: float = 0.5,
    min_weight: float = 0.0,
    center: str = "median",
) -> torch.Tensor:
    """Per-element fusion weights ``[V, R, E]`` (summing to 1 over views) for x0 predictions ``[V, R, E]``.

    ``R`` rows (dense: one per sample; sparse: one per voxel) of ``E`` elements;
    ``sample_of_row`` (``[R]``) says which sample each row belongs to; ``weights`` are the
    views' weights ``[V]``, or per row ``[V, R]`` (each sample its own; 0 leaves a view out).

    >>> x0 = torch.tensor([[[0.0, 1.0]], [[0.1, 1.0]], [[5.0, 1.0]]])    # 3 views, 1 row, 2 elements
    >>> a = consensus_weights(x0, torch.full((3,), 1 / 3), torch.zeros(1, dtype=torch.long), 1)
    >>> [round(v, 3) for v in a[:, 0, 0].tolist()], [round(v, 3) for v in a[:, 0, 1].tolist()]
    ([0.499, 0.501, 0.0], [0.333, 0.333, 0.333])
    """
    w = weights.to(x0.dtype)
    w = w.view(-1, 1, 1) if w.ndim == 1 else w.unsqueeze(-1)  # [V, 1 or R, 1]
    m = _weighted_median(x0, w) if center == "median" else (w * x0).sum(0)
    d2 = (x0 - m) ** 2
    per_row = (w * d2).sum(0).sum(-1)  # [R]
    total = torch.zeros(num_samples, dtype=d2.dtype, device=d2.device).index_add_(0, sample_of_row, per_row)
    count = torch.bincount(sample_of_row, minlength=num_samples).to(d2.dtype) * x0.shape[-1]
    s2 = (total / count.clamp_min(1))[sample_of_row].view(1, -1, 1)
    z = d2 / (2 * tau**2 * s2).clamp_min(torch.finfo(d2.dtype).tiny)
    log_gate = -z if min_weight == 0 else torch.logaddexp(
        torch.full_like(z, math.log(min_weight)), math.log1p(-min_weight) - z
    )
    return torch.softmax(w.log() + log_gate, dim=0)


class Consensus:
    """Per latent element, views whose x0 prediction disagrees with the others count less; guided once."""

    name = "consensus"
    fuses = True
    order_free = True
    weighted = True

    def __init__(self, *, tau: float = 0.5, min_weight: float = 0.0, center: str = "median") -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
            raise _fail("tau", f"must be a positive finite number (the tolerated disagreement, in units of the "
                               f"sample's typical disagreement); got tau={tau!r}")
        if isinstance(min_weight, bool) or not isinstance(min_weight, (int, float)) or not 0 <= min_weight < 1:
            raise _fail("min_weight", f"must be a number in [0, 1) (the smallest gate a view can get); "
                                      f"got min_weight={min_weight!r}")
        if center not in ("median", "mean"):
            raise _fail("center", f"must be 'median' or 'mean'; got center={center!r}")
        self.tau = float(tau)
        self.min_weight = float(min_weight)
        self.center = center

    def __call__(self, step: Step) -> Any:
        if step.per_sample:
            keep = (step.sample_weights > 0).any(0).nonzero().flatten().tolist()  # a host tensor: no device sync
        else:
            keep = [i for i, w in enumerate(step.weights.tolist()) if w > 0]
        preds = step.predict(keep)
        if len(preds) == 1:
            return step.guide(preds[0])
        like = preds[0]
        values = torch.stack([feats(p) for p in preds])  # [V, ...]
        x0 = torch.stack([feats(step.to_xstart(p)) for p in preds])
        rows = values.shape[1]
        if is_sparse(step.x_t):
            sample_of_row = step.x_t.coords[:, 0].long()
        else:
            sample_of_row = torch.arange(rows, device=values.device)
        work = torch.promote_types(x0.dtype, torch.float32)
        if step.per_sample:  # per row: the weights of its sample's views
            kept = step.sample_weights[:, keep].to(device=values.device, dtype=work)
            kept = (kept / kept.sum(1, keepdim=True))[sample_of_row].T
        else:
            kept = step.weights[keep].to(device=values.device, dtype=work)
            kept = kept / kept.sum()
        a = consensus_weights(
            x0.reshape(len(keep), rows, -1).to(work), kept, sample_of_row, step.batch_size,
            tau=self.tau, min_weight=self.min_weight, center=self.center,
        )
        fused = (a.to(values.dtype) * values.reshape(len(keep), rows, -1)).sum(0).reshape(values.shape[1:])
        return step.guide(with_feats(like, fused))

    def __repr__(self) -> str:
        return f"Consensus(tau={self.tau}, min_weight={self.min_weight}, center={self.center!r})"


@hookimpl
def register_aggregators() -> list[type]:
    return [Consensus]
