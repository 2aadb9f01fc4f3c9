"""Guidance applied once, to the fused prediction, exactly as the sampler would (both dialects)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trellis_mv import PatchError, patch_sampler
from trellis_mv import _tensors as T
from trellis_mv.samplers import (
    FlowEulerCfgSampler,
    FlowEulerGuidanceIntervalSampler,
    FlowEulerSampler,
    LegacyFlowEulerCfgSampler,
    LegacyFlowEulerGuidanceIntervalSampler,
)
from trellis_mv.testing import TinyDenoiser, make_problem


def _by_hand(model, sampler, x, t, cond, neg, weights, g, interval, rescale, dialect):
    """DESIGN.md's formula, written out: mean of per-view predictions, then guidance once."""
    b = T.batch_size(x)
    t_in = torch.full((b,), 1000 * t)
    preds = [model(x, t_in, cond[i : i + 1].expand(b, -1, -1)) for i in range(cond.shape[0])]
    pos = preds[0] * weights[0]
    for w, p in zip(weights[1:], preds[1:]):
        pos = pos + w * p
    if not interval[0] <= t <= interval[1]:
        return pos
    neg_pred = model(x, t_in, neg.expand(b, -1, -1))
    if dialect == "trellis":
        return (1 + g) * pos - g * neg_pred
    if g == 1:
        return pos
    pred = g * pos + (1 - g) * neg_pred
    if rescale > 0:
        x0_pos = sampler._pred_to_xstart(x, t, pos)
        x0_cfg = sampler._pred_to_xstart(x, t, pred)
        dims = list(range(1, T.feats(x0_pos).ndim)) if not T.is_sparse(x0_pos) else None
        if dims is None:
            std_pos, std_cfg = x0_pos.std(keepdim=True), x0_cfg.std(keepdim=True)
        else:
            std_pos, std_cfg = x0_pos.std(dim=dims, keepdim=True), x0_cfg.std(dim=dims, keepdim=True)
        x0 = rescale * (x0_cfg * (std_pos / std_cfg)) + (1 - rescale) * x0_cfg
        pred = sampler._xstart_to_pred(x, t, x0)
    return pred


@given(
    kind=st.sampled_from(["dense", "sparse"]),
    dialect=st.sampled_from(["trellis2", "trellis"]),
    n=st.integers(1, 4),
    b=st.integers(1, 3),
    t=st.floats(0.05, 1.0),
    g=st.sampled_from([1.0, 3.0, 7.5]),
    rescale=st.sampled_from([0.0, 0.5, 1.0]),
    interval=st.sampled_from([(0.0, 1.0), (0.4, 0.9)]),
    raw_weights=st.lists(st.floats(0.05, 3.0), min_size=4, max_size=4),
    seed=st.integers(0, 1000),
)
def test_multidiffusion_equals_the_formula(kind, dialect, n, b, t, g, rescale, interval, raw_weights, seed):
    problem = make_problem(kind=kind, dialect=dialect, num_views=n, num_samples=b, seed=seed)
    sampler, model, x = problem.sampler, problem.model, problem.noise
    weights = [w / sum(raw_weights[:n]) for w in raw_weights[:n]]
    if dialect == "trellis2":
        kwargs = dict(guidance_strength=g, guidance_interval=interval, guidance_rescale=rescale)
    else:
        kwargs = dict(cfg_strength=g, cfg_interval=interval)
    with patch_sampler(sampler, "multidiffusion", weights=raw_weights[:n]):
        got = sampler._inference_model(model, x, t, problem.cond, neg_cond=problem.neg_cond, **kwargs)
    want = _by_hand(model, sampler, x, t, problem.cond, problem.neg_cond, weights, g, interval,
                    rescale if dialect == "trellis2" else 0.0, dialect)
    torch.testing.assert_close(T.feats(got), T.feats(want), rtol=1e-5, atol=1e-6)


