"""``robust``: per latent element, a robust location of the views' predictions, so one bad view cannot drag it.

Every view's conditional prediction in one batched forward (the negative branch rides along
when guidance needs it); then, per element and channel, across the views of positive weight
(``step.weights``), one of (option ``method``):

* ``"median"``: the weighted median (the mean of the two middle values where the weights
  split exactly in half, e.g. four views of equal weight);
* ``"trimmed"``: the weighted mean after dropping the fraction ``trim`` of the weight at each
  end (with four equal views and ``trim=0.25``, the mean of the middle two);
* ``"huber"``: Huber's M-estimator (iteratively reweighted, from the median), with threshold
  ``delta`` times the sample's robust spread (1.4826 times the median absolute deviation over
  its views and elements): views within it count fully, views beyond count ``delta / |r|``.

The result is guided once with the sampler's own guidance. Since the x0 prediction is affine
in the velocity with the same slope for every view at one step, each of these commutes with
the conversion: the same rule applied to the views' x0 gives the same x0.

Cost: the predictions of all views in one forward, as ``multidiffusion``; a sort over the
views per element (``huber``: plus ten reweighting passes), negligible next to the model.

With two views every method is the weighted mean. A wrong photo among three or more views
moves the median by at most the spread of the others; the mean moves by a quarter of its
distance at N = 4.

>>> values = torch.tensor([[[0.0]], [[0.1]], [[0.2]], [[9.0]]])       # 4 views, 1 element: one wild
>>> w = robust_weights(values, torch.full((4,), 0.25), torch.zeros(1, dtype=torch.long), 1, method="median")
>>> (w * values).sum(0).item(), w[:, 0, 0].tolist()
(0.15000000596046448, [0.0, 0.5, 0.5, 0.0])
"""

from __future__ import annotations

import torch

from trellis_mv import AggregatorOptionError, Step, hookimpl

from ._elements import ElementAggregator, Elements, number_option

__all__ = ["METHODS", "Robust", "robust_weights"]

METHODS = ("median", "trimmed", "huber")


def _median_weights(values: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    _sorted_values, order = values.sort(dim=0)
    cum = prior.expand_as(values).gather(0, order).cumsum(0)
    last = values.shape[0] - 1
    eps = 1e-9
    lower = (cum < 0.5 - eps).sum(0, keepdim=True).clamp(max=last)
    upper = (cum <= 0.5 + eps).sum(0, keepdim=True).clamp(max=last)
    picked = torch.zeros_like(values).scatter_add_(0, lower, torch.full_like(lower, 0.5, dtype=values.dtype))
    picked.scatter_add_(0, upper, torch.full_like(upper, 0.5, dtype=values.dtype))
    return torch.zeros_like(values).scatter_(0, order, picked)


def _trimmed_weights(values: torch.Tensor, prior: torch.Tensor, trim: float) -> torch.Tensor:
    _, order = values.sort(dim=0)
    w_sorted = prior.expand_as(values).gather(0, order)
    hi = w_sorted.cumsum(0)
    lo = hi - w_sorted
    kept = (torch.minimum(hi, torch.full_like(hi, 1 - trim)) - torch.maximum(lo, torch.full_like(lo, trim))).clamp_min(0)
    kept = kept / kept.sum(0, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)
    return torch.zeros_like(values).scatter_(0, order, kept)


def _huber_weights(values: torch.Tensor, prior: torch.Tensor, sample_of_row: torch.Tensor, num_samples: int,
                   delta: float, iterations: int = 10) -> torch.Tensor:
    p = prior
    centre = (_median_weights(values, prior) * values).sum(0)
    dev = (values - centre).abs()
    # a view of prior 0 (a sample's padding) is no part of its sample's spread
    dev = torch.where(p.expand_as(values) > 0, dev, torch.full_like(dev, torch.nan))
    scale = torch.zeros(num_samples, dtype=values.dtype, device=values.device)
    for b in range(num_samples):
        rows = sample_of_row == b
        if bool(rows.any()):
            # the median absolute deviation; where most views agree exactly it is 0: then the mean one
            scale[b] = 1.4826 * dev[:, rows].nanmedian()
            if scale[b] == 0:
                scale[b] = 1.2533 * dev[:, rows].nanmean()
    s = (scale[sample_of_row] * delta).view(1, -1, 1)
    w = p.expand_as(values)
    for _ in range(iterations):
        r = (values - centre).abs()
        w = p * torch.where(r > s, s / r.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(r))
        w = torch.where(w.sum(0, keepdim=True) > 0, w, p.expand_as(values))  # every view agrees: their weights
        centre = (w * values).sum(0) / w.sum(0)
    return w / w.sum(0, keepdim=True)


def robust_weights(values: torch.Tensor, prior: torch.Tensor, sample_of_row: torch.Tensor, num_samples: int, *,
                   method: str = "median", trim: float = 0.25, delta: float = 1.345) -> torch.Tensor:
    """Per view, element and channel, the weight ``[V, R, E]`` (summing to 1 over views) of ``method``.

    :param values: the views' predictions ``[V, R, E]`` (``R`` elements of ``E`` channels).
    :param prior: the views' weights ``[V]``, summing to 1, or per element ``[V, R]`` (each
        element its own sample's; a view of weight 0 there gets weight 0).
    :param sample_of_row: ``[R]``, which sample each element belongs to (``huber``'s scale is per sample).
    """
    prior = prior.to(values)
    prior = prior.view(-1, 1, 1) if prior.ndim == 1 else prior.unsqueeze(-1)  # [V, 1 or R, 1]
    if method == "median":
        return _median_weights(values, prior)
    if method == "trimmed":
        return _trimmed_weights(values, prior, trim)
    return _huber_weights(values, prior, sample_of_row, num_samples, delta)


class Robust(ElementAggregator):
    """Per element, the median, trimmed mean or Huber estimate across views: one bad view cannot drag it."""

    name = "robust"

    def __init__(self, *, method: str = "median", trim: float = 0.25, delta: float = 1.345) -> None:
        if method not in METHODS:
            raise AggregatorOptionError(f"robust: option method must be one of {', '.join(METHODS)}; got method={method!r}",
                                        aggregator="robust")
        self.method = method
        self.trim = number_option("robust", "trim", trim, low=0.0, high=0.5, high_open=True,
                                  meaning=" (the fraction of weight dropped at each end)")
        self.delta = number_option("robust", "delta", delta, low=0.0, low_open=True,
                                   meaning=" (Huber's threshold in robust spreads)")

    def element_weights(self, step: Step, el: Elements) -> torch.Tensor:
        work = el.values.to(torch.promote_types(el.values.dtype, torch.float32))
        return robust_weights(work, el.prior, el.sample_of_row, step.batch_size, method=self.method, trim=self.trim,
                              delta=self.delta)

    def __repr__(self) -> str:
        return f"Robust(method={self.method!r}, trim={self.trim}, delta={self.delta})"


@hookimpl
def register_aggregators() -> list[type]:
    return [Robust]
