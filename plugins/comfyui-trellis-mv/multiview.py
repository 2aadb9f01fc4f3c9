"""The multi-view hook on ComfyUI's sampler: a trellis-mv aggregator answers every model evaluation of a patched MODEL.

Two of ComfyUI's wrappers (``comfy/patcher_extension.py``) are added to a clone of the MODEL:

* ``sampler_sample`` brackets one sampling run: it reads the views (the entries of the positive
  conditioning) and opens :func:`trellis_mv.patch_sampler` on a :class:`ViewSampler` for the run, so the
  aggregator's per-run state, step count and checks are trellis-mv's own, and the patch is closed
  however the run ends;
* ``calc_cond_batch`` answers each evaluation: the aggregator sees a :class:`trellis_mv.Step` whose
  "model" evaluates view rows through ComfyUI's own ``calc_cond_batch`` (the views and the one shared
  negative in one batched forward, with ComfyUI's hooks, ControlNets and memory-based batch splitting),
  and returns the fused conditional prediction with the negative one; ComfyUI's CFG then guides once.

The views reach the aggregator as stand-in rows (the view's index, ``-1`` for the negative), which the
evaluation maps back to the views' ComfyUI conditioning, whatever a model keeps in it (Hunyuan3D-2's
``c_crossattn``; TRELLIS.2's ``c_crossattn`` and ``embeds`` and its per-stage constants).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import comfy.patcher_extension
import torch

import trellis_mv

__all__ = ["CAMERA", "KEY", "VIEW", "WEIGHT", "MultiView", "ViewSampler", "aggregator_choices", "view_entries"]

#: The key of this extension's wrappers on a MODEL.
KEY = "trellis_mv"
#: Keys a view's conditioning entry carries (set by the views node): its index, camera and weight.
VIEW, CAMERA, WEIGHT = "trellis_mv_view", "trellis_mv_camera", "trellis_mv_weight"

_WRAPPERS = (comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, comfy.patcher_extension.WrappersMP.CALC_COND_BATCH)


def aggregator_choices(registry: trellis_mv.Registry | None = None) -> list[str]:
    """One name per registered aggregator: its own name, or ``distribution/name`` where another claims it."""
    reg = registry or trellis_mv.get_registry()
    short = set(reg.names())
    return [i.name if i.name in short and reg.info(i.name) is i else i.qualified_name for i in reg.list()]


class ViewSampler:
    """What trellis-mv patches for one ComfyUI sampling run.

    Its ``_inference_model`` returns the conditional prediction and asks for the negative one, so that
    ``Step.guide`` hands back the fused conditional prediction for ComfyUI's CFG to guide once, and
    ``Step.predict`` evaluates the negative in the views' forward. ComfyUI's models predict the clean
    latent (x0), so the x0 conversions are the identity.
    """

    def sample(self, run: Callable[[], Any], *, cond: torch.Tensor, neg_cond: torch.Tensor | None, steps: int) -> Any:
        return run()

    def _inference_model(self, model: Any, x_t: Any, t: float, cond: Any, neg_cond: Any = None) -> Any:
        pred = model(x_t, 1000 * t, cond)
        if neg_cond is not None:
            model(x_t, 1000 * t, neg_cond)
        return pred

    def _pred_to_xstart(self, x_t: Any, t: float, pred: Any) -> Any:
        return pred

    def _xstart_to_pred(self, x_t: Any, t: float, x_0: Any) -> Any:
        return x_0


@dataclass
class _Run:
    sampler: ViewSampler
    count: int
    rows: torch.Tensor
    neg: torch.Tensor
    negative: Any = None


def view_entries(positive: Sequence[dict]) -> tuple[list[Any], list[float] | None]:
    """The cameras and weights the views' conditioning entries carry (``None`` weights: equal)."""
    cameras = [entry.get(CAMERA) for entry in positive]
    weights = [entry.get(WEIGHT) for entry in positive]
    return cameras, None if all(w is None for w in weights) else [1.0 if w is None else float(w) for w in weights]


