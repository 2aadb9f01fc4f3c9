"""Reference flow-matching Euler samplers that follow TRELLIS.2's sampler contract.

These classes are written from the contract of TRELLIS.2's
``trellis2.pipelines.samplers`` (and, for the ``Legacy*`` classes, TRELLIS v1's
``trellis.pipelines.samplers``), so that everything in trellis-mv (the proxy model, the
conformance kit, the tests) runs without TRELLIS.2 installed, against samplers whose
``_inference_model`` behaves exactly like the real ones:

* ``FlowEulerSampler._inference_model(model, x_t, t, cond=None, **kw)`` calls
  ``model(x_t, 1000 * t, cond, **kw)`` with ``t`` a float in ``[0, 1]``.
* the classifier-free guidance mixin (TRELLIS.2 dialect) takes ``neg_cond``,
  ``guidance_strength`` and ``guidance_rescale``: strength 1 is the conditional prediction
  alone, 0 the negative alone, otherwise ``g * pos + (1 - g) * neg``, then the optional
  rescale of the x0 prediction towards the std of the positive x0 (Lin et al. 2024,
  "Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4);
* the guidance-interval mixin sets the strength to 1 outside ``guidance_interval``;
* the TRELLIS v1 dialect uses ``cfg_strength`` and ``cfg_interval`` and the formula
  ``(1 + s) * pos - s * neg``, without rescale;
* the schedule is ``t_i = linspace(1, 0, steps + 1)`` warped by
  ``r * t / (1 + (r - 1) * t)`` (``r = rescale_t``) and the Euler step is
  ``x_prev = x_t - (t - t_prev) * v``.

>>> import torch
>>> sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
>>> model = lambda x, t, cond, **kw: x * 0.1 + cond.mean()
>>> out = sampler.sample(model, torch.randn(1, 4), cond=torch.ones(1, 3), neg_cond=torch.zeros(1, 3),
...                      steps=4, guidance_strength=3.0, guidance_interval=(0.0, 1.0), verbose=False)
>>> tuple(out.samples.shape), len(out.pred_x_0)
((1, 4), 4)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

__all__ = [
    "FlowEulerCfgSampler",
    "FlowEulerGuidanceIntervalSampler",
    "FlowEulerSampler",
    "LegacyFlowEulerCfgSampler",
    "LegacyFlowEulerGuidanceIntervalSampler",
    "timesteps",
]

Model = Callable[..., Any]


def timesteps(steps: int, rescale_t: float = 1.0) -> list[float]:
    """The ``steps + 1`` times from 1 to 0 that TRELLIS.2's Euler sampler visits.

    >>> [round(t, 3) for t in timesteps(4, rescale_t=3.0)]
    [1.0, 0.9, 0.75, 0.5, 0.0]
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got steps={steps!r}")
    if rescale_t <= 0:
        raise ValueError(f"rescale_t must be positive, got rescale_t={rescale_t!r}")
    seq = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    seq = rescale_t * seq / (1 + (rescale_t - 1) * seq)
    return seq.tolist()


def _batch(x: Any) -> int:
    return int(x.shape[0])


