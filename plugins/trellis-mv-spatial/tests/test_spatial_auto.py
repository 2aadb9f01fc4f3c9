import doctest

import pytest
import torch
from trellis_mv_spatial import auto
from trellis_mv_spatial.auto import auto_generate, render_agreement

import trellis_mv
from trellis_mv import Camera, ViewError
from trellis_mv.proxy import make_shape

FAST = {"params": {"sparse_structure": {"steps": 3}, "texture": {"steps": 3}}}


def test_doctests():
    assert doctest.testmod(auto).failed == 0


def test_choice_is_the_lowest_median_error(proxy):
    pipeline, _shape, images = proxy
    cams = ["front", "back"]
    out = auto_generate(pipeline, [images[0], images[2]], cams, candidates=["robust"], seed=0, **FAST)
    assert set(out.scores) == {"robust", "single:view=0", "single:view=1"}
    assert out.choice == min(out.scores, key=out.scores.get)
    errors = render_agreement(out.result, [images[0], images[2]], cams, names=pipeline.named_cameras)
    assert torch.allclose(errors, torch.tensor(out.per_view[out.choice], dtype=errors.dtype))
    assert out.model_calls > sum(p.model_calls for p in out.patches.values())  # every candidate counted


def test_the_run_path_hands_the_cameras_to_every_stage(proxy):
    pipeline, _, images = proxy
    patches = trellis_mv.run_multi_image(pipeline, images[:2], stages={"texture": "visibility"},
                                         cameras=["front", "90,25"], seed=0, **FAST).patches
    assert patches["texture"].diagnostics["cameras"][1] == Camera(90.0, 25.0)
    assert patches["sparse_structure"].name == "multidiffusion"


def test_render_agreement_is_small_for_the_truth_and_large_for_another_shape(proxy):
    pipeline, shape, images = proxy
    other = make_shape(shape.seed + 1)

    class Result:
        def __init__(self, s):
            self.occupancy, self.colors = torch.as_tensor(s.occupancy)[None], torch.as_tensor(s.colors)[None]

    cams, names = ["front", "right", "back", "left"], pipeline.named_cameras
    truth, wrong = (render_agreement(Result(s), images, cams, names=names) for s in (shape, other))
    assert truth.shape == (4,) and (truth < 0.01).all() and (truth < wrong / 3).all()
    level = render_agreement(Result(shape), images, cams)  # the core's front is level: not the proxy's views
    assert (level > 3 * truth).all()


def test_a_custom_score_decides(proxy):
    pipeline, _, images = proxy
    seen = []

    def score(result, imgs, cams):
        seen.append(result)
        return torch.full((len(imgs),), 0.0 if len(seen) == 2 else 1.0)  # the second candidate is the best

    out = auto_generate(pipeline, images[:2], ["front", "right"], candidates=["multidiffusion"], score=score, seed=0, **FAST)
    assert list(out.scores) == ["multidiffusion", "single:view=0", "single:view=1"] and out.choice == "single:view=0"
    assert out.result is seen[1]


def test_every_view_needs_a_camera(proxy):
    pipeline, _, images = proxy
    with pytest.raises(ViewError, match=r"views \[1\] have none"):
        auto_generate(pipeline, images[:2], ["front", None], **FAST)
    with pytest.raises(ViewError, match="needs one camera per view"):
        auto_generate(pipeline, images[:2], ["front"], **FAST)