class MultiView:
    """The wrappers of one multi-view MODEL: ``aggregator`` (a trellis-mv spec) over the positive's entries."""

    def __init__(self, aggregator: str, *, stage: str | None = None) -> None:
        self.aggregator = trellis_mv.resolve(aggregator)  # unknown names and bad options fail here, before sampling
        self.spec = aggregator
        self.stage = stage or None
        self._local = threading.local()

    def apply(self, model: Any) -> Any:
        """A clone of ``model`` (a ComfyUI ``ModelPatcher``) with the wrappers; ``model`` itself is untouched."""
        for kind in _WRAPPERS:
            if model.get_wrappers(kind, KEY):
                raise ValueError(
                    "this MODEL already went through a trellis-mv Multi-view node; connect the model from before "
                    "that node (one aggregator per sampling)"
                )
        patched = model.clone()
        patched.add_wrapper_with_key(_WRAPPERS[0], KEY, self.sampler_sample)
        patched.add_wrapper_with_key(_WRAPPERS[1], KEY, self.calc_cond_batch)
        return patched

    # comfy.patcher_extension wrapper: CFGGuider.inner_sample -> sampler.sample(guider, sigmas, ...)
    def sampler_sample(self, executor: Any, guider: Any, sigmas: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        positive = guider.conds.get("positive") or []
        if not positive:
            raise ValueError("trellis-mv: the positive conditioning is empty; connect the views (trellis-mv Views)")
        cameras, weights = view_entries(positive)
        n = len(positive)
        run = _Run(sampler=ViewSampler(), count=n, rows=torch.arange(n, dtype=torch.float32).view(n, 1, 1),
                   neg=torch.full((1, 1, 1), -1.0))
        with trellis_mv.patch_sampler(run.sampler, self.aggregator, weights=weights, cameras=cameras, stage=self.stage):
            previous = getattr(self._local, "run", None)
            self._local.run = run
            try:
                return run.sampler.sample(lambda: executor(guider, sigmas, *args, **kwargs),
                                          cond=run.rows, neg_cond=run.neg, steps=int(sigmas.shape[-1]) - 1)
            finally:
                self._local.run = previous

    # comfy.patcher_extension wrapper: comfy.samplers.calc_cond_batch(model, conds, x_in, timestep, model_options)
    def calc_cond_batch(self, executor: Any, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                        model_options: dict) -> list:
        run: _Run | None = getattr(self._local, "run", None)
        positive, negative, *others = conds
        if run is None or positive is None:  # not inside a sampling run of this MODEL: ComfyUI's own evaluation
            return executor(model, conds, x_in, timestep, model_options)
        if len(positive) != run.count:
            raise ValueError(f"trellis-mv: the positive conditioning had {run.count} views when sampling started and "
                             f"has {len(positive)} at sigma {float(timestep.flatten()[0]):.4f}; a node between the views "
                             "and the sampler changes the conditioning while it samples")
        b = int(x_in.shape[0])

        def evaluate(x: Any, t_in: Any, c: torch.Tensor, **unused: Any) -> torch.Tensor:
            if c.ndim != 3 or tuple(c.shape[1:]) != (1, 1) or c.shape[0] % b:
                raise ValueError(
                    f"trellis-mv: aggregator {self.aggregator.name!r} builds its own conditioning tensors, which ComfyUI's "
                    "conditioning cannot carry; in ComfyUI choose an aggregator that combines the views' predictions "
                    "(e.g. multidiffusion, stochastic, weighted, consensus, robust)"
                )
            rows = [int(c[j * b, 0, 0]) for j in range(c.shape[0] // b)]
            # ComfyUI labels each list by its index (transformer_options["cond_or_uncond"]) and models and patches
            # read 0 as conditional and 1 as unconditional: the negative (or nothing) takes index 1, views the rest
            views = [r for r in rows if r >= 0]
            lists = [[positive[views[0]]] if views else None, negative if -1 in rows else None]
            lists += [[positive[r]] for r in views[1:]]
            outs = executor(model, lists, x_in, timestep, model_options)
            by_view = iter([outs[0], *outs[2:]])
            answers = [outs[1] if r < 0 else next(by_view) for r in rows]
            if -1 in rows:
                run.negative = outs[1]
            return torch.cat(answers)

        run.negative = None
        t = float(timestep.flatten()[0])
        fused = run.sampler._inference_model(evaluate, x_in, t, run.rows, **({"neg_cond": run.neg} if negative else {}))
        if negative is None:
            uncond = torch.zeros_like(x_in)  # what ComfyUI's own calc_cond_batch returns where cfg is 1
        elif run.negative is not None:
            uncond = run.negative
        else:  # the aggregator never asked for guidance: evaluate the negative for ComfyUI's CFG
            uncond = executor(model, [negative], x_in, timestep, model_options)[0]
        return [fused, uncond, *(executor(model, others, x_in, timestep, model_options) if others else [])]