class FlowEulerSampler:
    """Euler sampler for a flow-matching (velocity-predicting) model.

    :param sigma_min: the minimum noise scale of the flow.
    """

    def __init__(self, sigma_min: float = 1e-5) -> None:
        self.sigma_min = sigma_min

    def _pred_to_xstart(self, x_t: Any, t: float, pred: Any) -> Any:
        return (1 - self.sigma_min) * x_t - (self.sigma_min + (1 - self.sigma_min) * t) * pred

    def _xstart_to_pred(self, x_t: Any, t: float, x_0: Any) -> Any:
        return ((1 - self.sigma_min) * x_t - x_0) / (self.sigma_min + (1 - self.sigma_min) * t)

    def _inference_model(self, model: Model, x_t: Any, t: float, cond: Any = None, **kwargs: Any) -> Any:
        t_in = torch.full((_batch(x_t),), 1000 * t, device=x_t.device, dtype=torch.float32)
        return model(x_t, t_in, cond, **kwargs)

    def sample_once(self, model: Model, x_t: Any, t: float, t_prev: float, cond: Any = None, **kwargs: Any) -> SimpleNamespace:
        """One Euler step from ``t`` to ``t_prev``."""
        pred_v = self._inference_model(model, x_t, t, cond, **kwargs)
        pred_x_0 = self._pred_to_xstart(x_t, t, pred_v)
        return SimpleNamespace(pred_x_prev=x_t - (t - t_prev) * pred_v, pred_x_0=pred_x_0)

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        noise: Any,
        cond: Any = None,
        steps: int = 50,
        rescale_t: float = 1.0,
        verbose: bool = True,
        tqdm_desc: str = "Sampling",
        **kwargs: Any,
    ) -> SimpleNamespace:
        """Integrate from ``noise`` at t=1 to a sample at t=0.

        :returns: a namespace with ``samples``, ``pred_x_t`` and ``pred_x_0`` (lists per step).
        """
        ts = timesteps(steps, rescale_t)
        sample = noise
        ret = SimpleNamespace(samples=None, pred_x_t=[], pred_x_0=[])
        pairs = list(itertools.pairwise(ts))
        if verbose:
            from tqdm.auto import tqdm

            pairs = tqdm(pairs, desc=tqdm_desc, leave=False)
        for t, t_prev in pairs:
            out = self.sample_once(model, sample, t, t_prev, cond, **kwargs)
            sample = out.pred_x_prev
            ret.pred_x_t.append(out.pred_x_prev)
            ret.pred_x_0.append(out.pred_x_0)
        ret.samples = sample
        return ret


class ClassifierFreeGuidanceSamplerMixin:
    """Classifier-free guidance in TRELLIS.2's dialect, with guidance rescale."""

    def _inference_model(
        self,
        model: Model,
        x_t: Any,
        t: float,
        cond: Any,
        neg_cond: Any,
        guidance_strength: float,
        guidance_rescale: float = 0.0,
        **kwargs: Any,
    ) -> Any:
        base = super()._inference_model  # type: ignore[misc]
        if guidance_strength == 1:
            return base(model, x_t, t, cond, **kwargs)
        if guidance_strength == 0:
            return base(model, x_t, t, neg_cond, **kwargs)
        pred_pos = base(model, x_t, t, cond, **kwargs)
        pred_neg = base(model, x_t, t, neg_cond, **kwargs)
        pred = guidance_strength * pred_pos + (1 - guidance_strength) * pred_neg
        if guidance_rescale > 0:
            x_0_pos = self._pred_to_xstart(x_t, t, pred_pos)  # type: ignore[attr-defined]
            x_0_cfg = self._pred_to_xstart(x_t, t, pred)  # type: ignore[attr-defined]
            std_pos = x_0_pos.std(dim=list(range(1, x_0_pos.ndim)), keepdim=True)
            std_cfg = x_0_cfg.std(dim=list(range(1, x_0_cfg.ndim)), keepdim=True)
            x_0_rescaled = x_0_cfg * (std_pos / std_cfg)
            x_0 = guidance_rescale * x_0_rescaled + (1 - guidance_rescale) * x_0_cfg
            pred = self._xstart_to_pred(x_t, t, x_0)  # type: ignore[attr-defined]
        return pred


class GuidanceIntervalSamplerMixin:
    """Guidance only for ``t`` inside ``guidance_interval`` (TRELLIS.2 dialect)."""

    def _inference_model(
        self,
        model: Model,
        x_t: Any,
        t: float,
        cond: Any,
        guidance_strength: float,
        guidance_interval: tuple[float, float],
        **kwargs: Any,
    ) -> Any:
        inside = guidance_interval[0] <= t <= guidance_interval[1]
        return super()._inference_model(  # type: ignore[misc]
            model, x_t, t, cond, guidance_strength=guidance_strength if inside else 1, **kwargs
        )