@given(n=st.integers(1, 6), b=st.integers(1, 3), g=st.sampled_from([1.0, 3.0]), t=st.floats(0.0, 1.0))
def test_one_forward_per_step_and_no_negative_at_strength_one(n, b, g, t):
    problem = make_problem(num_views=n, num_samples=b)
    model = TinyDenoiser()
    with patch_sampler(problem.sampler, "multidiffusion") as patch:
        problem.sampler._inference_model(
            model, problem.noise, t, problem.cond, neg_cond=problem.neg_cond,
            guidance_strength=g, guidance_interval=(0.0, 1.0),
        )
    negative = g != 1.0
    assert model.forwards == patch.model_calls == 1
    assert model.rows == patch.batch_rows == (n + negative) * b
    assert model.negative_rows == negative * b


def test_outside_the_interval_no_negative_pass():
    problem = make_problem(num_views=3, steps=10, interval=(0.5, 0.8))
    problem.model.negative_rows = 0
    with patch_sampler(problem.sampler, "multidiffusion") as patch:
        problem.run()
    inside = [r for r in patch.records if 0.5 <= r.t <= 0.8]
    assert 0 < len(inside) < 10
    assert problem.model.negative_rows == len(inside)
    assert all(r.rows == (4 if 0.5 <= r.t <= 0.8 else 3) for r in patch.records)


@given(n=st.integers(1, 6), b=st.integers(1, 3), cap=st.integers(1, 12))
def test_max_batch_caps_rows_per_forward_without_changing_the_result(n, b, cap):
    problem = make_problem(num_views=n, num_samples=b, steps=2)
    if cap < b:  # one forward holds every sample of a view: a smaller cap is refused before any model work
        with pytest.raises(PatchError, match=f"max_batch={cap} is smaller than the {b} samples"):
            with patch_sampler(problem.sampler, "multidiffusion", max_batch=cap):
                problem.run()
        assert problem.model.forwards == 0 and "sample" not in vars(problem.sampler)
        return
    with patch_sampler(problem.sampler, "multidiffusion") as free:
        full = problem.run()
    model = problem.model
    sizes = []
    original = model.forward

    def spy(x, t, cond, **kw):
        sizes.append(T.batch_size(x))
        return original(x, t, cond, **kw)

    model.forward = spy
    with patch_sampler(problem.sampler, "multidiffusion", max_batch=cap) as capped:
        limited = problem.run()
    assert max(sizes) <= cap
    assert capped.batch_rows == free.batch_rows
    torch.testing.assert_close(limited, full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "sampler, kwargs",
    [
        (FlowEulerSampler(), {}),
        (FlowEulerCfgSampler(), {"guidance_strength": 3.0}),
        (FlowEulerCfgSampler(), {"guidance_strength": 0.0}),
        (FlowEulerGuidanceIntervalSampler(), {"guidance_strength": 3.0, "guidance_interval": (0.2, 0.7),
                                              "guidance_rescale": 0.7}),
        (LegacyFlowEulerCfgSampler(), {"cfg_strength": 3.0}),
        (LegacyFlowEulerGuidanceIntervalSampler(), {"cfg_strength": 3.0, "cfg_interval": (0.2, 0.7)}),
    ],
    ids=["plain", "cfg", "cfg-strength-0", "interval-rescale", "v1-cfg", "v1-interval"],
)
@pytest.mark.parametrize("name", ["multidiffusion", "stochastic", "single"])
def test_every_sampler_flavour_one_view_equals_unpatched(sampler, kwargs, name):
    model = TinyDenoiser()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 3, 3, generator=g)
    cond = torch.randn(1, 5, 8, generator=g)
    extra = {"neg_cond": torch.zeros(1, 5, 8).expand(2, -1, -1)} if kwargs else {}
    ref = sampler.sample(model, noise, cond.expand(2, -1, -1), steps=5, verbose=False, **extra, **kwargs).samples
    with patch_sampler(sampler, name):
        extra = {"neg_cond": torch.zeros(1, 5, 8)} if kwargs else {}
        got = sampler.sample(model, noise, cond, steps=5, verbose=False, **extra, **kwargs).samples
    if name == "multidiffusion":
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(got, ref)
