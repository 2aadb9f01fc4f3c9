"""What an aggregator sees at one denoising step, and the model evaluations it may ask for."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _tensors as T
from ._distributed import LocalRows
from ._errors import AggregatorError
from ._views import Views, camera_directions

__all__ = ["Step", "StepRecord"]


@dataclass
class StepRecord:
    """One call of the patched ``_inference_model``: which views it used and what it cost."""

    run: int
    step: int
    t: float
    views: tuple[int, ...]
    forwards: int
    rows: int


@dataclass
class _Counter:
    forwards: int = 0
    rows: int = 0
    views: set[int] = field(default_factory=set)


class Step:
    """One denoising step of a patched sampler, as handed to an :class:`~trellis_mv.Aggregator`.

    Attributes: ``x_t`` (the latent), ``t`` (float in ``[0, 1]``), ``index`` (0-based step
    in the current sampling run), ``num_steps`` (``None`` when the sampler does not say),
    ``run`` (how many sampling runs this patch has seen before this one), ``stage``,
    ``cond`` (``[N, ...]``), ``weights`` (``[N]``, summing to 1), ``cameras`` (one
    :class:`~trellis_mv.Camera` or None per view, in the adapter's object frame),
    ``num_views``, ``batch_size`` (samples in ``x_t``) and ``state`` (a dict private to this
    sampling run).

    The model is only ever evaluated through the methods below, which batch views, share
    the negative pass, honour the patch's ``max_batch`` and count every forward.
    """

    def __init__(
        self,
        *,
        sampler: Any,
        inference: Callable[..., Any],
        model: Any,
        x_t: Any,
        t: float,
        kwargs: dict[str, Any],
        views: Views,
        index: int,
        num_steps: int | None,
        run: int,
        stage: str | None,
        state: dict[str, Any],
        max_batch: int | None,
        counter: _Counter,
        diagnostics: dict[str, Any] | None = None,
        frame: Any = None,
        rows: Any = None,
    ) -> None:
        self.x_t = x_t
        self.t = float(t)
        self.index = index
        self.num_steps = num_steps
        self.run = run
        self.stage = stage
        self.state = state
        self.views = views
        self.cond = views.cond
        self.weights = views.weight_tensor
        self.cameras = views.cameras
        self.num_views = views.count
        self.batch_size = T.batch_size(x_t)
        self._sampler = sampler
        self._inference = inference
        self._model = model
        self._kwargs = kwargs
        self._max_batch = max_batch
        self._counter = counter
        self._diagnostics = diagnostics if diagnostics is not None else {}
        self._frame = frame
        self._rows = rows if rows is not None else LocalRows()
        self._plan: tuple[bool, bool, dict[str, Any]] | None = None
        self._neg: Any = None

    # -- what the sampler's guidance will ask for ---------------------------------------
    def _expand(self, row: torch.Tensor) -> torch.Tensor:
        return row.expand(self.batch_size, *row.shape[1:])

    def _chain_kwargs(self, neg: torch.Tensor | None) -> dict[str, Any]:
        kwargs = dict(self._kwargs)
        if "neg_cond" in kwargs:
            kwargs["neg_cond"] = neg
        return kwargs

    def _markers(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = self._expand(self.cond[:1])
        neg = self._expand(self.views.neg) if self.views.neg is not None else None
        return pos, neg

    def _ensure_plan(self) -> tuple[bool, bool, dict[str, Any]]:
        """Run the sampler's guidance once on placeholders to learn which branches it needs.

        This is exact for any sampler, whatever its dialect (TRELLIS.2's strength, interval
        and rescale; TRELLIS v1's ``cfg_*``) and costs a few element-wise operations.
        """
        if self._plan is None:
            pos, neg = self._markers()
            seen: dict[str, Any] = {"pos": False, "neg": False, "kwargs": {}}

            def recorder(x: Any, t_in: Any, c: Any, **mkw: Any) -> Any:
                seen["kwargs"] = mkw
                if c is pos:
                    seen["pos"] = True
                elif neg is not None and c is neg:
                    seen["neg"] = True
                return T.with_feats(x, torch.zeros_like(T.feats(x)))

            with torch.no_grad():
                self._inference(recorder, self.x_t, self.t, pos, **self._chain_kwargs(neg))
            self._plan = (seen["pos"], seen["neg"], seen["kwargs"])
        return self._plan

    @property
    def needs_negative(self) -> bool:
        """Whether the sampler's guidance uses the negative branch at this step."""
        return self._ensure_plan()[1]

    @property
    def needs_positive(self) -> bool:
        """Whether the sampler's guidance uses the conditional branch (false only at strength 0)."""
        return self._ensure_plan()[0]

    # -- model evaluations ---------------------------------------------------------------
    def _forward(self, conds: list[torch.Tensor]) -> list[Any]:
        """Evaluate the model on copies of ``x_t`` paired with each conditioning row.

        Where the rows are evaluated (here, or spread over a process group) is the patch's
        row strategy; ``max_batch`` caps the rows of each forward either way.
        """
        per_call = max(1, self._max_batch // self.batch_size) if self._max_batch else None
        return self._rows.evaluate(self, conds, per_call, self._forward_chunk)

    def _forward_chunk(self, chunk: list[torch.Tensor]) -> list[Any]:
        """One forward of ``len(chunk)`` copies of ``x_t``, one conditioning row each."""
        model_kwargs = self._ensure_plan()[2]
        b = self.batch_size
        k = len(chunk)
        x = T.repeat_batch(self.x_t, k)
        c = torch.cat([self._expand(row) for row in chunk])
        mkw = {
            key: T.repeat_batch(v, k)
            if (isinstance(v, torch.Tensor) or T.is_sparse(v)) and getattr(v, "shape", (None,))[0] == b
            else v
            for key, v in model_kwargs.items()
        }
        t_in = torch.full((k * b,), 1000 * self.t, dtype=torch.float32, device=c.device)
        y = self._model(x, t_in, c, **mkw)
        self._counter.forwards += 1
        self._counter.rows += k * b
        return T.split_batch(y, self.x_t, k)

    def predict(self, views: Iterable[int] | None = None) -> list[Any]:
        """The conditional prediction of each view (all views when ``views`` is None).

        Views are evaluated in as few forwards as ``max_batch`` allows; when the sampler's
        guidance will need the negative branch, it joins the same forward and is cached for
        :meth:`negative` and :meth:`guide`.

        :returns: one prediction per requested view, in the order requested.
        """
        idx = list(range(self.num_views)) if views is None else [int(i) for i in views]
        for i in idx:
            if not 0 <= i < self.num_views:
                raise IndexError(f"view {i} does not exist; this step has {self.num_views} views")
        rows = [self.cond[i : i + 1] for i in idx]
        with_neg = self._neg is None and self.views.neg is not None and self.needs_negative
        if with_neg:
            rows.append(self.views.neg)
        outs = self._forward(rows)
        if with_neg:
            self._neg = outs.pop()
        self._counter.views.update(idx)
        return outs

    def negative(self) -> Any:
        """The unconditional (negative) prediction, computed once per step."""
        if self._neg is None:
            if self.views.neg is None:
                raise AggregatorError("this sampler call has no neg_cond, so there is no negative branch")
            self._neg = self._forward([self.views.neg])[0]
        return self._neg

    def guide(self, pred: Any) -> Any:
        """Apply the sampler's own guidance to a fused conditional prediction.

        Runs the sampler's original ``_inference_model`` with a model that answers
        ``pred`` for the conditional branch and :meth:`negative` for the negative one, so
        strength, interval and rescale are honoured exactly as the sampler would, in its
        own dialect; at strength 1 no negative pass happens.
        """
        pos, neg = self._markers()

        def lookup(x: Any, t_in: Any, c: Any, **mkw: Any) -> Any:
            if c is pos:
                if pred is None:
                    raise AggregatorError("guide(None) but the sampler's guidance needs the conditional prediction")
                return pred
            if neg is not None and c is neg:
                return self.negative()
            raise AggregatorError("the sampler passed the model a conditioning the patch did not give it")

        return self._inference(lookup, self.x_t, self.t, pos, **self._chain_kwargs(neg))

    @property
    def model(self) -> Any:
        """The model the sampler was called with (e.g. to check which keywords it takes)."""
        return self._model

    def sampler_call(self, cond: torch.Tensor, *, neg: torch.Tensor | None = None, **model_kwargs: Any) -> Any:
        """What the unpatched sampler returns for this step with conditioning ``cond`` ``[1, ...]``.

        Guidance is the sampler's own; the conditioning and negative are repeated per sample.

        :param neg: a negative row ``[1, ...]`` to use instead of the shared one.
        :param model_kwargs: extra keywords for every model call of this step.
        """
        neg = self.views.neg if neg is None else neg
        kwargs = {**self._chain_kwargs(self._expand(neg) if neg is not None else None), **model_kwargs}
        return self._inference(self._counting_model, self.x_t, self.t, self._expand(cond), **kwargs)

    def select(self, view: int) -> Any:
        """Exactly the unpatched sampler's prediction with view ``view`` alone."""
        if not 0 <= view < self.num_views:
            raise IndexError(f"view {view} does not exist; this step has {self.num_views} views")
        self._counter.views.add(view)
        return self.sampler_call(self.cond[view : view + 1])

    def _counting_model(self, x: Any, t_in: Any, c: Any, **mkw: Any) -> Any:
        self._counter.forwards += 1
        self._counter.rows += T.batch_size(x)
        return self._model(x, t_in, c, **mkw)

    def to_xstart(self, pred: Any) -> Any:
        """The x0 (clean sample) prediction implied by a velocity prediction."""
        return self._sampler._pred_to_xstart(self.x_t, self.t, pred)

    def from_xstart(self, x_0: Any) -> Any:
        """The velocity prediction that implies the x0 prediction ``x_0``."""
        return self._sampler._xstart_to_pred(self.x_t, self.t, x_0)

    def fuse(self, preds: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        """Weighted sum of predictions (``step.weights`` by default); works on sparse latents."""
        w = self.views.weights if weights is None else tuple(float(v) for v in weights)
        if len(w) != len(preds):
            raise AggregatorError(f"fuse got {len(preds)} predictions but {len(w)} weights")
        return T.weighted_sum(list(preds), list(w))

    @property
    def view_directions(self) -> torch.Tensor:
        """Unit vectors from the object towards each view's camera in the latent's own axes, ``[N, 3]``.

        The axes are those of a sparse latent's ``coords[:, 1:]`` and of a dense latent's
        spatial dimensions; a view without a camera has a row of NaN. The adapter says how
        its object frame sits in its latent (``latent_frame``).
        """
        return camera_directions(self.cameras, self._frame)

    def record(self, key: str, value: Any) -> None:
        """Keep a diagnostic of this step (e.g. per-element view weights) on the patch.

        :attr:`Patch.diagnostics <trellis_mv.Patch>` holds, per key, the value recorded at the
        latest step; :func:`trellis_mv.generate` saves tensors recorded under keys such as
        ``"view_weights"`` (``[N, *latent]``) with the result.
        """
        if not isinstance(key, str) or not key:
            raise AggregatorError(f"record needs a non-empty string key; got key={key!r}")
        self._diagnostics[key] = value.detach() if isinstance(value, torch.Tensor) else value

    def __repr__(self) -> str:
        return (
            f"Step(stage={self.stage!r}, run={self.run}, index={self.index}, num_steps={self.num_steps}, "
            f"t={self.t:.4f}, num_views={self.num_views}, batch_size={self.batch_size})"
        )