class FlowEulerCfgSampler(ClassifierFreeGuidanceSamplerMixin, FlowEulerSampler):  # type: ignore[misc]  # cooperative mixins narrow _inference_model on purpose
    """Euler sampler with classifier-free guidance (TRELLIS.2 dialect)."""

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        model: Model,
        noise: Any,
        cond: Any,
        neg_cond: Any,
        steps: int = 50,
        rescale_t: float = 1.0,
        guidance_strength: float = 3.0,
        verbose: bool = True,
        **kwargs: Any,
    ) -> SimpleNamespace:
        return super().sample(
            model, noise, cond, steps, rescale_t, verbose,
            neg_cond=neg_cond, guidance_strength=guidance_strength, **kwargs,
        )


class FlowEulerGuidanceIntervalSampler(GuidanceIntervalSamplerMixin, ClassifierFreeGuidanceSamplerMixin, FlowEulerSampler):  # type: ignore[misc]  # cooperative mixins narrow _inference_model on purpose
    """Euler sampler with classifier-free guidance inside an interval of t (TRELLIS.2 dialect).

    This is the sampler of all three TRELLIS.2 stages.
    """

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        model: Model,
        noise: Any,
        cond: Any,
        neg_cond: Any,
        steps: int = 50,
        rescale_t: float = 1.0,
        guidance_strength: float = 3.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        verbose: bool = True,
        **kwargs: Any,
    ) -> SimpleNamespace:
        return super().sample(
            model, noise, cond, steps, rescale_t, verbose,
            neg_cond=neg_cond, guidance_strength=guidance_strength,
            guidance_interval=guidance_interval, **kwargs,
        )


class _LegacyCfgMixin:
    def _inference_model(
        self, model: Model, x_t: Any, t: float, cond: Any, neg_cond: Any, cfg_strength: float, **kwargs: Any
    ) -> Any:
        pred = super()._inference_model(model, x_t, t, cond, **kwargs)  # type: ignore[misc]
        neg_pred = super()._inference_model(model, x_t, t, neg_cond, **kwargs)  # type: ignore[misc]
        return (1 + cfg_strength) * pred - cfg_strength * neg_pred


class _LegacyIntervalMixin:
    def _inference_model(
        self, model: Model, x_t: Any, t: float, cond: Any, neg_cond: Any,
        cfg_strength: float, cfg_interval: tuple[float, float], **kwargs: Any,
    ) -> Any:
        base = super()._inference_model  # type: ignore[misc]
        if cfg_interval[0] <= t <= cfg_interval[1]:
            pred = base(model, x_t, t, cond, **kwargs)
            neg_pred = base(model, x_t, t, neg_cond, **kwargs)
            return (1 + cfg_strength) * pred - cfg_strength * neg_pred
        return base(model, x_t, t, cond, **kwargs)


class LegacyFlowEulerCfgSampler(_LegacyCfgMixin, FlowEulerSampler):  # type: ignore[misc]  # cooperative mixins narrow _inference_model on purpose
    """Euler sampler with classifier-free guidance in TRELLIS v1's dialect (``cfg_strength``)."""

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self, model: Model, noise: Any, cond: Any, neg_cond: Any, steps: int = 50,
        rescale_t: float = 1.0, cfg_strength: float = 3.0, verbose: bool = True, **kwargs: Any,
    ) -> SimpleNamespace:
        return super().sample(
            model, noise, cond, steps, rescale_t, verbose, neg_cond=neg_cond, cfg_strength=cfg_strength, **kwargs
        )


class LegacyFlowEulerGuidanceIntervalSampler(_LegacyIntervalMixin, FlowEulerSampler):  # type: ignore[misc]  # cooperative mixins narrow _inference_model on purpose
    """Euler sampler with guidance inside ``cfg_interval``, in TRELLIS v1's dialect."""

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self, model: Model, noise: Any, cond: Any, neg_cond: Any, steps: int = 50,
        rescale_t: float = 1.0, cfg_strength: float = 3.0,
        cfg_interval: tuple[float, float] = (0.0, 1.0), verbose: bool = True, **kwargs: Any,
    ) -> SimpleNamespace:
        return super().sample(
            model, noise, cond, steps, rescale_t, verbose,
            neg_cond=neg_cond, cfg_strength=cfg_strength, cfg_interval=cfg_interval, **kwargs,
        )
