import doctest

import numpy as np
import pytest
import torch
import trimesh
from spatial_helpers import CrossAttnDenoiser, run_proxy

from trellis_mv import diagnostics, patch_sampler
from trellis_mv.diagnostics import VIEW_COLOURS, save_diagnostics, voxel_arrays
from trellis_mv.testing import make_problem

AGGREGATORS = [("visibility", {}), ("attention", {}), ("robust", {}), ("robust", {"method": "huber"})]


def test_doctests():
    assert doctest.testmod(diagnostics).failed == 0


@pytest.mark.parametrize("name, options", AGGREGATORS)
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_every_aggregator_records_weights_and_disagreement(name, options, kind):
    problem = make_problem(kind=kind, num_views=3, num_samples=2, steps=2)
    problem.model = CrossAttnDenoiser()
    with patch_sampler(problem.sampler, name, cameras=["front", "90,20", None], **options) as patch:
        out = problem.run()
    record = patch.diagnostics
    w, d = record["view_weights"], record["disagreement"]
    per_element = (out.feats.shape[0],) if kind == "sparse" else (2, *out.shape[2:])
    assert w.shape == (3, *per_element) and d.shape == per_element
    torch.testing.assert_close(w.sum(0), torch.ones(per_element))
    assert (d > 0).all()
    with patch_sampler(problem.sampler, name, cameras=["front", "90,20", None], **options) as patch:
        problem.run(cond=problem.cond[:1].repeat(3, 1, 1))
    assert patch.diagnostics["disagreement"].abs().max() < 1e-6  # identical views do not disagree


def test_save_diagnostics_writes_arrays_mesh_and_picture(proxy, tmp_path):
    pipeline, _, images = proxy
    cams = ["front", "right", "back", "left"]
    result, patches = run_proxy(pipeline, images, "visibility", cams, seed=0, params={s: {"steps": 2} for s in pipeline.samplers})
    paths = save_diagnostics(patches["texture"], None, tmp_path)
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["dominant_view.glb", "dominant_view.png", "view_weights.npz"]
    arrays = np.load(tmp_path / "view_weights.npz")
    occupied = result.occupancy[0].nonzero().numpy()
    assert np.array_equal(arrays["coords"][:, 1:], occupied)  # rows follow the texture stage's voxels
    assert np.array_equal(arrays["dominant"], arrays["view_weights"].argmax(0))
    assert list(arrays["cameras"]) == ["0,25", "90,25", "180,25", "270,25"]  # the proxy names its raised views
    mesh = trimesh.load(tmp_path / "dominant_view.glb", force="mesh")
    hues = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    hues /= np.maximum(hues.max(1, keepdims=True), 1e-6)
    palette = VIEW_COLOURS[:4] / VIEW_COLOURS[:4].max(1, keepdims=True)
    assert np.abs(hues[:, None] - palette[None]).sum(-1).min(1).max() < 0.05  # every vertex has a view's hue
    # the same arrays from explicit coords: an occupancy grid in nonzero() order
    same = voxel_arrays(patches["texture"].diagnostics, result.occupancy)
    assert np.array_equal(same["dominant"], arrays["dominant"])


def test_records_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="expected a Patch or its .diagnostics holding 'view_weights'"):
        save_diagnostics({"other": 1}, None, ".")
    with pytest.raises(ValueError, match=r"view_weights \(2, 3\) do not match coords \(2, 4\)"):
        voxel_arrays({"view_weights": torch.ones(2, 3)}, torch.zeros(2, 4, dtype=torch.long))


def test_generate_saves_the_diagnostics_with_the_result(tmp_path):
    import numpy as np

    import trellis_mv
    from trellis_mv.proxy import ProxyPipeline, example_images

    steps = {"sparse_structure": {"steps": 2}, "texture": {"steps": 2}}
    summary = trellis_mv.generate(ProxyPipeline(), example_images()[:2], tmp_path / "out", stages={"texture": "visibility"},
                                  cameras=["front", "right"], params=steps)
    saved = {"diagnostics.npz", "view_weights.npz", "dominant_view.glb", "dominant_view.png"}
    assert saved <= set(summary["outputs"]) and all((tmp_path / "out" / name).is_file() for name in saved)
    arrays = np.load(tmp_path / "out" / "view_weights.npz")
    assert arrays["view_weights"].shape[0] == 2 and arrays["dominant"].shape == arrays["share"].shape
