"""The trellis-mv command: demo, generate on the proxy, errors with a non-zero exit and no partial files."""

import json
import sys

import pytest
from PIL import Image

from trellis_mv import proxy
from trellis_mv.cli import main


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return [str(p) for p in proxy.example_images()]


def test_demo_writes_mesh_picture_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--views", "2", "--quiet", "--steps", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".trellis-mv.json", "comparison.png", "mesh.glb", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_views"] == 2 and summary["cameras"][1] == [90.0, 25.0]
    assert summary["aggregators"] == {"sparse_structure": "multidiffusion", "texture": "multidiffusion"}
    assert summary["params"]["texture"]["steps"] == 4
    # multidiffusion: one forward per step and stage, views and negative batched
    assert summary["cost"]["model_forwards"] == 2 * 4
    assert "wrote comparison.png, mesh.glb, summary.json" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--views", "1", "--quiet", "--steps", "2"]) == 2  # an earlier run
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--views", "1", "--quiet", "--steps", "2", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["num_views"] == 1


def test_generate_per_stage_choices(tmp_path, views):
    out = tmp_path / "g"
    rc = main(["generate", "--images", *views[:3], "--out", str(out), "--quiet", "--json",
               "--mode", "stochastic:order=random,seed=1", "--stage", "texture=single:view=2",
               "--steps", "3", "--steps", "texture=2", "--guidance-strength", "texture=1.0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aggregators"] == {"sparse_structure": "stochastic", "texture": "single"}
    assert summary["params"]["sparse_structure"]["steps"] == 3 and summary["params"]["texture"]["steps"] == 2
    # stochastic with guidance: 2 forwards a step; single at strength 1: 1 forward a step
    forwards = {s: v["model_forwards"] for s, v in summary["cost"]["stages"].items()}
    assert forwards == {"sparse_structure": 6, "texture": 2}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "missing.png"], "view 0 (missing.png) does not exist"),
        (["--images", "{readme}"], "is not a readable image"),
        (["--images", "{front}", "--mode", "nope"], "unknown aggregator 'nope'"),
        (["--images", "{front}", "--stage", "shape=stochastic"], "unknown stage 'shape'"),
        (["--images", "{front}", "--mode", "stochastic:ordre=random"], "has no option 'ordre'"),
        (["--images", "{front}", "--pipeline-type", "512"], "--pipeline-type applies to TRELLIS.2 / TRELLIS models only"),
        (["--images", "{front}", "--steps", "texture=0"], "steps must be an integer >= 1"),
        (["--images", "{front}", "--guidance-strenght", "3"], "unrecognized arguments"),
        (["--images", "{front}", "--cfg-strength", "3"], "TRELLIS.2 uses guidance_strength"),
        (["--images", "{front}", "--seed", "-3"], "seed must be an integer >= 0"),
        (["--images", "{front}", "{front}", "--stage", "texture=single:view=5"], "view=5 but only 2 view(s)"),
        (["--images", "{front}", "--num-samples", "3", "--max-batch", "2"], "max_batch=2 is smaller than num_samples=3"),
        (["--images", "{front}@sideways"], "the image exists, but camera 'sideways' is not"),
        (["--images", "{front}", "{front}", "--weights", "1", "-1"], "finite and non-negative"),
    ],
)
def test_generate_errors_exit_2_and_write_nothing(tmp_path, capsys, views, argv, message):
    readme = tmp_path / "README.md"
    readme.write_text("not an image")
    out = tmp_path / "out"
    argv = [a.format(front=views[0], readme=readme) for a in argv]
    message = message.format(front=views[0])
    try:
        code = main(["generate", *argv, "--out", str(out), "--quiet", "--steps", "2"])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and ("trellis-mv: error: " in err or "usage:" in err)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no staging folder left behind


