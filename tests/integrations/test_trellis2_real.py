"""trellis-mv against TRELLIS.2's own samplers, flow models, SparseTensor and pipeline class.

Skips (saying why) unless ``TRELLIS2_SRC`` points at TRELLIS.2's source or ``trellis2`` is
importable. The models are TRELLIS.2's classes at a tiny size with random weights.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, ClassVar

import pytest
import torch
from _trellis_harness import SHAPE_PARAMS, SS_PARAMS, tiny_pipeline, views

import trellis_mv
from trellis_mv.integrations import trellis2 as T2

AGGREGATORS = [info.name for info in trellis_mv.list_aggregators()]
CAMERAS = ["front", "right", "back", "left"]


def run2(pipe: Any, images: Any, *, pipeline_type: str | None = None, max_num_tokens: int = 49152, **kw: Any) -> Any:
    """One multi-view run through the core's run path with the TRELLIS.2 adapter."""
    adapter = T2.Trellis2Adapter(pipe, pipeline_type=pipeline_type, max_num_tokens=max_num_tokens)
    kw.setdefault("cameras", [CAMERAS[i % 4] for i in range(len(images))])
    return trellis_mv.run_multi_image(adapter, images, **kw)


def _latents(out: Any) -> tuple[Any, Any, int]:
    return out[1] if isinstance(out, tuple) else out.output[1]


def assert_same_latents(a: tuple[Any, Any, int], b: tuple[Any, Any, int], atol: float) -> None:
    assert a[2] == b[2]
    for x, y in zip(a[:2], b[:2]):
        assert torch.equal(x.coords, y.coords)
        torch.testing.assert_close(x.feats, y.feats, atol=atol, rtol=0)


@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("pipeline_type", ["512", "1024_cascade"])
def test_one_view_reproduces_the_unpatched_pipeline(trellis2: Any, aggregator: str, pipeline_type: str) -> None:
    """All three stages (the cascade's two shape passes included), every aggregator, one view."""
    pipe = tiny_pipeline()
    image = views(1)
    reference = pipe.run(image[0], seed=3, pipeline_type=pipeline_type, return_latent=True)
    result = run2(pipe, image, mode=aggregator, seed=3, pipeline_type=pipeline_type)
    # selecting aggregators call the sampler itself: bit for bit; fusing ones batch the
    # negative with the view in one forward, which moves float32 rounding only
    exact = aggregator in ("stochastic", "single")
    assert_same_latents(_latents(result), _latents(reference), atol=0 if exact else 1e-4)
    assert result.patches["shape"].runs == (2 if "cascade" in pipeline_type else 1)
    assert "sample" not in vars(pipe.shape_slat_sampler)  # restored
    assert "get_cond" not in vars(pipe)


def test_get_cond_sees_every_view_and_one_negative(trellis2: Any) -> None:
    pipe = tiny_pipeline()
    seen: list[tuple[int, int]] = []
    original = pipe.shape_slat_sampler.sample

    def spy(model: Any, noise: Any, cond: Any, neg_cond: Any, **kw: Any) -> Any:
        seen.append((cond.shape[0], neg_cond.shape[0]))
        return original(model, noise, cond, neg_cond, **kw)

    pipe.shape_slat_sampler.sample = spy
    run2(pipe, views(3), pipeline_type="1024_cascade")
    assert seen == [(3, 1), (3, 1)]  # both cascade passes, 512-px then 1024-px tokens
    assert pipe.image_cond_model.calls == [(3, 512), (3, 1024)]


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_views_and_samples_batch_through_sparse_tensors(trellis2: Any, aggregator: str) -> None:
    pipe = tiny_pipeline()
    result = run2(pipe, views(3), mode=aggregator, num_samples=2, pipeline_type="1024_cascade")
    shape, tex, _ = _latents(result)
    assert shape.shape[0] == tex.shape[0] == 2
    assert torch.isfinite(shape.feats).all() and torch.isfinite(tex.feats).all()
    stats = result.cost()["stages"]
    if aggregator == "multidiffusion":
        # one forward per step: 3 views x 2 samples, plus the negative where guidance needs it
        per_step = {r.rows for r in result.patches["texture"].records}
        assert per_step == {6}  # texture: strength 1, no negative pass
        assert stats["shape"]["model_forwards"] == 2 * SHAPE_PARAMS["steps"]


def test_per_stage_aggregators_and_sampler_params(trellis2: Any) -> None:
    pipe = tiny_pipeline()
    result = run2(
        pipe, views(2), mode="multidiffusion", stages={"texture": "single:view=1", "ss": "stochastic"},
        pipeline_type="512", params={"sparse_structure": {"steps": 3}, "shape": {"steps": 2, "guidance_strength": 1.0}},
    )
    assert {s: p.name for s, p in result.patches.items()} == {
        "sparse_structure": "stochastic", "shape": "multidiffusion", "texture": "single"}
    assert [r.views for r in result.patches["sparse_structure"].records] == [(0,), (1,), (0,)]
    assert len(result.patches["shape"].records) == 2
    assert all(r.rows == 2 for r in result.patches["shape"].records)  # strength 1: no negative pass
    assert all(r.views == (1,) for r in result.patches["texture"].records)
    assert pipe.sparse_structure_sampler_params == SS_PARAMS  # pipeline defaults untouched


