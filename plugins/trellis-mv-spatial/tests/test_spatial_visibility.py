import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spatial_helpers import run_proxy
from trellis_mv_spatial import _elements
from trellis_mv_spatial.visibility import Visibility, voxel_visibility

import trellis_mv
from trellis_mv import AggregatorOptionError, patch_sampler
from trellis_mv._tensors import feats
from trellis_mv.testing import AggregatorTests, make_problem


class TestVisibility(AggregatorTests):  # without cameras: the weighted mean, through the same code
    aggregator, distribution, options = Visibility, "trellis-mv-spatial", [{"require_cameras": False}]
    doctest_modules = (_elements,)


SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)
cameras = st.tuples(st.floats(0, 359), st.floats(-60, 80))


def test_no_camera_is_refused_before_model_work():
    problem = make_problem(num_views=2)
    with pytest.raises(AggregatorOptionError, match=r"visibility: no view has a camera; give one per view, e\.g\."):
        with patch_sampler(problem.sampler, "visibility"):
            problem.run()
    assert problem.model.forwards == 0


@pytest.mark.parametrize("options, option", [
    (dict(temperature=-1), "temperature"), (dict(floor=1.5), "floor"), (dict(floor=float("nan")), "floor"),
    (dict(require_cameras="no"), "require_cameras"),
])
def test_bad_options_name_the_option(options, option):
    with pytest.raises(AggregatorOptionError, match=rf"^visibility: option {option} must"):
        trellis_mv.get_aggregator("visibility", **options)


@SETTINGS
@given(st.sampled_from(["dense", "sparse"]), st.integers(2, 4), st.lists(cameras, min_size=4, max_size=4),
       st.integers(0, 99))
def test_identical_views_from_anywhere_equal_one_view(kind, n, cams, seed):
    problem = make_problem(kind=kind, num_views=1, seed=seed, rescale=0.7)
    with patch_sampler(problem.sampler, "multidiffusion"):
        one = problem.run()
    with patch_sampler(problem.sampler, "visibility", cameras=cams[:n]):
        many = problem.run(cond=problem.cond.repeat(n, 1, 1))
    torch.testing.assert_close(feats(many), feats(one), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(st.sampled_from(["dense", "sparse"]), st.lists(cameras, min_size=3, max_size=3),
       st.lists(st.floats(0.1, 4), min_size=3, max_size=3), st.permutations([0, 1, 2]), st.booleans(), st.integers(0, 99))
def test_permuting_views_weights_and_cameras_together_changes_nothing(kind, cams, weights, perm, unknown, seed):
    problem = make_problem(kind=kind, num_views=3, seed=seed)
    cams = [None, *cams[1:]] if unknown else cams
    with patch_sampler(problem.sampler, "visibility", weights=weights, cameras=cams):
        a = problem.run()
    with patch_sampler(problem.sampler, "visibility", weights=[weights[i] for i in perm], cameras=[cams[i] for i in perm]):
        b = problem.run(cond=problem.cond[perm])
    torch.testing.assert_close(feats(a), feats(b), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(st.sampled_from(["dense", "sparse"]), st.lists(cameras, min_size=3, max_size=3), st.integers(0, 2), st.integers(0, 99))
def test_views_of_weight_zero_change_nothing(kind, cams, keep, seed):
    problem = make_problem(kind=kind, num_views=3, seed=seed)
    with patch_sampler(problem.sampler, "visibility", weights=[float(i == keep) for i in range(3)], cameras=cams):
        a = problem.run()
    with patch_sampler(problem.sampler, "visibility", cameras=[cams[keep]]):
        b = problem.run(cond=problem.cond[keep : keep + 1])
    torch.testing.assert_close(feats(a), feats(b))


def _brute_force(coords, d):
    """Visibility by fine sampling along rays from every exposed face centre (slow, independent of the DDA)."""
    occ = {tuple(c) for c in coords.tolist()}
    normals = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    facing = []
    ts = torch.arange(1, 500, dtype=torch.float64) * 0.02  # 10 voxels: beyond the 5^3 grid
    for c in coords.tolist():
        best = 0.0
        for n in normals:
            cos = sum(a * b for a, b in zip(n, d.tolist()))
            if cos <= 1e-9 or tuple(a + b for a, b in zip(c, n)) in occ:
                continue
            origin = torch.tensor(c, dtype=torch.float64) + 0.5 + 0.5 * torch.tensor(n, dtype=torch.float64)
            cells = torch.floor(origin + ts[:, None] * d).long().tolist()
            if not any(tuple(x) in occ for x in cells):
                best = max(best, cos)
        facing.append(best)
    return torch.tensor(facing, dtype=torch.float64)


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40, unique=True),
       cameras)
def test_occlusion_matches_fine_ray_sampling(cells, cam):
    coords = torch.tensor(cells)
    d = trellis_mv._views.camera_directions([trellis_mv.Camera(*cam)])
    facing, visible = voxel_visibility(coords, d)
    expected = _brute_force(coords, d[0])
    # rays through an exact edge or corner may go either way; sampled rays avoid them almost surely
    assert (facing[0] - expected).abs().max() < 1e-9
    assert torch.equal(visible[0], expected > 0)


def test_each_sample_occludes_only_itself():
    coords = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 1]])  # sample 1's voxel would hide sample 0's if they shared a grid
    _, visible = voxel_visibility(coords, torch.tensor([[0.0, 0.0, 1.0]]))
    assert visible.all()


def test_a_voxel_hidden_from_a_camera_gets_the_floor():
    problem = make_problem(kind="sparse", num_views=2)
    coords = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])  # the z=0 voxel is behind the z=1 one, seen from the front
    noise = problem.noise.replace(torch.randn(2, 4), coords)
    with patch_sampler(problem.sampler, "visibility", cameras=["front", "back"], floor=0.1) as patch:
        problem.sampler.sample(problem.model, noise, problem.cond, problem.neg_cond, verbose=False, **problem.kwargs)
    w = patch.diagnostics["view_weights"]
    torch.testing.assert_close(w, torch.tensor([[0.1, 1.0], [1.0, 0.1]]) / 1.1)


def test_on_the_proxy_the_front_view_drives_the_front_surface(proxy):
    pipeline, _shape, images = proxy
    cams = ["front", "right", "back", "left"]
    _, patches = run_proxy(pipeline, images, "visibility", cams, seed=0, params={s: {"steps": 2} for s in pipeline.samplers})
    texture, structure = patches["texture"].diagnostics, patches["sparse_structure"].diagnostics
    coords = texture["coords"][:, 1:].long()
    w = texture["view_weights"]
    front = coords[:, 2] == coords[:, 2].max()  # the voxels nearest the front camera
    back = coords[:, 2] == coords[:, 2].min()
    assert (w[0, front] > w[2, front]).all() and (w[2, back] > w[0, back]).all()
    dense = structure["view_weights"]  # [N, B, 8, 8, 8], axes x, y, z
    assert dense.shape == (4, 1, 8, 8, 8)
    assert (dense[0, 0, :, :, -1] > dense[2, 0, :, :, -1]).all() and (dense[1, 0, -1] > dense[3, 0, -1]).all()