def test_trellis2_missing_points_to_the_proxy(tmp_path, capsys, views, monkeypatch):
    for name in ("trellis2", "trellis2.pipelines"):
        monkeypatch.setitem(sys.modules, name, None)  # as where TRELLIS.2 is not installed
    model = tmp_path / "TRELLIS.2-4B"
    model.mkdir()
    (model / "pipeline.json").write_text('{"name": "Trellis2ImageTo3DPipeline", "args": {"models": {}}}')
    out = tmp_path / "out"
    assert main(["generate", "--images", views[0], "--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "TRELLIS.2 is not importable" in err and "--model proxy" in err
    assert not out.exists()


def test_output_folder_that_is_a_file(tmp_path, capsys, views):
    target = tmp_path / "taken"
    target.write_text("")
    assert main(["generate", "--images", views[0], "--out", str(target), "--quiet", "--steps", "2"]) == 2
    assert "trellis-mv: error:" in capsys.readouterr().err
    assert target.read_text() == ""


def test_grayscale_rgba_and_non_square_inputs_run(tmp_path, views):
    rgba = Image.open(views[0]).convert("RGBA").resize((80, 64))
    rgba.save(tmp_path / "wide_front.png")
    Image.open(views[1]).convert("L").save(tmp_path / "gray_right.png")
    out = tmp_path / "out"
    assert main(["generate", "--images", str(tmp_path / "wide_front.png"), str(tmp_path / "gray_right.png"),
                 "--out", str(out), "--quiet", "--steps", "2"]) == 0
    assert (out / "mesh.glb").stat().st_size > 0


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda: Image.new("I;16", (48, 48), 40000), (156, 156, 156)),
        (lambda: Image.new("I", (48, 48), 65535), (255, 255, 255)),
        (lambda: Image.new("F", (48, 48), 0.5), (128, 128, 128)),
        (lambda: Image.new("F", (48, 48), 200.0), (200, 200, 200)),
        (lambda: Image.new("CMYK", (48, 48), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("1", (48, 48), 1), (255, 255, 255)),
        (lambda: Image.new("LA", (48, 48), (90, 255)), (90, 90, 90, 255)),
    ],
    ids=["16-bit", "32-bit", "float-unit", "float-255", "cmyk", "bilevel", "gray-alpha"],
)
def test_every_image_mode_is_converted_faithfully(tmp_path, make, expect):
    from trellis_mv._images import load_image

    image = make()
    path = tmp_path / ("view.tiff" if image.mode in ("F", "I", "CMYK") else "view.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode in ("RGB", "RGBA") and loaded.getpixel((5, 5)) == expect


def test_palette_transparency_nan_pixels_and_decompression_bombs(tmp_path, monkeypatch):
    from trellis_mv import ImageError
    from trellis_mv._images import load_image

    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert load_image(tmp_path / "pal.png").getpixel((3, 3)) == (250, 10, 10, 255)
    Image.new("F", (8, 8), float("nan")).save(tmp_path / "nan.tiff")
    with pytest.raises(ImageError, match="NaN or Inf pixel values"):
        load_image(tmp_path / "nan.tiff")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(tmp_path / "big.png")


def test_cameras_after_at_reach_the_summary_and_lists_reach_aggregators(tmp_path, views):
    out = tmp_path / "out"
    assert main(["generate", "--images", f"{views[0]}@front", f"{views[1]}@90,20", "--out", str(out), "--quiet",
                 "--steps", "1", "--mode", "stochastic", "--weights", "2", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # the proxy's own camera names apply: its front is raised 25 degrees, as its views are rendered
    assert summary["cameras"] == [[0.0, 25.0], [90.0, 20.0]] and summary["weights"] == [2 / 3, 1 / 3]


def _photo(path, size=(400, 300), background=(225, 225, 220), box=(100, 60, 220, 240), colour=(180, 40, 30), busy=False):
    """A JPEG of a box on a plain (or, ``busy``, a graded) background, the way a phone sees an object on a table."""
    import numpy as np

    rng = np.random.default_rng(0)
    pixels = np.empty((size[1], size[0], 3))
    pixels[:] = background
    if busy:
        pixels[:] = np.linspace(0, 255, size[0])[None, :, None]
    pixels += rng.normal(0, 3, pixels.shape)  # sensor noise and JPEG blocks
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = colour
    Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(path, quality=85)
    return str(path)


def test_prepare_photos_cuts_out_a_plain_background_at_one_scale(tmp_path):
    import numpy as np

    from trellis_mv._images import FILL, prepare_photos

    big = _photo(tmp_path / "front.jpg", size=(1600, 1200), box=(500, 300, 900, 1000))  # 400 x 700 object
    small = _photo(tmp_path / "side.jpg", size=(1600, 1200), box=(1000, 500, 1200, 850))  # 200 x 350, off-centre
    a, b = prepare_photos([big, small])
    assert a.warning is b.warning is None and a.note.startswith("background #e")
    side = a.image.size[0]
    assert a.image.size == b.image.size and side == pytest.approx(700 / FILL, abs=4) and a.image.mode == "RGBA"
    alpha_a, alpha_b = (np.asarray(p.image)[..., 3] > 0 for p in (a, b))
    ys, xs = np.nonzero(alpha_a)  # JPEG blurs the edge by a pixel or two
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == pytest.approx((700, 400), abs=3)  # not the table
    ys, xs = np.nonzero(alpha_b)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == pytest.approx((350, 200), abs=3)  # same scale
    assert (ys.min() + ys.max()) / 2 == pytest.approx(side / 2, abs=2) and (xs.min() + xs.max()) / 2 == pytest.approx(
        side / 2, abs=2)  # centred, though it was off-centre in the photo
    assert np.asarray(a.image)[side // 2, side // 2, :3].tolist() == pytest.approx([180, 40, 30], abs=12)


def test_prepare_photos_warns_on_a_busy_background_and_keeps_the_models_own_views(tmp_path):
    from trellis_mv._images import prepare_photos

    [busy] = prepare_photos([_photo(tmp_path / "busy.jpg", busy=True)])
    assert busy.warning.startswith("the background is not plain (only ") and "Remove it first" in busy.warning
    assert busy.image.size == (400, 400) and busy.note == "used as it came; padded to a square"
    for original, prepared in zip(proxy.example_images(), prepare_photos(proxy.example_images())):
        assert prepared.warning is None and prepared.note.startswith("already a square on black")
        assert prepared.image.tobytes() == Image.open(original).convert("RGB").tobytes()


def test_generate_preprocess_prepares_the_photos_and_warns(tmp_path, capsys):
    plain = _photo(tmp_path / "front.jpg")
    busy = _photo(tmp_path / "back.jpg", busy=True)
    out = tmp_path / "g"
    assert main(["generate", "--images", plain, f"{busy}@back", "--preprocess", "--out", str(out), "--steps", "2",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"trellis-mv: warning: {busy}: the background is not plain" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_views"] == 2 and summary["cameras"][1] == list(proxy.parse_view("back"))
    assert [p.rsplit("/", 1)[-1] for p in summary["images"]] == ["0_front.png", "1_back.png"]
