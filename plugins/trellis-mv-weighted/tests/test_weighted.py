import pytest
import torch
from trellis_mv_weighted import Weighted

import trellis_mv
from trellis_mv import AggregatorOptionError, patch_sampler
from trellis_mv.testing import AggregatorTests, make_problem


class TestWeighted(AggregatorTests):
    aggregator, distribution, options = Weighted, "trellis-mv-weighted", [{}, {"schedule": "front-early"}]


@pytest.mark.parametrize(
    "t, expected",
    [(1.0, [0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3]), (0.75, [0.375, 0.625 / 3, 0.625 / 3, 0.625 / 3]),
     (0.5, [0.25] * 4), (0.2, [0.25] * 4), (0.0, [0.25] * 4)],
)
def test_schedule_interpolates_normalised_knots(t, expected):
    agg = Weighted(schedule=[(0.0, [1, 1, 1, 1]), (1.0, [3, 1, 1, 1]), (0.5, [2, 2, 2, 2])])  # any order, any scale
    assert agg.weights_at(t, 4) == pytest.approx(expected)


def test_presets_work_for_any_number_of_views():
    early, late = Weighted(schedule="front-early"), Weighted(schedule="front-late")
    assert early.weights_at(1.0, 3) == pytest.approx([0.6, 0.2, 0.2])
    assert early.weights_at(0.3, 3) == pytest.approx([1 / 3] * 3)
    assert late.weights_at(0.0, 2) == pytest.approx([0.75, 0.25])
    assert late.weights_at(0.9, 2) == pytest.approx([0.5, 0.5])
    assert early.weights_at(0.8, 1) == [1.0]


def test_without_a_schedule_it_is_multidiffusion_with_the_patch_weights():
    problem = make_problem(num_views=3, strength=3.0, rescale=0.7)
    with patch_sampler(problem.sampler, "weighted", weights=[2.0, 1.0, 1.0]):
        ours = problem.run()
    with patch_sampler(problem.sampler, "multidiffusion", weights=[2.0, 1.0, 1.0]):
        reference = problem.run()
    torch.testing.assert_close(ours, reference)


def test_schedule_multiplies_the_patch_weights():
    problem = make_problem(num_views=3)
    with patch_sampler(problem.sampler, "weighted", schedule=[(1.0, [1, 1, 0]), (0.0, [1, 1, 0])],
                       weights=[1, 0, 1]) as patch:
        ours = problem.run()
    assert {v for r in patch.records for v in r.views} == {0}  # views of weight 0 are not evaluated
    with patch_sampler(problem.sampler, "single", view=0):
        reference = problem.run()
    torch.testing.assert_close(ours, reference)


def test_schedule_switches_views_at_the_scheduled_time():
    problem = make_problem(num_views=2, steps=10)
    schedule = [(1.0, [1, 0]), (0.55, [1, 0]), (0.45, [0, 1]), (0.0, [0, 1])]
    with patch_sampler(problem.sampler, "weighted", schedule=schedule) as patch:
        problem.run()
    used = [(round(r.t, 2), r.views) for r in patch.records]
    assert used == [(round(1 - k / 10, 2), (0,) if k < 5 else (1,) if k > 5 else (0, 1)) for k in range(10)]
    assert all(r.forwards == 1 for r in patch.records)  # the chosen views and the negative in one forward


@pytest.mark.parametrize(
    "options, option",
    [
        (dict(schedule=[(1.0, [1.0, -0.5]), (0.0, [1, 1])]), "schedule"),
        (dict(schedule=[(1.0, [1.0, float("nan")]), (0.0, [1, 1])]), "schedule"),
        (dict(schedule=[(1.0, [0, 0]), (0.0, [1, 1])]), "schedule"),
        (dict(schedule=[(1.0, "front"), (0.0, [1, 1])]), "schedule"),
        (dict(schedule=[(1.0, [True, 1]), (0.0, [1, 1])]), "schedule"),
        (dict(schedule=[(float("nan"), [1, 1]), (1.0, [1, 1]), (0.0, [1, 1])]), "schedule"),
        (dict(schedule="sideways"), "schedule"),
        (dict(schedule=[(1.0, [1, 1]), (0.2, [1, 1])]), "schedule"),
        (dict(schedule=[(1.0, [1, 1]), (0.0, [1, 1, 1])]), "schedule"),
        (dict(schedule=[(1.5, [1, 1]), (0.0, [1, 1])]), "schedule"),
        (dict(schedule=[(1.0, [1, 1]), (0.0, [1, -1])]), "schedule"),
        (dict(schedule=[(1.0, [1, 1]), (1.0, [1, 2]), (0.0, [1, 1])]), "schedule"),
        (dict(schedule=[1.0, 0.0]), "schedule"),
        (dict(schedule=42), "schedule"),
    ],
)
def test_bad_options_name_the_aggregator_and_the_option(options, option):
    with pytest.raises(AggregatorOptionError, match=rf"^weighted: option {option}") as info:
        trellis_mv.get_aggregator("weighted", **options)
    assert info.value.aggregator == "weighted"


def test_a_schedule_for_another_number_of_views_is_reported_at_the_first_step():
    problem = make_problem(num_views=3)
    with pytest.raises(AggregatorOptionError, match="option schedule gives 2 weights but this sampler call has 3 views"):
        with patch_sampler(problem.sampler, "weighted", schedule=[(1.0, [1, 2]), (0.0, [1, 1])]):
            problem.run()


def test_a_schedule_that_zeroes_every_patch_weighted_view_is_an_error():
    problem = make_problem(num_views=2)
    with pytest.raises(AggregatorOptionError, match="option schedule at t=1.000 gives weight 0 to every view"):
        with patch_sampler(problem.sampler, "weighted", schedule=[(1.0, [1, 0]), (0.0, [1, 0])], weights=[0, 1]):
            problem.run()
