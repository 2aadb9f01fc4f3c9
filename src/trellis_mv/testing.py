"""A conformance kit for aggregator authors.

Two lines in a pytest file check an aggregator against the invariants every multi-view
run must hold, on a tiny reference model and the reference samplers of
:mod:`trellis_mv.samplers`, in both guidance dialects, with dense and sparse latents::

    from trellis_mv.testing import check_aggregator

    def test_conforms():
        check_aggregator("myagg")          # or the class, with options: check_aggregator(MyAgg, alpha=0.5)

Checked, with examples drawn by hypothesis:

1. the sampler is restored exactly after the run, also when the model raises mid-run;
2. the prediction is shaped like the latent, for 1 and 2 samples, dense and sparse;
3. with one view the patched run equals the unpatched one (guidance strength, interval and
   rescale included);
4. at guidance strength 1 no negative pass is made;
5. if the aggregator declares ``fuses = True``: N identical views equal one view;
6. if it declares ``order_free = True``: permuting views and weights together changes nothing;
7. if it declares ``weighted = True``: views of weight 0 change nothing;
8. a batch of objects with their own views (``patch_sampler(..., per_sample=True)``; view
   counts and cameras differing between samples, and weights if it declares both
   ``weighted`` and ``order_free``) gives each sample what a run of that sample alone gives.

A plugin's test file gets this check, the registry lookup and the doctests of the
aggregator's module from :class:`AggregatorTests` in two lines.

Needs ``hypothesis`` (``pip install "trellis-mv[testing]"``).
"""

from __future__ import annotations

import copy
import doctest
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from . import _tensors as T
from ._patch import patch_sampler
from ._registry import resolve
from ._spec import Aggregator
from ._views import pad_views
from .samplers import (
    FlowEulerGuidanceIntervalSampler,
    LegacyFlowEulerGuidanceIntervalSampler,
)
from .sparse import SparseTensor

try:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "trellis_mv.testing needs hypothesis; install it with: pip install 'trellis-mv[testing]'"
    ) from exc

__all__ = [
    "AggregatorTests",
    "Batch",
    "Problem",
    "TinyDenoiser",
    "batches",
    "check_aggregator",
    "make_batch",
    "make_problem",
    "problems",
]


