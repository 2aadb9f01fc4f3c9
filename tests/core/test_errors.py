"""Bad input: a clear error naming the problem, and the sampler left exactly as it was."""

import pytest
import torch

import trellis_mv
from trellis_mv import AggregatorError, AggregatorOptionError, PatchError, UnknownAggregatorError, ViewError, patch_sampler
from trellis_mv.testing import make_problem


def _run(problem, cond=None, neg=None, **patch_kwargs):
    sampler = problem.sampler
    before = dict(vars(sampler))
    try:
        with patch_sampler(sampler, patch_kwargs.pop("aggregator", "multidiffusion"), **patch_kwargs):
            sampler.sample(problem.model, problem.noise, problem.cond if cond is None else cond,
                           problem.neg_cond if neg is None else neg, verbose=False, **problem.kwargs)
    finally:
        assert vars(sampler) == before
    return problem.model.forwards


@pytest.mark.parametrize(
    "cond, neg, match",
    [
        (torch.zeros(0, 5, 8), None, "no views"),
        ([], None, "no views"),
        ([torch.zeros(1, 5, 8), torch.zeros(1, 6, 8)], None, r"shapes differ \(view 0: \(5, 8\), view 1: \(6, 8\)\)"),
        (torch.zeros(3, 5, 8), torch.zeros(2, 5, 8), "batch 2, which matches neither 1 nor the 3 views"),
        (torch.zeros(3, 5, 8), torch.zeros(1, 5, 9), r"neg_cond has shape \(1, 5, 9\).*\(5, 8\)"),
        (torch.zeros(2, 5, 8), torch.stack([torch.zeros(5, 8), torch.ones(5, 8)]), "2 different rows"),
        ("front.png", None, "expected a tensor with the views stacked"),
    ],
    ids=["empty-tensor", "empty-list", "shapes-differ", "neg-batch", "neg-shape", "neg-rows-differ", "not-a-tensor"],
)
def test_bad_conditioning_fails_before_any_model_call(cond, neg, match):
    problem = make_problem(num_views=3)
    with pytest.raises(ViewError, match=match):
        _run(problem, cond=cond, neg=neg)
    assert problem.model.forwards == 0


def test_a_list_of_views_is_stacked():
    problem = make_problem(num_views=3)
    rows = [problem.cond[i] for i in range(3)]
    with patch_sampler(problem.sampler, "multidiffusion"):
        a = problem.run(cond=rows)
    with patch_sampler(problem.sampler, "multidiffusion"):
        b = problem.run()
    assert torch.equal(a, b)


def test_neg_cond_with_one_identical_row_per_view_is_shared():
    problem = make_problem(num_views=3)
    _run(problem, neg=torch.zeros(3, 5, 8))


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1.0, 2.0], "weights has 2 entries but the conditioning holds 3 views"),
        ([1.0, -1.0, 1.0], "finite and non-negative"),
        ([0.0, 0.0, 0.0], "all zero"),
        ([1.0, float("nan"), 1.0], "finite and non-negative"),
        (["a", 1, 2], "sequence of numbers"),
    ],
)
def test_bad_weights(weights, match):
    problem = make_problem(num_views=3)
    with pytest.raises(ViewError, match=match):
        _run(problem, weights=weights)


def test_unknown_aggregator_lists_the_known_ones():
    problem = make_problem()
    with pytest.raises(UnknownAggregatorError, match=r"unknown aggregator 'multidifusion'.*multidiffusion.*stochastic"):
        _run(problem, aggregator="multidifusion")


def test_unknown_and_bad_options_name_the_aggregator():
    with pytest.raises(AggregatorOptionError, match=r"'stochastic' has no option 'ordre'; its options are: order, seed"):
        trellis_mv.get_aggregator("stochastic", ordre="random")
    with pytest.raises(AggregatorOptionError, match="order must be 'cycle' or 'random'"):
        trellis_mv.get_aggregator("stochastic", order="shuffled")
    with pytest.raises(AggregatorOptionError, match="options .* given with an aggregator instance"):
        with patch_sampler(make_problem().sampler, trellis_mv.get_aggregator("single"), view=1):
            pass


def test_bad_max_batch():
    with pytest.raises(PatchError, match="max_batch must be a positive integer"):
        _run(make_problem(), max_batch=0)


def test_not_an_aggregator():
    with pytest.raises(AggregatorError, match="registered name, .* instance with a `name` and `__call__"):
        _run(make_problem(), aggregator=42)


def test_aggregator_returning_the_wrong_shape_is_named():
    class Broken:
        name = "broken"

        def __call__(self, step):
            return step.predict()[0][:, :1]

    with pytest.raises(AggregatorError, match=r"aggregator 'broken' returned shape \(1, 1, 3, 3\).*\(1, 4, 3, 3\)"):
        _run(make_problem(), aggregator=Broken())


def test_single_view_index_out_of_range():
    with pytest.raises(AggregatorOptionError, match=r"view=5 but only 3 view\(s\)"):
        _run(make_problem(num_views=3), aggregator="single", view=5)


def test_stochastic_warns_when_views_outnumber_steps():
    problem = make_problem(num_views=5, steps=3)
    with pytest.warns(UserWarning, match="5 views but only 3 steps.*2 view\\(s\\) will not be used"):
        with patch_sampler(problem.sampler, "stochastic"):
            problem.run()
