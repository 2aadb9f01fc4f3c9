"""Property tests: a batch of objects with their own views gives each object what a run of it alone gives."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trellis_mv
from trellis_mv import AggregatorError, AggregatorOptionError, PatchError, ViewError, pad_views, patch_sampler
from trellis_mv import _tensors as T
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
from trellis_mv.testing import make_batch, make_problem

GUIDED = dict(guidance_strength=3.0, guidance_interval=(0.0, 1.0))


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["dense", "sparse"]),
    counts=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    name=st.sampled_from(["stochastic", "single"]),
    order=st.sampled_from(["cycle", "random"]),
    rescale=st.sampled_from([0.0, 0.7]),
    seed=st.integers(0, 2**16),
)
def test_selecting_a_batch_is_bitwise_each_object_alone(kind, counts, name, order, rescale, seed):
    batch = make_batch(counts=tuple(counts), kind=kind, rescale=rescale, steps=5, seed=seed)
    options = {"order": order, "seed": seed} if name == "stochastic" else {}
    make = lambda: trellis_mv.resolve(name, options=options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # stochastic: more views than steps
        together = batch.together(make())
        for b, got in enumerate(together):
            assert torch.equal(T.feats(got), T.feats(batch.alone(b, make())))


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["dense", "sparse"]),
    dialect=st.sampled_from(["trellis2", "trellis"]),
    counts=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_multidiffusion_batch_is_each_object_alone(kind, dialect, counts, weighted, seed):
    batch = make_batch(counts=tuple(counts), kind=kind, dialect=dialect, weighted=weighted, steps=4, seed=seed)
    for b, got in enumerate(batch.together(trellis_mv.resolve("multidiffusion"))):
        torch.testing.assert_close(T.feats(got), T.feats(batch.alone(b, trellis_mv.resolve("multidiffusion"))),
                                   rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(["dense", "sparse"]), n=st.integers(1, 4), b=st.integers(1, 3), seed=st.integers(0, 999))
def test_the_same_views_per_sample_cost_and_give_what_shared_views_do(kind, n, b, seed):
    problem = make_problem(kind=kind, num_views=n, num_samples=b, seed=seed)
    with patch_sampler(problem.sampler, "multidiffusion") as shared:
        expected = problem.run()
    with patch_sampler(problem.sampler, "multidiffusion", per_sample=True) as own:
        got = problem.run(cond=problem.cond.expand(b, *problem.cond.shape))
    torch.testing.assert_close(T.feats(got), T.feats(expected), rtol=1e-5, atol=1e-6)
    assert (own.model_calls, own.batch_rows) == (shared.model_calls, shared.batch_rows)


def test_shared_views_still_cost_one_forward_a_step():
    problem = make_problem(num_views=3, num_samples=2)
    with patch_sampler(problem.sampler, "multidiffusion", weights=[2, 1, 1]) as patch:
        problem.run()
    assert patch.model_calls == problem.kwargs["steps"] and patch.batch_rows == problem.kwargs["steps"] * 2 * 4


# -- errors before any model work -------------------------------------------------------------


def _run(cond, *, weights=None, cameras=None, neg=None, noise=2, aggregator="multidiffusion", **options):
    model = Counting()
    sampler = FlowEulerGuidanceIntervalSampler()
    with patch_sampler(sampler, aggregator, per_sample=True, weights=weights, cameras=cameras, **options):
        sampler.sample(model, torch.zeros(noise, 2, 3), cond, torch.zeros(1, 3, 2) if neg is None else neg, steps=2,
                       verbose=False, **GUIDED)
    return model


class Counting:
    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond, **kw):
        self.calls.append(T.batch_size(x))
        return x * 0.5


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(cond=torch.ones(3, 2, 3, 2)), PatchError, r"cond holds the views of 3 samples but the sampler draws 2"),
        (dict(cond=[torch.ones(3, 2)] * 2), ViewError, r"per_sample=True, cond must be a tensor \[B, N, \.\.\.\]"),
        (dict(cond=torch.ones(2, 2, 3, 2), weights=[1, 1]), ViewError, r"one list of N weights per sample"),
        (dict(cond=torch.ones(2, 2, 3, 2), weights=[[1, 1], [1, 1], [1, 1]]), ViewError, r"3 rows but .* 2 samples"),
        (dict(cond=torch.ones(2, 2, 3, 2), weights=[[0, 1], [1, 1]]), ViewError, r"sample 0 .* come first"),
        (dict(cond=torch.ones(2, 2, 3, 2), cameras=["front", "back"]), ViewError, r"one list per sample"),
        (dict(cond=torch.ones(2, 2, 3, 2), cameras=[["front"], ["a", "b", "c"]]), ViewError, r"sample 1 has 3"),
        (dict(cond=torch.ones(2, 2, 3, 2), neg=torch.rand(2, 2, 3, 2)), ViewError, r"differs between the views"),
        (dict(cond=torch.ones(2, 2, 3, 2), neg=torch.zeros(3, 3, 2)), ViewError, r"neither 1 nor the 2 samples"),
        (dict(cond=torch.ones(2, 2, 3, 2), weights=[[1, 1], [1, 0]], aggregator="single", view=1),
         AggregatorOptionError, r"sample 1: single: option view=1 but only 1 view"),
    ],
)
def test_bad_per_sample_views_are_refused_before_model_work(kwargs, error, message):
    model = Counting()
    with pytest.raises(error, match=message):
        model = _run(**kwargs)
    assert not model.calls


def test_shared_view_attributes_refuse_a_per_sample_step():
    class Old:
        name = "old"

        def __call__(self, step):
            return step.guide(step.fuse(step.predict(), step.weights.tolist()))

    with pytest.raises(AggregatorError, match=r"step.weights describes views shared .* read step.sample_weights"):
        _run(torch.ones(2, 2, 3, 2), aggregator=Old())


def test_pad_views_pads_with_zero_weight_views_at_the_end():
    cond, weights = pad_views([torch.ones(1, 3, 2), [torch.full((3, 2), 2.0), torch.full((1, 3, 2), 3.0)]])
    assert cond.shape == (2, 2, 3, 2) and weights == [[1.0, 0.0], [1.0, 1.0]]
    assert not cond[0, 1].any() and torch.equal(cond[1, 1], torch.full((3, 2), 3.0))
    with pytest.raises(ViewError, match="different shapes"):
        pad_views([torch.ones(1, 3, 2), torch.ones(1, 4, 2)])
