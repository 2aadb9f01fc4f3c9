"""What an aggregator sees at one denoising step, and the model evaluations it may ask for."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _tensors as T
from ._distributed import LocalRows
from ._errors import AggregatorError
from ._views import Camera, Views, camera_directions

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
    """One denoising step of a patched sampler: everything an :class:`~trellis_mv.Aggregator` may read and call.

    While a sampler is patched (:func:`~trellis_mv.patch_sampler`), each call of its
    ``_inference_model`` becomes one call ``aggregator(step)``, which returns one prediction
    shaped like ``step.x_t``. The model is only ever evaluated through the methods below,
    which batch views, share the negative pass, honour the patch's ``max_batch`` and count
    every forward.

    **Where the run is**

    * ``x_t``: the latent, a tensor ``[B, ...]`` or a sparse tensor (``feats``, ``coords``
      with the sample in column 0); ``batch_size`` is ``B``, the samples drawn at once;
    * ``t``: the time, a float in ``[0, 1]`` (1 is pure noise);
    * ``index``: the 0-based step of this sampling run; ``num_steps``: its step count
      (``None`` when the sampler does not say); ``run``: how many sampling runs this patch
      saw before this one; ``stage``: the patch's stage label;
    * ``state``: a dict private to this sampling run, fresh for the next one: keep state
      there, not on ``self``, so one aggregator may serve several samplers and threads.

    **The views.** Either every sample shares the same N views (``per_sample`` false, the
    default), or each sample has its own (``per_sample`` true: ``patch_sampler(...,
    per_sample=True)``, e.g. different objects generated in one forward). View ``i`` always
    means column ``i``: one forward of view ``i`` pairs every sample's latent with its own
    ``i``-th view. A sample with fewer views than ``num_views`` is padded at the end with
    views of weight 0: their predictions (where a forward computes them for the other
    samples) must not enter its result.

    * ``num_views``: N, the views per sample (per sample: the most any sample has);
    * ``cond``: the conditioning, ``[N, ...]`` shared, ``[B, N, ...]`` per sample;
    * ``neg_cond``: the one negative row of each sample, ``[B, ...]``, or ``None``;
    * ``sample_weights``: ``[B, N]`` float64, each row summing to 1, 0 on padding;
    * ``sample_num_views``: per sample, how many views it has (its views of positive weight,
      which come first);
    * ``sample_cameras``: per sample, one :class:`~trellis_mv.Camera` or None per view (in
      the adapter's object frame); ``sample_directions``: ``[B, N, 3]`` unit vectors towards
      them in the latent's axes (NaN where unknown);
    * ``weights`` (``[N]``), ``cameras`` (N) and ``view_directions`` (``[N, 3]``): the same
      for shared views; reading them when ``per_sample`` is true raises
      :class:`~trellis_mv.AggregatorError` (read the ``sample_*`` ones, which work for both).

    **Model evaluations and helpers**

    * :meth:`predict` — the conditional prediction of each view (or a subset), batched;
    * :meth:`negative` — the negative prediction, at most once per step;
    * :meth:`guide` — the sampler's own guidance applied once to a fused prediction;
    * :meth:`select` — exactly the unpatched sampler's output with one view (per sample);
    * :meth:`sampler_call` — the unpatched sampler's output with conditioning you build;
    * :meth:`fuse` — a weighted sum of predictions, shared or per-sample weights;
    * :meth:`without_padding` — stacked per-view values with each sample's padding as NaN,
      for reductions across views that take no weights (``nanmedian``);
    * :meth:`to_xstart` / :meth:`from_xstart` — to and from the x0 prediction;
    * :attr:`needs_negative` / :attr:`needs_positive` — which branches the guidance uses;
    * :meth:`record` — keep a diagnostic on the patch; :attr:`model` — the model itself.

    A step whose guidance needs the negative branch alone (strength 0) never reaches the
    aggregator: the core answers it.

    >>> import torch, trellis_mv
    >>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
    >>> class Mean:
    ...     name = "mean"
    ...     def __call__(self, step):          # weighted mean of the views, per sample, guided once
    ...         return step.guide(step.fuse(step.predict(), step.sample_weights))
    >>> sampler, model = FlowEulerGuidanceIntervalSampler(), lambda x, t, cond, **kw: x - cond.mean(dim=(1, 2)).view(-1, 1)
    >>> cond, weights = trellis_mv.pad_views([torch.randn(3, 4, 8), torch.randn(1, 4, 8)])   # 2 objects
    >>> with trellis_mv.patch_sampler(sampler, Mean(), per_sample=True, weights=weights) as patch:
    ...     out = sampler.sample(model, torch.randn(2, 5), cond, torch.zeros(1, 4, 8), steps=4, verbose=False)
    >>> patch.model_calls, patch.batch_rows      # per step: one forward, 3 views and the negative of 2 samples
    (4, 32)
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
        self.per_sample = views.per_sample
        self.num_views = views.count
        self.batch_size = T.batch_size(x_t)
        self.neg_cond = views.neg_rows(self.batch_size)
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

    # -- the views -------------------------------------------------------------------------
    def _shared_only(self, name: str, instead: str) -> None:
        if self.per_sample:
            raise AggregatorError(
                f"step.{name} describes views shared by every sample, but this step's {self.batch_size} samples have "
                f"their own views (patch_sampler(..., per_sample=True)); read step.{instead}, which works for both"
            )

    @property
    def weights(self) -> torch.Tensor:
        """The shared views' weights ``[N]`` (float64, summing to 1); see :attr:`sample_weights`."""
        self._shared_only("weights", "sample_weights [B, N]")
        return self.views.weight_tensor

    @property
    def cameras(self) -> tuple[Camera | None, ...]:
        """The shared views' cameras, one :class:`~trellis_mv.Camera` or None per view; see :attr:`sample_cameras`."""
        self._shared_only("cameras", "sample_cameras")
        return self.views.cameras

    @property
    def sample_weights(self) -> torch.Tensor:
        """Per sample, its views' weights ``[B, N]`` (float64, rows summing to 1, 0 on a sample's padding)."""
        w = self.views.weight_tensor
        return w if self.per_sample else w.expand(self.batch_size, -1)

    @property
    def sample_num_views(self) -> tuple[int, ...]:
        """Per sample, how many views it has (its first ones; the rest is padding of weight 0)."""
        return self.views.counts if self.per_sample else (self.num_views,) * self.batch_size

    @property
    def sample_cameras(self) -> tuple[tuple[Camera | None, ...], ...]:
        """Per sample, one :class:`~trellis_mv.Camera` or None per view (None on padding)."""
        return self.views.cameras if self.per_sample else (self.views.cameras,) * self.batch_size

        # -- what the sampler's guidance will ask for ---------------------------------------
    def _expand(self, row: torch.Tensor) -> torch.Tensor:
        return row.expand(self.batch_size, *row.shape[1:])

    def _per_sample_rows(self, cond: torch.Tensor, what: str) -> torch.Tensor:
        """``cond`` as one row per sample: ``[1, ...]`` is repeated, ``[B, ...]`` kept."""
        if cond.shape[0] == self.batch_size:
            return cond
        if cond.shape[0] == 1:
            return self._expand(cond)
        raise AggregatorError(
            f"{what} has batch {cond.shape[0]}; give one row [1, ...] for every sample or one row per sample "
            f"[{self.batch_size}, ...]"
        )

    def _chain_kwargs(self, neg: torch.Tensor | None) -> dict[str, Any]:
        kwargs = dict(self._kwargs)
        if "neg_cond" in kwargs:
            kwargs["neg_cond"] = neg
        return kwargs

    def _markers(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.views.column(0, self.batch_size), self.neg_cond

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
        """Evaluate the model on copies of ``x_t`` paired with each conditioning ``[B, ...]`` (one row per sample).

        Where the rows are evaluated (here, or spread over a process group) is the patch's
        row strategy; ``max_batch`` caps the rows of each forward either way.
        """
        per_call = max(1, self._max_batch // self.batch_size) if self._max_batch else None
        return self._rows.evaluate(self, conds, per_call, self._forward_chunk)

    def _forward_chunk(self, chunk: list[torch.Tensor]) -> list[Any]:
        """One forward of ``len(chunk)`` copies of ``x_t``, one conditioning ``[B, ...]`` each."""
        model_kwargs = self._ensure_plan()[2]
        b = self.batch_size
        k = len(chunk)
        x = T.repeat_batch(self.x_t, k)
        c = torch.cat(chunk)
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
        :meth:`negative` and :meth:`guide`. With per-sample views, sample ``b`` of view ``i``'s
        prediction is conditioned on sample ``b``'s own view ``i`` (on its padding, where it has
        fewer views: give such entries weight 0, as :attr:`sample_weights` does).

        :returns: one prediction per requested view, shaped like ``x_t``, in the order requested.
        """
        idx = list(range(self.num_views)) if views is None else [int(i) for i in views]
        for i in idx:
            if not 0 <= i < self.num_views:
                raise IndexError(f"view {i} does not exist; this step has {self.num_views} views")
        b = self.batch_size
        rows = [self.views.column(i, b) for i in idx]
        with_neg = self._neg is None and self.neg_cond is not None and self.needs_negative
        if with_neg:
            assert self.neg_cond is not None
            rows.append(self.neg_cond)
        outs = self._forward(rows)
        if with_neg:
            self._neg = outs.pop()
        self._counter.views.update(idx)
        return outs

    def negative(self) -> Any:
        """The unconditional (negative) prediction, computed once per step."""
        if self._neg is None:
            if self.neg_cond is None:
                raise AggregatorError("this sampler call has no neg_cond, so there is no negative branch")
            self._neg = self._forward([self.neg_cond])[0]
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
        """What the unpatched sampler returns for this step with conditioning ``cond``.

        Guidance is the sampler's own. ``cond`` is one row ``[1, ...]`` repeated for every
        sample, or one row per sample ``[B, ...]``.

        :param neg: a negative ``[1, ...]`` or ``[B, ...]`` to use instead of :attr:`neg_cond`.
        :param model_kwargs: extra keywords for every model call of this step.
        """
        if neg is None:
            neg = self.neg_cond
        neg_rows = self._per_sample_rows(neg, "neg") if neg is not None else None
        kwargs = {**self._chain_kwargs(neg_rows), **model_kwargs}
        return self._inference(self._counting_model, self.x_t, self.t, self._per_sample_rows(cond, "cond"), **kwargs)

    def select(self, view: int | Sequence[int]) -> Any:
        """Exactly the unpatched sampler's prediction with one view alone.

        :param view: the view of every sample, or one view per sample (a sequence of ``B``
            ints, e.g. each sample's ``index % sample_num_views[b]``).
        """
        counts = self.sample_num_views
        picks = [view] * self.batch_size if isinstance(view, int) else [int(v) for v in view]
        if len(picks) != self.batch_size:
            raise AggregatorError(f"select got {len(picks)} views for {self.batch_size} samples; give one per sample")
        for b, (v, n) in enumerate(zip(picks, counts, strict=True)):
            if not 0 <= v < n:
                who = f"sample {b} has" if self.per_sample else "this step has"
                raise IndexError(f"view {v} does not exist; {who} {n} views")
        self._counter.views.update(picks)
        if isinstance(view, int):
            rows = self.cond[view : view + 1] if not self.per_sample else self.cond[:, view]
        else:
            key = ("select", tuple(picks))
            index = self.views.cache.get(key)
            if index is None:  # built once per run and pattern: no host-to-device copy per step
                device = self.cond.device
                index = (torch.arange(self.batch_size, device=device), torch.tensor(picks, device=device))
                self.views.cache[key] = index
            rows = self.cond[index] if self.per_sample else self.cond[index[1]]
        return self.sampler_call(rows)

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

    def fuse(self, preds: Sequence[Any], weights: Sequence[float] | torch.Tensor | None = None) -> Any:
        """Weighted sum of predictions; works on sparse latents.

        :param weights: one float per prediction for every sample, or per sample a tensor
            ``[B, len(preds)]``; by default the views' weights (``preds`` then holds every view).
        """
        if weights is None:
            weights = self.views.weights_on(T.feats(self.x_t).device) if self.per_sample else self.views.weights
        if isinstance(weights, torch.Tensor) and weights.ndim == 2:
            if tuple(weights.shape) != (self.batch_size, len(preds)):
                raise AggregatorError(f"fuse got {len(preds)} predictions for {self.batch_size} samples but weights of "
                                      f"shape {tuple(weights.shape)}; give [B, len(preds)]")
            return T.sample_weighted_sum(list(preds), weights)
        w = tuple(float(v) for v in weights)
        if len(w) != len(preds):
            raise AggregatorError(f"fuse got {len(preds)} predictions but {len(w)} weights")
        return T.weighted_sum(list(preds), list(w))

    def without_padding(self, values: torch.Tensor, views: Sequence[int] | None = None) -> torch.Tensor:
        """Stacked per-view values with each sample's padding views set to NaN.

        ``values`` is ``[V, ...]``: the ``feats`` (values) of the predictions of ``views``
        (all views when None) stacked on dim 0, as ``torch.stack([...])`` gives them. With
        per-sample views, the entries of a sample's padding become NaN, so that NaN-ignoring
        reductions over dim 0 (``nanmedian``, ``nanquantile``, ``nanmean``) use each sample's
        own views only; with shared views ``values`` is returned as it is.
        """
        if not self.per_sample:
            return values
        idx = tuple(range(self.num_views)) if views is None else tuple(int(i) for i in views)
        key = ("padding", idx)
        pad = self.views.cache.get(key)
        if pad is None:  # [V, B] on the device, once per run and subset
            pad = (self.views.weight_tensor[:, list(idx)] == 0).T.to(values.device)
            self.views.cache[key] = pad
        if T.is_sparse(self.x_t):
            pad = pad[:, self.x_t.coords[:, 0].long()]
        pad = pad.reshape(*pad.shape, *([1] * (values.ndim - 2)))
        return values.masked_fill(pad, float("nan"))

    @property
    def view_directions(self) -> torch.Tensor:
        """Unit vectors from the object towards each shared view's camera in the latent's own axes, ``[N, 3]``.

        The axes are those of a sparse latent's ``coords[:, 1:]`` and of a dense latent's
        spatial dimensions; a view without a camera has a row of NaN. The adapter says how
        its object frame sits in its latent (``latent_frame``). See :attr:`sample_directions`.
        """
        self._shared_only("view_directions", "sample_directions [B, N, 3]")
        return camera_directions(self.views.cameras, self._frame)

    @property
    def sample_directions(self) -> torch.Tensor:
        """Per sample, :attr:`view_directions` of its own views, ``[B, N, 3]`` (NaN rows where unknown)."""
        key = ("directions", id(self._frame))
        out = self.views.cache.get(key)
        if out is None:
            if self.per_sample:
                out = torch.stack([camera_directions(cams, self._frame) for cams in self.views.cameras])
            else:
                out = camera_directions(self.views.cameras, self._frame).unsqueeze(0)
            self.views.cache[key] = out
        return out if self.per_sample else out.expand(self.batch_size, -1, -1)

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