class TinyDenoiser(torch.nn.Module):
    """A tiny deterministic velocity model ``model(x, 1000 * t, cond, **kw)``, dense or sparse.

    The conditioning is pooled non-linearly (``mean(tanh(cond @ W))`` over tokens), so the
    mean of per-view predictions differs from the prediction of the mean conditioning, as
    with a real model. Like TRELLIS.2's sparse attention it refuses a conditioning whose
    batch differs from the latent's. It counts its forwards, the rows it evaluated and the
    negative rows (all-zero conditioning) among them.

    >>> import torch
    >>> model = TinyDenoiser(channels=4, cond_dim=8)
    >>> model(torch.randn(2, 4, 3), torch.full((2,), 500.0), torch.randn(2, 5, 8)).shape
    torch.Size([2, 4, 3])
    """

    def __init__(self, channels: int = 4, cond_dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.channels = channels
        self.cond_dim = cond_dim
        self.w_x = torch.nn.Parameter(torch.randn(channels, channels, generator=g) * 0.4, requires_grad=False)
        self.w_c = torch.nn.Parameter(torch.randn(cond_dim, channels, generator=g), requires_grad=False)
        self.w_t = torch.nn.Parameter(torch.randn(channels, generator=g) * 0.5, requires_grad=False)
        self.forwards = 0
        self.rows = 0
        self.negative_rows = 0

    def _velocity(self, h: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # h [R, C] latent rows, t [R], c [R, C] pooled conditioning per row
        mixed = (h.unsqueeze(-1) * self.w_x).sum(-2)
        return torch.tanh(mixed + c) - 0.5 * h + (t / 1000).unsqueeze(-1) * self.w_t

    def forward(self, x: Any, t: torch.Tensor, cond: torch.Tensor, **kwargs: Any) -> Any:
        b = T.batch_size(x)
        if cond.shape[0] != b:
            raise ValueError(f"conditioning batch {cond.shape[0]} does not match latent batch {b}")
        if t.shape[0] != b:
            raise ValueError(f"time batch {t.shape[0]} does not match latent batch {b}")
        self.forwards += 1
        self.rows += b
        self.negative_rows += int((cond.flatten(1).abs().sum(1) == 0).sum())
        pooled = torch.tanh(cond @ self.w_c).mean(1)  # [B, C]
        if T.is_sparse(x):
            idx = x.coords[:, 0].long()
            return x.replace(self._velocity(x.feats, t[idx], pooled[idx]))
        h = x.movedim(1, -1)
        shape = h.shape
        rows = h.reshape(b, -1, self.channels)
        per = rows.shape[1]
        out = self._velocity(
            rows.reshape(-1, self.channels),
            t.repeat_interleave(per),
            pooled.repeat_interleave(per, 0),
        )
        return out.reshape(shape).movedim(-1, 1)


@dataclass
class Problem:
    """A reference sampling problem: sampler, model, noise, views and sampler parameters."""

    sampler: Any
    model: TinyDenoiser
    noise: Any
    cond: torch.Tensor
    neg_cond: torch.Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)

    def run(self, cond: torch.Tensor | None = None, sampler: Any = None) -> Any:
        """Sample and return the final latent."""
        sampler = sampler or self.sampler
        return sampler.sample(
            self.model, self.noise, self.cond if cond is None else cond, self.neg_cond, verbose=False, **self.kwargs
        ).samples

    def baseline(self) -> Any:
        """The unpatched single-view run (view 0), conditioning repeated per sample."""
        b = T.batch_size(self.noise)
        sampler = copy.deepcopy(self.sampler)
        return sampler.sample(
            self.model, self.noise, self.cond[:1].expand(b, *self.cond.shape[1:]),
            self.neg_cond.expand(b, *self.neg_cond.shape[1:]), verbose=False, **self.kwargs,
        ).samples


def _random_sparse(num_samples: int, channels: int, g: torch.Generator) -> SparseTensor:
    coords, feats = [], []
    for b in range(num_samples):
        n = int(torch.randint(3, 9, (1,), generator=g))
        xyz = torch.randperm(64, generator=g)[:n]
        coords.append(torch.stack([torch.full((n,), b), xyz // 16, (xyz // 4) % 4, xyz % 4], 1))
        feats.append(torch.randn(n, channels, generator=g))
    return SparseTensor(torch.cat(feats), torch.cat(coords).int(), batch_size=num_samples)


def make_problem(
    *,
    kind: str = "dense",
    dialect: str = "trellis2",
    num_views: int = 3,
    num_samples: int = 1,
    steps: int = 4,
    strength: float = 3.0,
    rescale: float = 0.0,
    interval: tuple[float, float] = (0.0, 1.0),
    rescale_t: float = 1.0,
    seed: int = 0,
    denoiser: type[TinyDenoiser] | None = None,
) -> Problem:
    """Build a reference problem.

    :param kind: ``"dense"`` (latent ``[B, 4, 3, 3]``) or ``"sparse"`` (a few voxels per sample).
    :param dialect: ``"trellis2"`` (``guidance_*``) or ``"trellis"`` (v1's ``cfg_*``, no rescale).
    :param denoiser: the model class, :class:`TinyDenoiser` or a subclass (e.g. one whose
        conditioning enters through cross-attention).
    """
    g = torch.Generator().manual_seed(seed)
    model = (denoiser or TinyDenoiser)(seed=seed)
    noise = (
        torch.randn(num_samples, model.channels, 3, 3, generator=g)
        if kind == "dense"
        else _random_sparse(num_samples, model.channels, g)
    )
    cond = torch.randn(num_views, 5, model.cond_dim, generator=g)
    neg = torch.zeros(1, 5, model.cond_dim)
    if dialect == "trellis2":
        sampler: Any = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
        kwargs = dict(guidance_strength=strength, guidance_interval=interval, guidance_rescale=rescale)
    elif dialect == "trellis":
        sampler = LegacyFlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
        kwargs = dict(cfg_strength=strength, cfg_interval=interval)
    else:
        raise ValueError(f"dialect must be 'trellis2' or 'trellis'; got dialect={dialect!r}")
    kwargs.update(steps=steps, rescale_t=rescale_t)
    return Problem(sampler, model, noise, cond, neg, kwargs)


def problems(
    num_views: int | None = None, *, kinds: tuple[str, ...] = ("dense", "sparse"),
    denoiser: type[TinyDenoiser] | None = None,
) -> st.SearchStrategy[Problem]:
    """A hypothesis strategy over reference problems (both dialects, guidance on and off)."""
    return st.builds(
        lambda kind, dialect, n, b, steps, strength, rescale, interval, rescale_t, seed: make_problem(
            kind=kind, dialect=dialect, num_views=n, num_samples=b, steps=steps,
            strength=strength if dialect == "trellis2" else strength - 1.0,
            rescale=rescale if dialect == "trellis2" else 0.0,
            interval=interval, rescale_t=rescale_t, seed=seed, denoiser=denoiser,
        ),
        st.sampled_from(kinds),
        st.sampled_from(["trellis2", "trellis"]),
        st.just(num_views) if num_views is not None else st.integers(1, 4),
        st.integers(1, 2),
        st.integers(1, 5),
        st.sampled_from([1.0, 3.0, 7.5]),
        st.sampled_from([0.0, 0.7]),
        st.sampled_from([(0.0, 1.0), (0.3, 0.8)]),
        st.sampled_from([1.0, 3.0]),
        st.integers(0, 2**16),
    )


@dataclass
class Batch:
    """Several objects, each with its own views, sampled together or one by one.

    :ivar problems: one single-sample :class:`Problem` per object (its own noise and views),
        sharing the sampler, the model and the sampler parameters.
    :ivar weights: per object, one weight per view.
    :ivar cameras: per object, one camera (or None) per view.
    """

    problems: list[Problem]
    weights: list[list[float]]
    cameras: list[list[Any]]

    def alone(self, b: int, aggregator: Aggregator) -> Any:
        """Object ``b`` sampled by itself with ``aggregator``."""
        problem = self.problems[b]
        with patch_sampler(problem.sampler, aggregator, weights=self.weights[b], cameras=self.cameras[b]):
            return problem.run()

    def together(self, aggregator: Aggregator) -> list[Any]:
        """Every object in one sampling run (``per_sample=True``); the result of each, in order."""
        first = self.problems[0]
        cond, weights = pad_views([p.cond for p in self.problems], self.weights)
        noise = _stack_samples([p.noise for p in self.problems])
        with patch_sampler(first.sampler, aggregator, per_sample=True, weights=weights, cameras=self.cameras):
            out = replace(first, noise=noise).run(cond=cond)
        return _split_samples(out, [p.noise for p in self.problems])


def _stack_samples(latents: list[Any]) -> Any:
    if not T.is_sparse(latents[0]):
        return torch.cat(latents)
    coords = [x.coords.clone() for x in latents]
    for b, c in enumerate(coords):
        c[:, 0] = b
    return SparseTensor(torch.cat([x.feats for x in latents]), torch.cat(coords), batch_size=len(latents))


def _split_samples(out: Any, like: list[Any]) -> list[Any]:
    if not T.is_sparse(out):
        return list(out.split(1))
    sizes = [int(x.feats.shape[0]) for x in like]
    return [x.replace(v) for x, v in zip(like, out.feats.split(sizes), strict=True)]


_CAMERAS = ("front", "back", "left", "right", "top", "30,20", None)


def make_batch(
    *, counts: tuple[int, ...] = (3, 1), weighted: bool = True, cameras: bool = True, **problem: Any
) -> Batch:
    """Objects with ``counts[b]`` views each; random positive weights and cameras when asked.

    ``problem`` are :func:`make_problem`'s parameters (``kind``, ``dialect``, ``strength``, ...,
    ``seed``); every object gets its own noise and views from the seed.

    >>> batch = make_batch(counts=(2, 1), seed=3)
    >>> [tuple(p.cond.shape) for p in batch.problems], len(batch.weights[0])
    ([(2, 5, 8), (1, 5, 8)], 2)
    """
    seed = int(problem.pop("seed", 0))
    problems = [make_problem(num_views=n, num_samples=1, seed=seed + 7919 * b, **problem) for b, n in enumerate(counts)]
    base = problems[0]
    problems = [replace(p, sampler=base.sampler, model=base.model, neg_cond=base.neg_cond) for p in problems]
    g = torch.Generator().manual_seed(seed)
    weights = [(torch.rand(n, generator=g, dtype=torch.float64) + 0.2).tolist() if weighted else [1.0] * n
               for n in counts]
    cams = [[_CAMERAS[int(i)] for i in torch.randint(len(_CAMERAS), (n,), generator=g)] if cameras else [None] * n
            for n in counts]
    return Batch(problems, weights, cams)


def batches(*, weighted: bool = True, denoiser: type[TinyDenoiser] | None = None) -> st.SearchStrategy[Batch]:
    """A hypothesis strategy over :class:`Batch` es: 2 or 3 objects of 1 to 3 views each, dense or sparse.

    :param weighted: random weights per view (else uniform).
    """
    return st.builds(
        lambda kind, dialect, counts, steps, strength, rescale, interval, seed: make_batch(
            counts=tuple(counts), weighted=weighted, kind=kind, dialect=dialect, steps=steps,
            strength=strength if dialect == "trellis2" else strength - 1.0,
            rescale=rescale if dialect == "trellis2" else 0.0, interval=interval, seed=seed, denoiser=denoiser,
        ),
        st.sampled_from(["dense", "sparse"]),
        st.sampled_from(["trellis2", "trellis"]),
        st.lists(st.integers(1, 3), min_size=2, max_size=3),
        st.integers(1, 4),
        st.sampled_from([1.0, 3.0, 7.5]),
        st.sampled_from([0.0, 0.7]),
        st.sampled_from([(0.0, 1.0), (0.3, 0.8)]),
        st.integers(0, 2**16),
    )


def _close(a: Any, b: Any, what: str, exact: bool = False) -> None:
    fa, fb = T.feats(a), T.feats(b)
    if exact:
        if not torch.equal(fa, fb):
            raise AssertionError(f"{what}: results differ (max abs diff {(fa - fb).abs().max().item():.3e}), "
                                 "expected bit-for-bit equality")
        return
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


# no shrinking: a failure is reported at once, with the problem that broke the invariant
_SETTINGS: dict[str, Any] = dict(
    deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None,
    phases=(Phase.explicit, Phase.generate),
)


def check_aggregator(
    aggregator: str | type | Aggregator, *, max_examples: int = 12, denoiser: type[TinyDenoiser] | None = None,
    **options: Any,
) -> None:
    """Check an aggregator against the multi-view invariants; raise ``AssertionError`` naming the broken one.

    :param aggregator: a registered name, an aggregator class, or an instance.
    :param max_examples: hypothesis examples per invariant.
    :param denoiser: the reference model class (default :class:`TinyDenoiser`), for an
        aggregator that needs more of a model (e.g. cross-attention to hook).
    :param options: the aggregator's options (with a name or a class).

    >>> check_aggregator("multidiffusion", max_examples=2)
    """
    make = _factory(aggregator, options)
    sample_agg = make()
    name = getattr(sample_agg, "name", repr(sample_agg))
    cfg = settings(max_examples=max_examples, **_SETTINGS)

    @cfg
    @given(problems(denoiser=denoiser))
    def restores_and_shapes(problem: Problem) -> None:
        sampler = problem.sampler
        before = dict(vars(sampler))
        with patch_sampler(sampler, make()) as patch:
            out = problem.run()
        if vars(sampler) != before:
            raise AssertionError(f"{name}: the sampler was not restored exactly after the run")
        if T.is_sparse(problem.noise):
            ok = T.is_sparse(out) and out.feats.shape == problem.noise.feats.shape
        else:
            ok = isinstance(out, torch.Tensor) and out.shape == problem.noise.shape
        if not ok or not torch.isfinite(T.feats(out)).all():
            raise AssertionError(f"{name}: the sample is misshapen or not finite")
        if patch.model_calls == 0:
            raise AssertionError(f"{name}: the model was never evaluated through the step")

        class Boom(Exception):
            pass

        calls = {"n": 0}
        real = problem.model

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 1:
                raise Boom
            return real(*args, **kwargs)

        try:
            with patch_sampler(sampler, make()):
                replace(problem, model=failing).run()  # type: ignore[arg-type]
        except Boom:
            pass
        if vars(sampler) != before:
            raise AssertionError(f"{name}: the sampler was not restored after the model raised mid-run")

    @cfg
    @given(problems(num_views=1, denoiser=denoiser))
    def one_view_equals_unpatched(problem: Problem) -> None:
        expected = problem.baseline()
        with patch_sampler(problem.sampler, make()):
            got = problem.run()
        _close(got, expected, f"{name}: one view vs the unpatched sampler ({_describe(problem)})")

    @cfg
    @given(problems(num_views=1, denoiser=denoiser))
    def no_negative_at_strength_one(problem: Problem) -> None:
        kwargs = dict(problem.kwargs)
        kwargs["guidance_strength" if "guidance_strength" in kwargs else "cfg_strength"] = (
            1.0 if "guidance_strength" in kwargs else 0.0
        )
        if "cfg_strength" in kwargs:
            return  # TRELLIS v1 always evaluates the negative inside its interval
        problem = replace(problem, kwargs=kwargs, cond=problem.cond.repeat(3, 1, 1))
        with patch_sampler(problem.sampler, make()):
            problem.run()
        if problem.model.negative_rows:
            raise AssertionError(f"{name}: {problem.model.negative_rows} negative rows evaluated at guidance strength 1")

    checks: list[Callable[[], None]] = [restores_and_shapes, one_view_equals_unpatched, no_negative_at_strength_one]

    if getattr(sample_agg, "fuses", False):

        @cfg
        @given(problems(num_views=1, denoiser=denoiser), st.integers(2, 4))
        def identical_views_equal_one(problem: Problem, n: int) -> None:
            with patch_sampler(problem.sampler, make()):
                single = problem.run()
            with patch_sampler(problem.sampler, make()):
                many = problem.run(cond=problem.cond.repeat(n, 1, 1))
            _close(many, single, f"{name}: {n} identical views vs one view ({_describe(problem)})")

        checks.append(identical_views_equal_one)

    if getattr(sample_agg, "weighted", False):

        @cfg
        @given(problems(denoiser=denoiser), st.data())
        def zero_weight_views_are_ignored(problem: Problem, data: st.DataObject) -> None:
            n = problem.cond.shape[0]
            keep = data.draw(st.integers(0, n - 1), label="kept view")
            weights = [1.0 if i == keep else 0.0 for i in range(n)]
            with patch_sampler(problem.sampler, make(), weights=weights):
                a = problem.run()
            with patch_sampler(problem.sampler, make()):
                b = problem.run(cond=problem.cond[keep : keep + 1])
            _close(a, b, f"{name}: views of weight 0 must not change the result ({_describe(problem)})")

        checks.append(zero_weight_views_are_ignored)

    if getattr(sample_agg, "order_free", False):

        @cfg
        @given(problems(denoiser=denoiser), st.data())
        def permutation_free(problem: Problem, data: st.DataObject) -> None:
            n = problem.cond.shape[0]
            weights = data.draw(st.lists(st.floats(0.1, 4.0), min_size=n, max_size=n), label="weights")
            perm = data.draw(st.permutations(list(range(n))), label="perm")
            with patch_sampler(problem.sampler, make(), weights=weights):
                a = problem.run()
            with patch_sampler(problem.sampler, make(), weights=[weights[i] for i in perm]):
                b = problem.run(cond=problem.cond[perm])
            _close(a, b, f"{name}: permuting views and weights together ({_describe(problem)})")

        checks.append(permutation_free)

    # unequal weights where the kit checks them in the shared case too (weighted and order-free)
    @cfg
    @given(batches(weighted=getattr(sample_agg, "weighted", False) and getattr(sample_agg, "order_free", False),
                   denoiser=denoiser))
    def batch_equals_separate_runs(batch: Batch) -> None:
        together = batch.together(make())
        for b, got in enumerate(together):
            counts = [int(p.cond.shape[0]) for p in batch.problems]
            _close(got, batch.alone(b, make()),
                   f"{name}: sample {b} of a batch of objects with their own views (view counts {counts}, weights, "
                   f"cameras) vs that object alone ({_describe(batch.problems[b])})")

    checks.append(batch_equals_separate_runs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. stochastic's "more views than steps"
        for check in checks:
            check()


def _describe(problem: Problem) -> str:
    kind = "sparse" if T.is_sparse(problem.noise) else "dense"
    params = ", ".join(f"{k}={v}" for k, v in problem.kwargs.items())
    return f"{kind}, {type(problem.sampler).__name__}, samples={T.batch_size(problem.noise)}, {params}"


def _factory(aggregator: str | type | Aggregator, options: dict[str, Any]) -> Callable[[], Aggregator]:
    """A fresh aggregator per call (names and classes), or the instance itself."""
    first = resolve(aggregator, options=options)
    return (lambda: resolve(aggregator, options=options)) if isinstance(aggregator, (str, type)) else (lambda: first)


class AggregatorTests:
    """The tests every aggregator distribution shares; a plugin's test file subclasses it in two lines::

        class TestWeighted(AggregatorTests):
            aggregator, distribution = Weighted, "trellis-mv-weighted"

    pytest then runs, for the class ``aggregator``: the conformance check
    (:func:`check_aggregator`) for each entry of ``options``; that the registry finds it by
    its ``name`` in ``distribution``; and the doctests of the module that defines it.
    Optional class attributes: ``options`` (a list of option dicts, default ``[{}]``),
    ``max_examples`` and ``denoiser`` (passed to :func:`check_aggregator`), and
    ``doctest_modules`` (more modules whose doctests run).
    """

    aggregator: ClassVar[Any]  # the aggregator class
    distribution: ClassVar[str]
    options: ClassVar[list[dict[str, Any]]] = [{}]
    max_examples: ClassVar[int] = 12
    denoiser: ClassVar[type[TinyDenoiser] | None] = None
    doctest_modules: ClassVar[tuple[Any, ...]] = ()

    def test_conforms(self) -> None:
        for options in self.options:
            check_aggregator(self.aggregator, max_examples=self.max_examples, denoiser=self.denoiser, **options)

    def test_is_registered_by_its_distribution(self) -> None:
        from ._registry import get_registry

        info = get_registry(refresh=True).info(self.aggregator.name)
        assert info.distribution == self.distribution, (
            f"{self.aggregator.name!r} comes from {info.distribution!r}, not {self.distribution!r}"
        )
        assert info.factory is self.aggregator, f"{self.aggregator.name!r} is registered as {info.factory!r}"

    def test_doctests(self) -> None:
        for module in (sys.modules[self.aggregator.__module__], *self.doctest_modules):
            result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
            assert result.failed == 0, f"{result.failed} of {result.attempted} doctests of {module.__name__} failed"
