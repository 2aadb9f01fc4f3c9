"""One camera vocabulary: the API, the command line and the app read the same words as the same camera,
with the model's own named cameras (the proxy's front is raised 25 degrees), and print them back alike."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trellis_mv
from trellis_mv import Camera, ViewError, camera_name, parse_camera
from trellis_mv.cli import main
from trellis_mv.proxy import NAMED_VIEWS, ProxyAdapter, example_images

WORDS = ["front", "back", "90,20", "az45el30"]


class Plain(ProxyAdapter):
    """An adapter that names no cameras of its own: the core's names apply (front is level)."""

    named_cameras = None


@pytest.fixture(scope="module")
def adapters():
    return {"proxy": ProxyAdapter(), "plain": Plain()}


@pytest.mark.parametrize("kind", ["proxy", "plain"])
def test_api_cli_and_app_read_the_same_words_as_the_same_cameras(kind, adapters, tmp_path, monkeypatch):
    from trellis_mv.app._options import run_options
    from trellis_mv.app._ui import App

    adapter = adapters[kind]
    images = [str(p) for p in example_images()]
    fast = {"params": {"sparse_structure": {"steps": 1}, "texture": {"steps": 1}}}
    api = trellis_mv.run_multi_image(adapter, images, cameras=WORDS, seed=0, **fast).cameras

    monkeypatch.setattr("trellis_mv.cli.load_adapter", lambda *a, **k: adapter)
    argv = ["generate", "--images", *(f"{p}@{w}" for p, w in zip(images, WORDS)), "--out", str(tmp_path / "cli"),
            "--steps", "1", "--quiet"]
    assert main(argv) == 0
    cli = [tuple(c) for c in json.loads((tmp_path / "cli" / "summary.json").read_text())["cameras"]]

    app = run_options(images, "; ".join(WORDS), tuple(adapter.samplers), {}, names=App(adapter, work_dir=tmp_path).names)

    front = (0.0, 25.0) if kind == "proxy" else (0.0, 0.0)
    expected = [front, (180.0, front[1]), (90.0, 20.0), (45.0, 30.0)]
    assert list(api) == cli == app.cameras == expected


@given(az=st.floats(0, 359.99), el=st.floats(-90, 90), proxy=st.booleans())
def test_a_printed_camera_reads_back_as_itself(az, el, proxy):
    names = NAMED_VIEWS if proxy else None
    cam = parse_camera((az, el))
    back = parse_camera(camera_name(cam, names), names)
    assert back.azimuth == pytest.approx(cam.azimuth, abs=1e-5) or abs(back.elevation) == 90
    assert back.elevation == pytest.approx(cam.elevation, abs=1e-5)


def test_names_follow_the_model():
    assert camera_name((0, 0)) == "front" and camera_name((0, 0), NAMED_VIEWS) == "0"
    assert camera_name((90, 25), NAMED_VIEWS) == "right" and camera_name((90, 25)) == "90,25"
    assert parse_camera("az90") == parse_camera("90") == Camera(90.0, 0.0)
    assert parse_camera("AZ-30EL10") == Camera(330.0, 10.0)
    with pytest.raises(ViewError, match="expected one of front, right, back, left, top, 'AZIMUTH'"):
        parse_camera("az")
    with pytest.raises(ViewError, match="no camera to name"):
        camera_name(None)
