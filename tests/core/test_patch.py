"""The sampler patch: restoration, refusal, scheduling per step, runs, threads."""

import inspect
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import trellis_mv
from trellis_mv import PatchError, patch_sampler
from trellis_mv import _tensors as T
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler, FlowEulerSampler
from trellis_mv.testing import TinyDenoiser, make_problem


def test_restores_exactly_and_keeps_signatures():
    problem = make_problem(num_views=3)
    sampler = problem.sampler
    before = dict(vars(sampler))
    signatures = {name: inspect.signature(getattr(sampler, name)) for name in ("sample", "sample_once", "_inference_model")}
    with patch_sampler(sampler, "multidiffusion"):
        assert vars(sampler) != before
        for name, sig in signatures.items():
            assert inspect.signature(getattr(sampler, name)) == sig
            assert getattr(sampler, name).__name__ == name
        problem.run()
    assert vars(sampler) == before


class _Stop(BaseException):
    pass


@given(
    exc=st.sampled_from([RuntimeError, KeyboardInterrupt, _Stop]),
    fail_at=st.integers(1, 6),
    name=st.sampled_from(["multidiffusion", "stochastic", "single"]),
)
def test_restores_after_any_exception(exc, fail_at, name):
    problem = make_problem(num_views=2, steps=4)
    sampler = problem.sampler
    # an instance attribute set by someone else before us must come back as it was
    sampler.sample_once = sampler.sample_once
    before = dict(vars(sampler))
    calls = {"n": 0}

    def model(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise exc()
        return problem.model(*args, **kwargs)

    with pytest.raises(exc):
        with patch_sampler(sampler, name):
            sampler.sample(model, problem.noise, problem.cond, problem.neg_cond, verbose=False, **problem.kwargs)
            raise exc()  # fewer calls than fail_at: raise from the block itself
    assert vars(sampler) == before


def test_double_patch_refused_and_first_patch_intact():
    problem = make_problem(num_views=2)
    sampler = problem.sampler
    with patch_sampler(sampler, "stochastic", stage="shape") as first:
        patched = dict(vars(sampler))
        with pytest.raises(PatchError, match="already patched.*'stochastic'.*'shape'"):
            with patch_sampler(sampler, "multidiffusion"):
                pass
        assert vars(sampler) == patched
        problem.run()
        assert first.runs == 1
    assert "sample" not in vars(sampler)


def test_not_a_sampler():
    with pytest.raises(PatchError, match="no `_inference_model`"):
        with patch_sampler(object(), "multidiffusion"):
            pass


def test_refuses_a_sampler_inside_trellis_inject():
    sampler = FlowEulerGuidanceIntervalSampler()
    sampler._old_inference_model = sampler._inference_model
    with pytest.raises(PatchError, match="inject_sampler_multi_image"):
        with patch_sampler(sampler, "multidiffusion"):
            pass


class HeunLike(FlowEulerGuidanceIntervalSampler):
    """Calls the model twice per step (Heun's predictor and corrector)."""

    def sample_once(self, model, x_t, t, t_prev, cond=None, **kwargs):
        v1 = self._inference_model(model, x_t, t, cond, **kwargs)
        x_mid = x_t - (t - t_prev) * v1
        v2 = self._inference_model(model, x_mid, t_prev, cond, **kwargs)
        from types import SimpleNamespace

        return SimpleNamespace(pred_x_prev=x_t - (t - t_prev) * 0.5 * (v1 + v2), pred_x_0=x_mid)


@given(n=st.integers(1, 5), steps=st.integers(1, 8), order=st.sampled_from(["cycle", "random"]))
def test_schedule_is_per_step_not_per_call(n, steps, order):
    problem = make_problem(num_views=n, steps=steps)
    sampler = HeunLike()
    agg = trellis_mv.get_aggregator("stochastic", order=order, seed=5)
    with pytest.warns(UserWarning) if n > steps else _nullcontext():
        with patch_sampler(sampler, agg) as patch:
            problem.run(sampler=sampler)
    assert len(patch.records) == 2 * steps
    for first, second in zip(patch.records[::2], patch.records[1::2]):
        assert first.step == second.step and first.views == second.views
    views = [r.views[0] for r in patch.records[::2]]
    if order == "cycle":
        assert views == [i % n for i in range(steps)]
    else:  # every view once per block of n steps
        for start in range(0, steps - steps % n, n):
            assert sorted(views[start : start + n]) == list(range(n))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_each_sample_call_is_a_run_like_the_cascade():
    """TRELLIS.2's cascade samples the shape stage twice under one patch: the schedule restarts."""
    problem = make_problem(num_views=3, steps=4)
    with patch_sampler(problem.sampler, "stochastic") as patch:
        problem.run()
        problem.run()
    assert patch.runs == 2
    assert [(r.run, r.step, r.views) for r in patch.records] == [
        (run, i, (i % 3,)) for run in (0, 1) for i in range(4)
    ]


def test_random_order_same_for_every_run_and_seeded():
    problem = make_problem(num_views=4, steps=8)
    orders = []
    for seed in (1, 1, 2):
        with patch_sampler(problem.sampler, "stochastic", order="random", seed=seed) as patch:
            problem.run()
            problem.run()
        runs = [[r.views[0] for r in patch.records if r.run == k] for k in (0, 1)]
        assert runs[0] == runs[1]
        orders.append(runs[0])
    assert orders[0] == orders[1] != orders[2]


def test_sampler_without_sample_once_counts_calls_as_steps():
    class Bare:
        def _inference_model(self, model, x_t, t, cond=None, **kwargs):
            return model(x_t, torch.full((x_t.shape[0],), 1000 * t), cond, **kwargs)

    sampler = Bare()
    model = TinyDenoiser()
    cond = torch.randn(3, 5, 8)
    x = torch.randn(1, 4, 3, 3)
    with patch_sampler(sampler, "stochastic") as patch:
        for t in (0.9, 0.6, 0.3, 0.1):
            sampler._inference_model(model, x, t, cond)
    assert [r.views for r in patch.records] == [(0,), (1,), (2,), (0,)]
    assert vars(sampler) == {}


def test_two_samplers_patched_at_once_do_not_share_state():
    a, b = make_problem(num_views=3, steps=5, seed=1), make_problem(num_views=2, steps=5, seed=2)
    with patch_sampler(a.sampler, "stochastic") as pa, patch_sampler(b.sampler, "stochastic") as pb:
        a.run()
        b.run()
        a.run()
    assert [r.views[0] for r in pa.records] == [0, 1, 2, 0, 1] * 2
    assert [r.views[0] for r in pb.records] == [0, 1, 0, 1, 0]


def test_threads_sharing_one_patched_sampler_keep_their_own_runs():
    problem = make_problem(num_views=3, steps=6)
    sampler = FlowEulerSampler()
    barrier = threading.Barrier(2)
    model = TinyDenoiser()

    def slow_model(*args, **kwargs):
        barrier.wait(timeout=5)  # interleave the two threads step by step
        return model(*args, **kwargs)

    results = {}

    def work(key):
        results[key] = sampler.sample(slow_model, problem.noise, problem.cond, steps=6, verbose=False).samples

    with patch_sampler(sampler, "stochastic") as patch:
        threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for run in (0, 1):
        assert [r.step for r in patch.records if r.run == run] == list(range(6))
        assert [r.views[0] for r in patch.records if r.run == run] == [0, 1, 2, 0, 1, 2]
    assert torch.equal(results[0], results[1])


def test_cameras_and_diagnostics_reach_the_aggregator_and_the_patch():
    seen = []

    class Looks:
        name = "looks"

        def __call__(self, step):
            seen.append(step.cameras)
            preds = step.predict()
            step.record("view_weights", torch.stack([T.feats(p) for p in preds]) * 0 + step.index)
            return step.guide(step.fuse(preds))

    problem = make_problem(num_views=3, steps=3)
    with patch_sampler(problem.sampler, Looks(), cameras=["front", (90, 20), None]) as patch:
        problem.run()
    assert seen[0] == (trellis_mv.Camera(0.0, 0.0), trellis_mv.Camera(90.0, 20.0), None)
    assert patch.diagnostics["view_weights"].shape[0] == 3
    assert bool((patch.diagnostics["view_weights"] == 2).all())  # the latest step's record
    with pytest.raises(trellis_mv.ViewError, match="cameras has 2 entries but there are 3 views"):
        with patch_sampler(problem.sampler, "multidiffusion", cameras=["front", "back"]):
            problem.run()
    with pytest.raises(trellis_mv.ViewError, match="camera 'sideways' is not a camera"):
        trellis_mv.parse_camera("sideways")


def test_on_step_reports_every_step_of_every_run_and_errors_propagate():
    """The progress hook sees each denoising step with the run's step count, the cascade's second run too."""
    problem = make_problem(num_views=3, steps=4)
    seen = []
    with patch_sampler(problem.sampler, "multidiffusion", stage="shape", on_step=lambda *a: seen.append(a)):
        problem.run()
        problem.run()
    assert seen == [("shape", i, 4) for _ in range(2) for i in range(4)]

    def stop(stage, step, num_steps):
        if step == 1:
            raise KeyboardInterrupt  # a user pressing stop in a progress bar

    before = dict(vars(problem.sampler))
    with pytest.raises(KeyboardInterrupt), patch_sampler(problem.sampler, "multidiffusion", on_step=stop):
        problem.run()
    assert vars(problem.sampler) == before
