import pytest
import torch
from trellis_mv_consistency import consensus
from trellis_mv_consistency.consensus import Consensus, consensus_weights

import trellis_mv
from trellis_mv import AggregatorOptionError, patch_sampler
from trellis_mv._tensors import feats
from trellis_mv.testing import AggregatorTests, make_problem


class TestConsensus(AggregatorTests):
    aggregator, distribution, options = Consensus, "trellis-mv-consistency", [{}, dict(center="mean", tau=2.0, min_weight=0.1)]


def outlier_problem(kind, seed):
    """Three views that nearly agree and a fourth whose conditioning is wild."""
    problem = make_problem(kind=kind, num_views=4, steps=8, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    base = problem.cond[:1]
    agreeing = base + 0.05 * torch.randn(3, *base.shape[1:], generator=g)
    wild = 3 * torch.randn(1, *base.shape[1:], generator=g)
    return problem, torch.cat([agreeing, wild])


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_outlying_view_is_down_weighted(kind, seed):
    problem, cond = outlier_problem(kind, seed)
    with patch_sampler(problem.sampler, "multidiffusion"):
        agreeing_only = feats(problem.run(cond=cond[:3]))
    with patch_sampler(problem.sampler, "multidiffusion"):
        mean_of_all = feats(problem.run(cond=cond))
    with patch_sampler(problem.sampler, "consensus"):
        ours = feats(problem.run(cond=cond))
    assert (ours - agreeing_only).norm() < 0.3 * (mean_of_all - agreeing_only).norm()


@pytest.mark.parametrize("center", ["median", "mean"])
def test_with_two_equal_views_it_is_multidiffusion(center):
    problem = make_problem(num_views=2, rescale=0.7)
    with patch_sampler(problem.sampler, "consensus", center=center):
        ours = problem.run()
    with patch_sampler(problem.sampler, "multidiffusion"):
        reference = problem.run()
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)  # equal up to rounding of (x_i - m)^2


def test_one_forward_per_step_for_all_views_and_the_negative():
    problem = make_problem(num_views=4, steps=6)
    with patch_sampler(problem.sampler, "consensus") as patch:
        problem.run()
    assert patch.model_calls == 6 and patch.batch_rows == 6 * 5


def test_weighted_median_follows_the_weights():
    x0 = torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1)
    for weights, median in [([0.6, 0.2, 0.2], 0.0), ([1 / 3] * 3, 1.0), ([0.2, 0.2, 0.6], 2.0), ([0.5, 0.5, 0.0], 0.5)]:
        assert consensus._weighted_median(x0, torch.tensor(weights)).item() == pytest.approx(median)


def test_min_weight_keeps_an_outlier_in_play():
    x0 = torch.tensor([0.0, 0.01, -0.01, 10.0]).view(4, 1, 1)
    w, rows = torch.full((4,), 0.25), torch.zeros(1, dtype=torch.long)
    hard = consensus_weights(x0, w, rows, 1)
    soft = consensus_weights(x0, w, rows, 1, min_weight=0.2)
    assert hard[3].item() < 1e-3 and soft[3].item() == pytest.approx(0.2 / (0.2 + 3 * 1.0), rel=0.05)
    assert torch.allclose(hard.sum(0), torch.ones(1)) and torch.allclose(soft.sum(0), torch.ones(1))


def test_scale_is_per_sample():
    # sample 0 disagrees a lot everywhere, sample 1 a little: each is judged against its own spread
    x0 = torch.tensor([[[0.0], [0.0]], [[0.1], [0.001]], [[10.0], [0.1]]])  # [V=3, R=2 samples, E=1]
    a = consensus_weights(x0, torch.full((3,), 1 / 3), torch.tensor([0, 1]), 2)
    torch.testing.assert_close(a[:, 0], a[:, 1], atol=0.02, rtol=0)


@pytest.mark.parametrize(
    "options, option",
    [
        (dict(tau=0), "tau"), (dict(tau=-1.0), "tau"), (dict(tau=float("nan")), "tau"), (dict(tau="1"), "tau"),
        (dict(tau=True), "tau"), (dict(min_weight=1.0), "min_weight"), (dict(min_weight=-0.1), "min_weight"),
        (dict(min_weight=float("nan")), "min_weight"), (dict(center="mode"), "center"),
    ],
)
def test_bad_options_name_the_aggregator_and_the_option(options, option):
    with pytest.raises(AggregatorOptionError, match=rf"^consensus: option {option} must") as info:
        trellis_mv.get_aggregator("consensus", **options)
    assert info.value.aggregator == "consensus"
