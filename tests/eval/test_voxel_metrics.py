"""The proxy's views, face visibility, the shape generator's components and the voxel scores of its results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trellis_mv import camera_name, parse_camera
from trellis_mv.eval import fscore, posterior_draws, reference_iou
from trellis_mv.eval import score_voxels as score
from trellis_mv.proxy import (
    COMPONENTS,
    FACES,
    HELD_OUT_SEED,
    NAMED_VIEWS,
    PALETTE,
    SIDES,
    VIEW_SETS,
    make_shape,
    palette_index,
    render,
    visible_faces,
)


def _camera_dir(view) -> np.ndarray:
    az, el = (math.radians(a) for a in parse_camera(view, NAMED_VIEWS))
    return np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])


def test_named_views_look_down_25_degrees_and_view_sets():
    assert {k: v for k, v in NAMED_VIEWS.items() if k != "top"} == {
        "front": (0.0, 25.0), "right": (90.0, 25.0), "back": (180.0, 25.0), "left": (270.0, 25.0)
    }
    assert NAMED_VIEWS["top"] == (0.0, 90.0)
    assert VIEW_SETS == {1: ["front"], 2: ["front", "right"], 4: ["front", "right", "back", "left"]}
    assert camera_name((270, 25), NAMED_VIEWS) == "left" and camera_name((0, 0), NAMED_VIEWS) == "0"


def test_the_old_names_say_where_they_went():
    import trellis_mv.proxy as proxy

    with pytest.raises(ImportError, match=r"trellis_mv.proxy.score is now trellis_mv.eval.score_voxels"):
        proxy.score  # noqa: B018
    with pytest.raises(ImportError, match=r"HELDOUT_VIEWS is now trellis_mv.eval.HELD_OUT_VIEWS"):
        from trellis_mv.proxy import HELDOUT_VIEWS  # noqa: F401
    with pytest.warns(DeprecationWarning, match=r"trellis_mv.parse_camera with names=trellis_mv.proxy.NAMED_VIEWS"):
        assert proxy.parse_view("back") == (180.0, 25.0)
    with pytest.warns(DeprecationWarning, match=r"trellis_mv.camera_name"):
        assert proxy.view_name((180, 25)) == "back"
    with pytest.raises(AttributeError, match="no attribute 'scores'"):
        proxy.scores  # noqa: B018


@settings(max_examples=25, deadline=None)
@given(az=st.floats(0, 359), el=st.floats(-60, 89), x=st.integers(1, 14), y=st.integers(1, 14), z=st.integers(1, 14))
def test_a_lone_voxel_shows_exactly_the_faces_turned_to_the_camera(az, el, x, y, z):
    # shapes live inside the ball of radius 0.97 that every view sees whole; so does this voxel
    assume(sum(((c + 0.5) / 8 - 1) ** 2 for c in (x, y, z)) <= 0.97**2)
    occ = torch.zeros(16, 16, 16, dtype=torch.bool)
    occ[x, y, z] = True
    vis = visible_faces(occ, [(az, el)])[0]
    c = _camera_dir((az, el))
    expect = {f for f, (axis, sign) in enumerate(FACES) if sign * c[axis] > 0.12}  # clearly turned towards it
    got = set(vis.nonzero()[:, 0].tolist())
    assert expect <= got and all(FACES[f][1] * c[FACES[f][0]] > 0 for f in got)
    assert (vis.nonzero()[:, 1:] == torch.tensor([x, y, z])).all()


@pytest.mark.parametrize("seed", [1, HELD_OUT_SEED + 4])
def test_level_and_top_views_see_the_first_voxel_of_each_column(seed):
    s = make_shape(seed)
    occ = torch.from_numpy(s.occupancy)
    vis = visible_faces(occ, ["az0", "top"])
    # az0 looks along -z: per (x, y) column, only the +z face of the largest-z voxel
    zs = torch.arange(16)
    front = torch.zeros(16, 16, 16, dtype=torch.bool)
    col = occ.any(2)
    zmax = torch.where(occ, zs, -1).amax(2)
    xi, yi = col.nonzero(as_tuple=True)
    front[xi, yi, zmax[xi, yi]] = True
    assert torch.equal(vis[0, FACES.index((2, 1))], front)
    assert not vis[0, [f for f in range(6) if FACES[f] != (2, 1)]].any()
    top = torch.zeros(16, 16, 16, dtype=torch.bool)
    ymax = torch.where(occ, zs[None, :, None], -1).amax(1)
    xi, zi = occ.any(1).nonzero(as_tuple=True)
    top[xi, ymax[xi, zi], zi] = True
    assert torch.equal(vis[1, FACES.index((1, 1))], top)


@pytest.mark.parametrize("seed", [0, HELD_OUT_SEED + 9])
def test_visible_faces_are_exposed_and_resolution_independent(seed):
    s = make_shape(seed)
    occ = torch.from_numpy(s.occupancy)
    views = [*VIEW_SETS[4], "az45el30", "top"]
    vis = visible_faces(occ, views)
    fine = visible_faces(occ, views, size=16 * 32)
    assert torch.equal(vis, fine)  # the default resolution misses no face a finer one finds
    padded = torch.nn.functional.pad(occ, (1, 1, 1, 1, 1, 1))
    for f, (axis, sign) in enumerate(FACES):
        neighbour = torch.roll(padded, -sign, axis)[1:17, 1:17, 1:17]
        assert not (vis[:, f] & (neighbour | ~occ)).any()  # never a face between two voxels, never an empty voxel


def test_every_side_of_a_shape_looks_different():
    differ = 0
    for seed in range(40):
        s = make_shape(seed)
        img, _ = render(s.occupancy, s.colors, ["front", "back"], size=64)
        flipped = torch.flip(img[1], [2])
        differ += bool((img[0] - flipped).abs().amax() > 0.2)
        assert (s.labels >= 0).sum() == s.num_voxels and s.labels.max() < len(COMPONENTS)
    assert differ == 40  # front and back are never mirror images of each other


def test_redraw_changes_only_the_named_component():
    s = make_shape(HELD_OUT_SEED + 1)
    t = make_shape(HELD_OUT_SEED + 1, redraw={3: 12345})
    assert np.array_equal(s.labels == 0, t.labels == 0)  # the body
    for k in (1, 2, 4, 5):
        keep = (s.labels == k) & (t.labels != 3)
        assert np.array_equal(keep, (t.labels == k) & (s.labels != 3))
    with pytest.raises(ValueError, match="components are 0..5"):
        make_shape(1, redraw={9: 1})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), side=st.integers(0, 3), stream=st.integers(0, 10**6))
def test_sides_hold_one_paint_each_and_repaint_changes_only_its_side(seed, side, stream):
    s = make_shape(seed)
    assert s.sides is not None and s.labels is not None
    assert ((s.sides >= 0) <= (s.labels == 0)).all()  # paint lies on the body
    paints = {n: {tuple(c) for c in s.colors[s.sides == n]} for n in range(len(SIDES))}
    assert all(len(c) <= 1 for c in paints.values())  # a side has one colour
    top = {tuple(c) for c in s.colors[(s.labels == 0) & (s.sides < 0)]}
    used = [c for cs in [*paints.values(), top] for c in cs]
    assert len(used) == len(set(used))  # the top's and every side's colour differ
    t = make_shape(seed, repaint={side: stream})
    assert np.array_equal(t.occupancy, s.occupancy) and np.array_equal(t.labels, s.labels)
    others = (s.labels == 0) & (s.sides != side) & (t.sides != side)
    assert np.array_equal(t.colors[others], s.colors[others]) and np.array_equal(t.sides[others], s.sides[others])
    new = {tuple(c) for c in t.colors[t.sides == side]}
    assert not new & ({c for n, cs in paints.items() if n != side for c in cs} | top)


def test_repaint_draws_every_colour_the_other_sides_leave():
    s = make_shape(HELD_OUT_SEED + 4)
    kept = {tuple(c) for c in s.colors[(s.labels == 0) & (s.sides != 1)]}
    drawn = set()
    for stream in range(60):
        t = make_shape(HELD_OUT_SEED + 4, repaint={1: stream})
        drawn |= {tuple(c) for c in t.colors[t.sides == 1]}
    assert drawn == {tuple(np.float32(PALETTE[i])) for i in range(len(PALETTE))} - kept  # 8 - 4 kept: 4 colours
    with pytest.raises(ValueError, match="sides are 0..3"):
        make_shape(1, repaint={4: 1})


def test_posterior_draws_look_like_the_shape_from_the_given_views():
    s = make_shape(HELD_OUT_SEED + 7)
    draws = posterior_draws(s, ["front"], samples=4)
    assert len(draws) == 4
    ref = render(s.occupancy, s.colors, ["front"], size=64)
    for d in draws:
        img, mask = render(d.occupancy, d.colors, ["front"], size=64)
        assert torch.equal(mask, ref[1]) and (img - ref[0]).abs().amax() < 1e-6
    assert any(not np.array_equal(d.colors, s.colors) for d in draws)  # what the front hides is drawn afresh
    back = score(draws[0].occupancy, draws[0].colors, s, ["back"])
    assert back["given_color_acc"] < 1.0 or back["given_silhouette_iou"] < 1.0
    four = posterior_draws(s, VIEW_SETS[4], samples=2)
    assert all(score(d.occupancy, d.colors, s, ["front"])["hidden_color_acc_seen"] == 1.0 for d in four)


def test_score_of_the_truth_and_of_nothing():
    s = make_shape(HELD_OUT_SEED + 2)
    perfect = score(s.occupancy, s.colors, s, VIEW_SETS[4])
    assert perfect["iou"] == perfect["fscore"] == perfect["given_silhouette_iou"] == perfect["given_color_acc"] == 1.0
    assert perfect["chamfer"] == perfect["heldout_color_error"] == 0.0
    empty = score(np.zeros_like(s.occupancy), np.zeros_like(s.colors), s, ["front"])
    assert empty["iou"] == empty["given_silhouette_iou"] == empty["given_color_acc"] == empty["hidden_color_acc_seen"] == 0.0
    with pytest.raises(ValueError, match="given_views is empty"):
        score(s.occupancy, s.colors, s, [])


def test_wrong_colours_behind_the_front_count_as_hidden_errors_only():
    s = make_shape(HELD_OUT_SEED + 3)
    occ = torch.from_numpy(s.occupancy)
    front_sees = visible_faces(occ, ["front"])[0].any(0)
    col = s.colors.copy()
    for idx in np.argwhere(s.occupancy & ~front_sees.numpy()):  # repaint every voxel the front does not see
        col[tuple(idx)] = PALETTE[(int(palette_index(col[tuple(idx)])) + 1) % len(PALETTE)]
    # colour is per voxel: a hidden face is right exactly when its voxel shows another face to the front
    seen_any = visible_faces(occ, VIEW_SETS[4]).any(0)
    hidden = seen_any & ~visible_faces(occ, ["front"])[0]
    expect = (hidden & front_sees[None]).sum().item() / hidden.sum().item()
    m1 = score(s.occupancy, col, s, ["front"])
    assert m1["given_color_acc"] == 1.0 and m1["hidden_color_acc_seen"] == pytest.approx(expect) and expect < 0.7
    m4 = score(s.occupancy, col, s, VIEW_SETS[4])
    assert m4["given_color_acc"] < 1.0 and m4["hidden_color_acc_seen"] == m1["hidden_color_acc_seen"]  # same faces


def test_fscore_counts_near_misses_within_the_threshold():
    a = torch.zeros(16, 16, 16, dtype=torch.bool)
    a[2:6, 2:6, 2:6] = True
    b = a.clone()
    b[10, 10, 10] = True  # one stray voxel far away
    assert fscore(a, b) == pytest.approx(2 * (64 / 65) / (1 + 64 / 65))
    assert fscore(a, torch.zeros_like(a)) == 0.0


def test_reference_iou_more_views_pin_the_shape_down_more():
    s = next(make_shape(HELD_OUT_SEED + k) for k in range(50) if "on back" in " ".join(make_shape(HELD_OUT_SEED + k).parts))
    one = reference_iou(s, ["front"], samples=3)
    four = reference_iou(s, VIEW_SETS[4], samples=3)
    assert one["random"] < one["ideal"] <= four["ideal"] <= 1.0