def test_token_budget_fallback_is_the_pipelines_own(trellis2: Any, capsys: Any) -> None:
    pipe = tiny_pipeline()
    reference = pipe.run(views(1)[0], pipeline_type="1536_cascade", max_num_tokens=100, return_latent=True)
    result = run2(pipe, views(1), pipeline_type="1536_cascade", max_num_tokens=100, mode="single")
    assert _latents(result)[2] == _latents(reference)[2] == 1024
    assert_same_latents(_latents(result), _latents(reference), atol=0)
    assert "resolution is reduced to 1024" in capsys.readouterr().out


def test_multidiffusion_equals_the_design_formula(trellis2: Any) -> None:
    """DESIGN.md: mean of the views' conditional velocities, one negative, guidance with rescale and interval.

    Computed by hand from the real model's per-view outputs, on TRELLIS.2's own sampler,
    for the dense sparse-structure latent and the sparse shape latent.
    """
    from trellis2.modules.sparse import SparseTensor
    from trellis2.pipelines.samplers import FlowEulerGuidanceIntervalSampler

    pipe = tiny_pipeline()
    sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 6, 32, generator=gen)
    neg = torch.zeros_like(cond[:1])
    g, rescale, interval, steps, r = 5.0, 0.6, (0.3, 0.9), 5, 3.0
    coords = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
    cases = [
        (pipe.models["sparse_structure_flow_model"], torch.randn(1, 8, 8, 8, 8, generator=gen)),
        (pipe.models["shape_slat_flow_model_512"], SparseTensor(feats=torch.randn(64, 8, generator=gen), coords=coords)),
    ]
    for model, noise in cases:
        with trellis_mv.patch_sampler(sampler, "multidiffusion"):
            got = sampler.sample(model, noise, cond, neg, steps=steps, rescale_t=r, guidance_strength=g,
                                 guidance_rescale=rescale, guidance_interval=interval, verbose=False).samples
        sig = 1e-5
        ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        ts = (r * ts / (1 + (r - 1) * ts)).tolist()
        x = noise
        for t, t_prev in itertools.pairwise(ts):
            t_in = torch.tensor([1000 * t], dtype=torch.float32)
            preds = [model(x, t_in, cond[i:i + 1]) for i in range(3)]
            pos = (preds[0] + preds[1] + preds[2]) / 3
            if interval[0] <= t <= interval[1]:
                v_neg = model(x, t_in, neg)
                pred = g * pos + (1 - g) * v_neg
                x0_pos = (1 - sig) * x - (sig + (1 - sig) * t) * pos
                x0_cfg = (1 - sig) * x - (sig + (1 - sig) * t) * pred
                dims = list(range(1, x0_pos.ndim))
                ratio = x0_pos.std(dim=dims, keepdim=True) / x0_cfg.std(dim=dims, keepdim=True)
                x0 = rescale * (x0_cfg * ratio) + (1 - rescale) * x0_cfg
                pred = ((1 - sig) * x - x0) / (sig + (1 - sig) * t)
            else:
                pred = pos
            x = x - (t - t_prev) * pred
        got_v, want_v = (got.feats, x.feats) if hasattr(got, "feats") else (got, x)
        torch.testing.assert_close(got_v, want_v, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("aggregator", ["multidiffusion", "stochastic", "robust", "consensus", "visibility", "concat"])
def test_objects_with_their_own_views_sample_together_as_alone(trellis2: Any, aggregator: str) -> None:
    """Two objects (3 views and 1) in one run of TRELLIS.2's sampler, dense SS flow and sparse shape flow."""
    from trellis2.modules.sparse import SparseTensor
    from trellis2.pipelines.samplers import FlowEulerGuidanceIntervalSampler

    pipe = tiny_pipeline()
    sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    gen = torch.Generator().manual_seed(1)
    objects = [torch.randn(3, 6, 32, generator=gen), torch.randn(1, 6, 32, generator=gen)]
    cameras = [["front", "right", "back"], ["left"]]
    cond, weights = trellis_mv.pad_views(objects)
    neg = torch.zeros(1, 6, 32)
    params = dict(SHAPE_PARAMS, verbose=False)
    grid = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3).int()
    sparse = [SparseTensor(feats=torch.randn(n, 8, generator=gen), coords=torch.cat(
        [torch.zeros(n, 1, dtype=torch.int32), grid[torch.randperm(27, generator=gen)[:n]]], 1)) for n in (20, 9)]
    both = SparseTensor(feats=torch.cat([x.feats for x in sparse]), coords=torch.cat(
        [sparse[0].coords, sparse[1].coords + torch.tensor([1, 0, 0, 0], dtype=torch.int32)]))
    dense = torch.randn(2, 8, 8, 8, 8, generator=gen)
    cases = [(pipe.models["sparse_structure_flow_model"], dense, [dense[:1], dense[1:]]),
             (pipe.models["shape_slat_flow_model_512"], both, sparse)]
    for model, noise, alone in cases:
        with trellis_mv.patch_sampler(sampler, aggregator, per_sample=True, weights=weights, cameras=cameras) as patch:
            got = sampler.sample(model, noise, cond, neg, **params).samples
        assert patch.model_calls <= 2 * params["steps"]  # one batched forward a step (concat: one a branch)
        feats = got.feats.split([20, 9]) if hasattr(got, "feats") else got.split(1)
        for b in range(2):
            with trellis_mv.patch_sampler(sampler, aggregator, cameras=cameras[b]):
                want = sampler.sample(model, alone[b], objects[b], neg, **params).samples
            torch.testing.assert_close(feats[b], want.feats if hasattr(want, "feats") else want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("aggregator", ["multidiffusion", "stochastic"])
def test_identical_views_give_the_single_view_result_for_fusing_aggregators(trellis2: Any, aggregator: str) -> None:
    pipe = tiny_pipeline()
    one = run2(pipe, views(1), mode=aggregator, pipeline_type="512")
    three = run2(pipe, views(1) * 3, mode=aggregator, pipeline_type="512")
    assert_same_latents(_latents(three), _latents(one), atol=1e-4)


# -- bad input: clear errors before any model work -------------------------------------------


class _NoModelWork:
    """A pipeline whose every model use fails the test."""

    models: ClassVar[dict[str, None]] = dict.fromkeys(T2.required_models("1024_cascade"))
    default_pipeline_type = "1024_cascade"
    sparse_structure_sampler, shape_slat_sampler, tex_slat_sampler = object(), object(), object()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"pipeline.{name} used before the arguments were checked")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"params": {"shape": {"steps": 0}}}, "steps must be an integer >= 1"),
    ({"params": {"sparse_structure": {"guidance_rescale": 1.5}}}, "must be in [0, 1]"),
    ({"params": {"texture": {"rescale_t": -1}}}, "rescale_t must be a finite number > 0"),
    ({"params": {"tex": {"guidance_interval": (0.9, 0.1)}}}, "0 <= lo <= hi <= 1"),
    ({"params": {"shape": {"cfg_strength": 3}}}, "TRELLIS.2 uses guidance_strength"),
    ({"params": {"shape": {"guidance_strenght": 3}}}, "unknown shape sampler parameter 'guidance_strenght'"),
    ({"params": {"geometry": {"steps": 3}}}, "unknown stage 'geometry'"),
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"mode": "no-such-aggregator"}, "no-such-aggregator"),
    ({"stages": {"geometry": "stochastic"}}, "unknown stage 'geometry'"),
    ({"stages": {"texture": "single:view=5"}}, "view=5 but only 2 view(s)"),
    ({"max_batch": 1, "num_samples": 2}, "max_batch=1 is smaller than num_samples=2"),
    ({"weights": [1, 2, 3]}, "weights has 3 entries but the conditioning holds 2 views"),
])
def test_bad_parameters_fail_before_model_work(kwargs: dict[str, Any], message: str) -> None:
    adapter = T2.Trellis2Adapter(_NoModelWork())
    with pytest.raises(trellis_mv.TrellisMVError) as info:
        trellis_mv.run_multi_image(adapter, [_disc(), _disc()], **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"pipeline_type": "2048"}, "unknown pipeline_type '2048'"),
    ({"pipeline_type": "512"}, "needs the models tex_slat_flow_model_512, which"),
    ({"max_num_tokens": 0}, "max_num_tokens must be an integer >= 1"),
])
def test_bad_adapter_options_fail_before_model_work(options: dict[str, Any], message: str) -> None:
    with pytest.raises(trellis_mv.ParameterError, match=re.escape(message)):
        T2.Trellis2Adapter(_NoModelWork(), **options)


def _disc(**kw: Any) -> Any:
    from _trellis_harness import disc_image

    return disc_image((200, 30, 30), **kw)


def test_bad_images_fail_before_model_work(tmp_path: Any) -> None:
    adapter = T2.Trellis2Adapter(_NoModelWork())
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(trellis_mv.ImageError, match="broken.png.* is not a readable image"):
        trellis_mv.run_multi_image(adapter, [_disc(), str(bad)])
    with pytest.raises(trellis_mv.ImageError, match="does not exist"):
        trellis_mv.run_multi_image(adapter, [str(tmp_path / "missing.png")])
    with pytest.raises(trellis_mv.ImageError, match="no foreground"):
        trellis_mv.run_multi_image(adapter, [_disc(), _disc(radius=0).point(lambda v: 0)])


def test_missing_trellis2_says_how_to_install(monkeypatch: Any) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "trellis2", None)
    monkeypatch.setitem(sys.modules, "trellis2.pipelines", None)
    with pytest.raises(trellis_mv.ModelNotAvailable, match="--model proxy"):
        T2.Trellis2Adapter.load("unused", pipeline_type="512")
