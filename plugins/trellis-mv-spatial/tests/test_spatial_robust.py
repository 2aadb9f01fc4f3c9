import pytest
import torch
from spatial_helpers import run_proxy
from trellis_mv_spatial.robust import METHODS, Robust, robust_weights

import trellis_mv
from trellis_mv import AggregatorOptionError, patch_sampler
from trellis_mv._tensors import feats
from trellis_mv.proxy import input_views, make_shape
from trellis_mv.testing import AggregatorTests, make_problem


class TestRobust(AggregatorTests):
    aggregator, distribution, options, max_examples = Robust, "trellis-mv-spatial", [{"method": m} for m in METHODS], 8


@pytest.mark.parametrize("options, option", [(dict(method="mean"), "method"), (dict(trim=0.5), "trim"),
                                             (dict(trim=-0.1), "trim"), (dict(delta=0), "delta"), (dict(delta="1"), "delta")])
def test_bad_options_name_the_option(options, option):
    with pytest.raises(AggregatorOptionError, match=rf"^robust: option {option} must"):
        trellis_mv.get_aggregator("robust", **options)


def test_weights_sum_to_one_and_follow_the_view_weights():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(5, 7, 3, generator=g)
    prior = torch.tensor([0.4, 0.1, 0.1, 0.2, 0.2])
    rows = torch.zeros(7, dtype=torch.long)
    for method in ("median", "trimmed", "huber"):
        a = robust_weights(values, prior, rows, 1, method=method)
        torch.testing.assert_close(a.sum(0), torch.ones(7, 3))
        assert (a >= 0).all()
    # a view holding more than half of the weight is the weighted median wherever it is
    heavy = robust_weights(values, torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1]), rows, 1, method="median")
    assert torch.equal(heavy[0], torch.ones(7, 3))
    # trimming nothing is the weighted mean
    torch.testing.assert_close(robust_weights(values, prior, rows, 1, method="trimmed", trim=0.0),
                               prior.view(-1, 1, 1).expand(5, 7, 3))


@pytest.mark.parametrize("method", ["median", "trimmed", "huber"])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_a_wild_view_does_not_drag_the_result(method, kind):
    problem = make_problem(kind=kind, num_views=4, steps=8, seed=3)
    g = torch.Generator().manual_seed(7)
    base = problem.cond[:1]
    agreeing, wild = base + 0.05 * torch.randn(3, *base.shape[1:], generator=g), 3 * torch.randn(1, *base.shape[1:], generator=g)
    cond = torch.cat([agreeing, wild])
    with patch_sampler(problem.sampler, "multidiffusion"):
        agreeing = feats(problem.run(cond=cond[:3]))
        mean_all = feats(problem.run(cond=cond))
    with patch_sampler(problem.sampler, "robust", method=method):
        ours = feats(problem.run(cond=cond))
    assert (ours - agreeing).norm() < 0.5 * (mean_all - agreeing).norm()


def _bad_views(shape, other):
    cams = ["front", "right", "back", "left"]
    views = input_views(shape.occupancy, shape.colors, cams)
    wrong = input_views(other.occupancy, other.colors, cams)[2]
    return views, {"wrong object": wrong, "blank": torch.zeros_like(views[2]), "mirrored": views[2].flip(-1).flip(-2)}


def test_on_the_proxy_a_bad_view_moves_robust_less_than_the_mean(proxy):
    """Each bad view replaces the back view; the distance (mean over colours and occupancy) from the
    clean four-view result, summed over three kinds of bad view, is smaller with robust than with the mean."""
    pipeline, shape, _ = proxy
    params = {s: {"steps": 4} for s in pipeline.samplers}
    views, bad = _bad_views(shape, make_shape(shape.seed + 1))
    moved = {"multidiffusion": 0.0, "robust": 0.0}
    for name in moved:
        clean, _ = run_proxy(pipeline, list(views), name, seed=0, params=params)
        for image in bad.values():
            hurt, _ = run_proxy(pipeline, [views[0], views[1], image, views[3]], name, seed=0, params=params)
            moved[name] += (clean.occupancy ^ hurt.occupancy).float().mean().item()
            moved[name] += (clean.colors - hurt.colors).abs().mean().item()
    assert moved["robust"] < moved["multidiffusion"]
