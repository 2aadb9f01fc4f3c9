"""The proxy model: data, renderer, weights, regression, training, generate()."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trellis_mv.eval import score_voxels as score
from trellis_mv.proxy import (
    HELD_OUT_SEED,
    VIEW_SETS,
    ProxyPipeline,
    input_views,
    load_models,
    make_shape,
    preprocess,
    render,
)


@pytest.fixture(scope="module")
def pipe() -> ProxyPipeline:
    return ProxyPipeline()


def test_shapes_are_deterministic_and_differ_by_seed():
    a, b, c = make_shape(5), make_shape(5), make_shape(6)
    assert (a.occupancy == b.occupancy).all() and (a.colors == b.colors).all()
    assert not (a.occupancy == c.occupancy).all()
    assert (a.colors[~a.occupancy] == 0).all() and (a.colors[a.occupancy].sum(-1) > 0).all()


@pytest.mark.parametrize("seed", [0, 11, HELD_OUT_SEED + 3])
def test_axis_view_silhouettes_equal_occupancy_projections(seed):
    s = make_shape(seed)
    _, mask = render(s.occupancy, s.colors, ["az0", "az180", "az90", "az270", "top"], size=32)  # level cameras
    cells = mask.reshape(5, 16, 2, 16, 2).all(4).all(2).numpy()  # [view, row, col] per voxel
    occ = s.occupancy  # [x, y, z], y up
    expect = {
        "front": occ.any(2).T[::-1],  # rows: y from top, cols: x
        "back": occ.any(2).T[::-1, ::-1],
        "right": occ.any(0)[::-1, ::-1],  # rows: y from top, cols: z from front (image right is -z)
        "left": occ.any(0)[::-1],
        "top": occ.any(1).T,  # rows: z from back (top of image) to front, cols: x
    }
    for i, name in enumerate(expect):
        assert (cells[i] == expect[name]).all(), name


def test_weights_load_and_bad_files_fail_clearly(tmp_path):
    from trellis_mv.proxy import default_weights

    models = load_models(default_weights())
    assert sum(p.numel() for p in models.parameters()) > 1e5
    with pytest.raises(FileNotFoundError, match="weights="):
        load_models(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="weights="):
        load_models(bad)


@pytest.mark.parametrize("i", [3])  # a shape whose back one view cannot tell
def test_regression_shipped_weights_use_their_views(pipe, i):
    """Four views pin a held-out shape down better than one, and keep the front as one view does."""
    from trellis_mv import run_multi_image

    s = make_shape(HELD_OUT_SEED + i)
    scores = {}
    for n in (1, 4):
        img = input_views(s.occupancy, s.colors, VIEW_SETS[n])
        res = run_multi_image(pipe, list(img), mode="multidiffusion", seed=i).output
        scores[n] = score(res.occupancy[0], res.colors[0], s, VIEW_SETS[n])
    assert scores[4]["iou"] > 0.8 and scores[4]["iou"] > scores[1]["iou"] + 0.1
    assert scores[1]["first_silhouette_iou"] > 0.9 and scores[4]["first_silhouette_iou"] > 0.9


def test_short_cpu_training_lowers_the_loss():
    from trellis_mv.proxy import ProxyConfig
    from trellis_mv.proxy.train import train

    small = ProxyConfig(width=32, heads=2, encoder_layers=1, structure_blocks=2, texture_blocks=2)
    out = train(steps=6, batch=4, shapes=4, seed=0, lr=2e-3, log_every=100, verbose=False, config=small)
    before, after = out["eval_losses_before"], out["eval_losses_after"]
    assert after["structure"] + after["texture"] < before["structure"] + before["texture"]


def test_preprocess_rgba_gray_nonsquare():
    rgba = Image.new("RGBA", (100, 50), (255, 0, 0, 128))
    x = preprocess(rgba)
    assert x.shape == (3, 64, 64)
    assert abs(x[0, 32, 32].item() - 128 / 255) < 0.02 and x[0, 0, 32] == 0  # composited on black, padded
    assert preprocess(Image.new("L", (64, 64), 100)).shape == (3, 64, 64)


def test_generate_writes_outputs_and_errors_leave_nothing(tmp_path, pipe):
    from trellis_mv import ImageError, generate

    views = []
    s = make_shape(HELD_OUT_SEED + 7)
    img, _ = render(s.occupancy, s.colors, ["front", "back"], size=96)
    for name, im in zip(["obj_front.png", "view2.png"], img):
        p = tmp_path / name
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).convert("L").save(p)
        views.append(p)
    out = tmp_path / "out"
    steps = {"sparse_structure": {"steps": 4}, "texture": {"steps": 4}}
    summary = generate(pipe, views, out, mode="stochastic", seed=1, params=steps)
    assert sorted(p.name for p in out.iterdir()) == [".trellis-mv.json", "comparison.png", "mesh.glb", "summary.json"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["aggregators"] == {"sparse_structure": "stochastic", "texture": "stochastic"}
    assert on_disk["images"][0].endswith("obj_front.png") and summary["cost"]["model_forwards"] > 0

    with pytest.raises(ImageError, match=r"view 1 \(.*nope.png\) does not exist"):
        generate(pipe, [views[0], tmp_path / "nope.png"], tmp_path / "o2")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ImageError, match="not a readable image"):
        generate(pipe, [text], tmp_path / "o3")
    with pytest.raises(ImageError, match="no views"):
        generate(pipe, [], tmp_path / "o4")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["out"]  # no partial output folders
