"""Per-stage aggregators over a two-stage pipeline (dense then sparse), as the real ones are built."""

import pytest
import torch

from trellis_mv import PatchError, UnknownAggregatorError
from trellis_mv.pipeline import parse_stage, run_multi_image
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
from trellis_mv.sparse import SparseTensor
from trellis_mv.testing import TinyDenoiser


class TwoStage:
    """Dense structure, then sparse features on the occupied cells (the shape of TRELLIS.2's stages)."""

    def __init__(self, shared=False):
        first = FlowEulerGuidanceIntervalSampler()
        self.samplers = {"sparse_structure": first, "texture": first if shared else FlowEulerGuidanceIntervalSampler()}
        self.model = TinyDenoiser()

    def run(self, images, num_samples=1, steps=3):
        cond = torch.stack(images)  # the "encoder": images are already token tensors
        neg = torch.zeros_like(cond[:1])
        params = dict(steps=steps, guidance_strength=3.0, guidance_interval=(0.0, 1.0), verbose=False)
        g = torch.Generator().manual_seed(0)
        dense = self.samplers["sparse_structure"].sample(
            self.model, torch.randn(num_samples, 4, 2, 2, generator=g), cond, neg, **params
        ).samples
        occupied = torch.argwhere(dense[:, 0] > 0)
        coords = torch.cat([occupied[:, :1], occupied[:, 1:], torch.zeros_like(occupied[:, :1])], 1).int()
        noise = SparseTensor(torch.randn(len(coords), 4, generator=g), coords, batch_size=num_samples)
        return self.samplers["texture"].sample(self.model, noise, cond, neg, **params).samples


def test_per_stage_aggregators_and_records():
    pipe = TwoStage()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(5, 8, generator=g) for _ in range(3)]
    out, patches = run_multi_image(pipe, views, mode="multidiffusion", stages={"texture": ("single", {"view": 2})},
                                   num_samples=2)
    assert isinstance(out, SparseTensor) and out.shape[0] == 2
    assert patches["sparse_structure"].name == "multidiffusion"
    assert all(r.views == (0, 1, 2) and r.rows == 2 * 4 for r in patches["sparse_structure"].records)
    assert all(r.views == (2,) for r in patches["texture"].records)
    assert all("sample" not in vars(s) for s in pipe.samplers.values())


@pytest.mark.parametrize("seed", range(4))
def test_one_view_everywhere_equals_the_unpatched_pipeline(seed):
    view = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))
    unpatched = TwoStage().run([view])
    for mode in ("multidiffusion", "stochastic", "single"):
        out, _ = run_multi_image(TwoStage(), [view], mode=mode)
        torch.testing.assert_close(out.feats, unpatched.feats, rtol=1e-6, atol=1e-6)


def test_stage_errors():
    views = [torch.randn(5, 8)]
    with pytest.raises(PatchError, match=r"unknown stage 'shape'; .* stages are: sparse_structure, texture"):
        run_multi_image(TwoStage(), views, stages={"shape": "stochastic"})
    with pytest.raises(PatchError, match="share one sampler instance, so they need the same aggregator"):
        run_multi_image(TwoStage(shared=True), views, stages={"texture": "single"})
    with pytest.raises(UnknownAggregatorError):
        run_multi_image(TwoStage(), views, mode="nope")
    with pytest.raises(ValueError, match="no views"):
        run_multi_image(TwoStage(), [])


def test_stages_sharing_a_sampler_share_one_patch():
    pipe = TwoStage(shared=True)
    _, patches = run_multi_image(pipe, [torch.randn(5, 8, generator=torch.Generator().manual_seed(0))], mode="stochastic")
    assert patches["sparse_structure"] is patches["texture"] and patches["texture"].stage == "sparse_structure+texture"
    assert patches["texture"].runs == 2


def test_stage_aliases_and_aggregator_strings():
    from trellis_mv.pipeline import plan_stages

    plan = plan_stages(["sparse_structure", "texture"], "multidiffusion", {"SS": "stochastic:order=random,seed=2"},
                       aliases={"ss": "sparse_structure"})
    assert (plan["sparse_structure"].order, plan["sparse_structure"].seed) == ("random", 2)
    assert plan["texture"].name == "multidiffusion"


def test_parse_stage_errors():
    with pytest.raises(ValueError, match="expected STAGE=AGGREGATOR"):
        parse_stage("multidiffusion")
    with pytest.raises(ValueError, match="is not OPTION=VALUE"):
        parse_stage("shape=stochastic:random")
