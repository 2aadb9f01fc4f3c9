"""trellis-mv against TRELLIS (v1): its own ``inject_sampler_multi_image`` is the oracle.

Skips (saying why) unless ``TRELLIS_SRC`` points at TRELLIS' source or ``trellis`` is
importable. v1's samplers speak ``cfg_strength`` / ``cfg_interval``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _trellis_harness import COND_CHANNELS, COND_TOKENS, randomize_

import trellis_mv
from trellis_mv.integrations import trellis as T1

STEPS = 5
PARAMS = {"steps": STEPS, "cfg_strength": 3.0, "cfg_interval": (0.5, 1.0), "rescale_t": 3.0}


def _v1_pipeline() -> Any:
    from trellis.models.sparse_structure_flow import SparseStructureFlowModel
    from trellis.models.structured_latent_flow import SLatFlowModel
    from trellis.pipelines.samplers import FlowEulerGuidanceIntervalSampler
    from trellis.pipelines.trellis_image_to_3d import TrellisImageTo3DPipeline

    common = dict(model_channels=64, cond_channels=COND_CHANNELS, num_blocks=2, num_heads=2, mlp_ratio=2,
                  pe_mode="ape", share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True)
    pipe = TrellisImageTo3DPipeline()  # bare: its __init__ would download DINOv2
    pipe.models = {
        "sparse_structure_flow_model": randomize_(SparseStructureFlowModel(
            resolution=8, in_channels=8, out_channels=8, **common), 11),
        "sparse_structure_decoder": _Decoder(),
        "slat_flow_model": randomize_(SLatFlowModel(
            resolution=32, in_channels=8, out_channels=8, patch_size=1, **{**common, "qk_rms_norm_cross": False}), 12),
    }
    pipe.sparse_structure_sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    pipe.slat_sampler = FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)
    pipe.sparse_structure_sampler_params = dict(PARAMS)
    pipe.slat_sampler_params = dict(PARAMS)
    pipe.slat_normalization = {"mean": [0.0] * 8, "std": [1.0] * 8}
    pipe.get_cond = None  # set per test
    pipe.decode_slat = lambda slat, formats: slat
    return pipe


class _Decoder(torch.nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = torch.nn.functional.interpolate(z[:, :1].float(), size=16, mode="trilinear", align_corners=False)
        return v - v.flatten(1).quantile(0.95, dim=1).view(-1, 1, 1, 1, 1)


def _cond(n: int) -> torch.Tensor:
    return torch.randn(n, COND_TOKENS, COND_CHANNELS, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("mode", ["stochastic", "multidiffusion"])
@pytest.mark.parametrize("n", [1, 3])
def test_sparse_structure_stage_matches_inject_sampler_multi_image(trellis_v1: Any, mode: str, n: int) -> None:
    pipe = _v1_pipeline()
    model = pipe.models["sparse_structure_flow_model"]
    sampler = pipe.sparse_structure_sampler
    cond, neg = _cond(n), torch.zeros(1, COND_TOKENS, COND_CHANNELS)
    noise = torch.randn(2, 8, 8, 8, 8, generator=torch.Generator().manual_seed(1))  # num_samples = 2
    with pipe.inject_sampler_multi_image("sparse_structure_sampler", n, STEPS, mode=mode):
        want = sampler.sample(model, noise, cond, neg, verbose=False, **PARAMS).samples
    with trellis_mv.patch_sampler(sampler, mode):
        got = sampler.sample(model, noise, cond, neg, verbose=False, **PARAMS).samples
    if mode == "stochastic":
        assert torch.equal(got, want)  # the same single-view calls, bit for bit
    else:  # v1 loops over views one forward each; trellis-mv batches them with the negative
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["stochastic", "multidiffusion"])
def test_whole_run_matches_run_multi_image(trellis_v1: Any, mode: str) -> None:
    """Both stages through the pipeline's own ``run``, against v1's own ``run_multi_image``."""
    cond = _cond(3)
    ref_pipe, pipe = _v1_pipeline(), _v1_pipeline()
    ref_pipe.get_cond = lambda images: {"cond": cond, "neg_cond": torch.zeros_like(cond)}
    want = ref_pipe.run_multi_image([None] * 3, seed=9, preprocess_image=False, mode=mode, num_samples=2)
    adapter = T1.TrellisAdapter(pipe, preprocess=False)
    got = trellis_mv.run_multi_image(adapter, list(cond), mode=mode, seed=9, num_samples=2).output
    assert torch.equal(got.coords, want.coords)
    atol = 0 if mode == "stochastic" else 1e-4
    torch.testing.assert_close(got.feats, want.feats, atol=atol, rtol=0 if atol == 0 else 1e-4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"params": {"slat": {"guidance_strength": 3.0}}}, "TRELLIS v1 uses cfg_strength"),
    ({"params": {"ss": {"steps": 0}}}, "steps must be an integer >= 1"),
    ({"stages": {"texture": "stochastic"}}, "unknown stage 'texture'"),
])
def test_v1_parameter_names_are_checked(trellis_v1: Any, kwargs: dict[str, Any], message: str) -> None:
    pipe = _v1_pipeline()
    pipe.get_cond = lambda images: pytest.fail("model work before the arguments were checked")
    with pytest.raises(trellis_mv.ParameterError, match=message):
        trellis_mv.run_multi_image(T1.TrellisAdapter(pipe), list(_cond(2)), **kwargs)
