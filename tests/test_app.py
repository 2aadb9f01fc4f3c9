"""The web app: what the page sends is checked with clear messages, and a real headless Chromium
drives the page as a person would (upload, run, see the GLB and the picture, compare, bad input).

The browser tests need Debian's ``chromium`` (``apt-get install chromium``; CI installs it) and
Playwright; Playwright never downloads a browser here, it drives the system one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from trellis_mv import proxy
from trellis_mv.app import InputError, check_photos, parse_cameras, run, run_options, stage_spec
from trellis_mv.app._run import StepClock, stage_steps
from trellis_mv.cli import build_parser, main

STAGES = proxy.STAGES
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# what the page sends, checked without a browser
@given(st.lists(st.one_of(st.none(), st.tuples(st.integers(-720, 720), st.integers(-90, 90))), min_size=1, max_size=8))
def test_view_angles_round_trip(cameras):
    text = "; ".join("" if c is None else f"{c[0]},{c[1]}" for c in cameras)
    parsed = parse_cameras(text, len(cameras))
    if all(c is None for c in cameras):
        assert parsed is None
        return
    assert len(parsed) == len(cameras)
    for got, want in zip(parsed, cameras):
        assert (got is None) == (want is None)
        if want is not None:
            assert 0 <= got[0] < 360 and got[0] == pytest.approx(want[0] % 360) and got[1] == want[1]


def test_view_angles_by_name_and_count():
    assert parse_cameras("front\nright\nback\nleft", 4) == [(0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
    with pytest.raises(InputError, match=r"3 view angles for 4 photos"):
        parse_cameras("front; back; left", 4)
    with pytest.raises(InputError, match=r"view 2: camera 'sideways' is not a camera"):
        parse_cameras("front; sideways", 2)
    with pytest.raises(InputError, match=r"elevation must be between -90 and 90 degrees; got 95"):
        parse_cameras("10,95", 1)


def _text_file(path: Path) -> Path:
    path.write_text("not an image at all")
    return path


def test_photos_are_checked(tmp_path):
    good = [str(p) for p in proxy.example_images()]
    assert check_photos(good) == [Path(p) for p in good]
    with pytest.raises(InputError, match=r"^no photo: upload 1 to 8"):
        check_photos(None)
    with pytest.raises(InputError, match=r"9 photos uploaded; at most 8 .* remove 1"):
        check_photos(good * 2 + good[:1])
    bad = _text_file(tmp_path / "notes.png")  # the extension says image, the content does not
    with pytest.raises(InputError, match=r"photo 3 \('notes.png'\) is not an image"):
        check_photos([*good[:2], str(bad)])


def test_aggregator_choices_are_checked():
    assert stage_spec("stochastic", " order=random, seed=3 ") == "stochastic:order=random, seed=3"
    with pytest.raises(InputError, match=r"stage texture: unknown aggregator 'nope'; registered aggregators: .*multidiffusion"):
        stage_spec("nope", "", where="stage texture")
    with pytest.raises(InputError, match=r"has no option 'colour'; its options are: order, seed"):
        stage_spec("stochastic", "colour=red")
    with pytest.raises(InputError, match=r"order must be 'cycle' or 'random'"):
        stage_spec("stochastic", "order=sideways")
    with pytest.raises(InputError, match=r"is not OPTION=VALUE"):
        stage_spec("stochastic", "order")


def test_run_options_fill_every_stage():
    photos = [str(p) for p in proxy.example_images()[:2]]
    opts = run_options(photos, "front; back", STAGES, {"texture": ("single", "view=1")}, seed="7", steps="4", guidance="2.5")
    assert opts.seed == 7 and opts.cameras == [(0.0, 0.0), (180.0, 0.0)]
    assert opts.stages == {"texture": "single:view=1"}
    assert opts.params == {s: {"steps": 4, "guidance_strength": 2.5} for s in STAGES}
    empty = run_options(photos, "", STAGES, {}, steps="", guidance=None)
    assert empty.params == {s: {} for s in STAGES} and empty.cameras is None
    for field, value, message in [("steps", "0", r"steps must be between 1 and 100"),
                                  ("steps", "2.5", r"steps must be a whole number"),
                                  ("guidance", "lots", r"guidance strength must be a number; got 'lots'"),
                                  ("seed", "-1", r"seed must be between 0 and")]:
        with pytest.raises(InputError, match=message):
            run_options(photos, "", STAGES, {}, **{field: value})
    with pytest.raises(InputError, match=r"unknown stage 'shape'; this model's stages are: sparse_structure, texture"):
        run_options(photos, "", STAGES, {"shape": ("multidiffusion", "")})


@pytest.fixture(scope="module")
def pipeline():
    return proxy.ProxyPipeline()


def test_step_clock_reports_every_step_with_time_left_and_patches_nothing_else(pipeline, tmp_path):
    before = {s: dict(vars(x)) for s, x in pipeline.samplers.items()}
    reports = []
    params = {s: {"steps": 3} for s in STAGES}
    clock = StepClock(stage_steps(pipeline, params), report=lambda f, text: reports.append((f, text)))
    clock.begin()
    summary = run(pipeline, proxy.example_images()[:2], tmp_path / "a", params=params,
                  cameras=[None, (300.0, 10.0)], on_step=clock)
    assert [f for f, _ in reports] == pytest.approx([k / 6 for k in range(1, 7)])
    texts = [t for _, t in reports]
    assert texts[0].startswith("sparse_structure: step 1/3 · ") and texts[-1].startswith("texture: step 3/3 · ")
    assert all(re.search(r" · (about \d+ s|under a second) left$", t) for t in texts), texts
    assert set(clock.seconds) == set(STAGES) and all(v > 0 for v in clock.seconds.values())
    assert sum(clock.seconds.values()) <= summary["seconds"]["total"]
    assert {s: dict(vars(x)) for s, x in pipeline.samplers.items()} == before  # no wrapper left behind
    # a view angle given in the page reaches the result
    assert summary["cameras"] == [None, [300.0, 10.0]]


def test_unknown_step_counts_give_progress_without_a_fraction():
    reports = []
    clock = StepClock({"a": None}, report=lambda f, text: reports.append((f, text)))
    clock.begin()
    clock("a", 0, None)
    assert reports == [(None, "a: step 1")]


def test_a_camera_aware_aggregator_points_at_the_view_angles_field():
    pytest.importorskip("trellis_mv_spatial")
    photos = [str(p) for p in proxy.example_images()[:2]]
    with pytest.raises(InputError) as missing:
        run_options(photos, "", STAGES, {"texture": ("visibility", "")})
    message = str(missing.value)
    assert message.startswith("stage texture: visibility needs a view angle for each photo and no photo has one: "
                              "fill 'View angles'"), message
    assert "cameras=" not in message and "--images" not in message and "patch_sampler" not in message
    assert run_options(photos, "front; ", STAGES, {"texture": ("visibility", "")}).cameras == [(0.0, 0.0), None]
    assert run_options(photos, "front; back", STAGES, {"texture": ("visibility", "")}).stages == {"texture": "visibility"}


def test_a_failed_run_leaves_the_app_serving(pipeline, monkeypatch, tmp_path):
    ui = pytest.importorskip("trellis_mv.app._ui", reason="the app needs gradio: pip install 'trellis-mv[app]'")
    app = ui.App(pipeline, work_dir=tmp_path)
    opts = run_options([str(p) for p in proxy.example_images()[:2]], "", STAGES, {}, steps="2")
    before = {s: dict(vars(x)) for s, x in pipeline.samplers.items()}

    def broken(pipe, *args, **kwargs):
        pipe.samplers["texture"].sample(None, None, None)  # fails inside a stage

    monkeypatch.setattr(ui, "run", broken)
    with pytest.raises(TypeError) as failed:
        app.generate(opts)
    message = ui._error(failed.value)
    assert message.startswith("**Error:** the run failed (TypeError:") and "still serving" in message
    assert not app.lock.locked() and {s: dict(vars(x)) for s, x in pipeline.samplers.items()} == before
    monkeypatch.undo()
    summary, out = app.generate(opts)
    assert summary["num_views"] == 2 and (out / "mesh.glb").is_file()
    assert set(summary["stage_seconds"]) == set(STAGES)


def test_the_viewer_gets_the_result_mesh_not_the_diagnostics(tmp_path):
    ui = pytest.importorskip("trellis_mv.app._ui", reason="the app needs gradio: pip install 'trellis-mv[app]'")
    names = ["comparison.png", "diagnostics.npz", "dominant_view.glb", "dominant_view.png", "mesh.glb", "summary.json"]
    glb, png, paths = ui._outputs({"outputs": names}, tmp_path)
    assert (Path(glb).name, Path(png).name, len(paths)) == ("mesh.glb", "comparison.png", 6)
    assert [Path(p).name for p in ui._diagnostics({"outputs": names}, tmp_path)] == ["dominant_view.glb", "dominant_view.png"]
    assert ui._diagnostics({"outputs": names[:1] + names[4:]}, tmp_path) == (None, None)


def test_cli_registers_app_without_importing_gradio():
    args = build_parser().parse_args(["app", "--port", "8123"])
    assert (args.command, args.port, args.model, args.host) == ("app", 8123, "proxy", "127.0.0.1")
    code = "import sys, trellis_mv.cli; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_app_on_a_missing_trellis2_says_so(monkeypatch, capsys):
    pytest.importorskip("gradio", reason="the app needs gradio: pip install 'trellis-mv[app]'")
    for name in ("trellis2", "trellis2.pipelines", "trellis", "trellis.pipelines"):
        monkeypatch.setitem(sys.modules, name, None)  # as where neither TRELLIS.2 nor TRELLIS is installed
    assert main(["app", "--model", "microsoft/TRELLIS.2-4B", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert "TRELLIS.2 is not importable" in err and "--model proxy" in err


# ------------------------------------------------------------------------------------------
# a real browser
def _chromium() -> str | None:
    for candidate in (os.environ.get("TRELLIS_MV_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``trellis-mv app`` in a subprocess on a free local port; yields its URL."""
    pytest.importorskip("gradio", reason="the app needs gradio: pip install 'trellis-mv[app]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trellis_mv.cli", "app", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        while "serving model 'proxy'" not in log.read_text():  # the app prints this line once it serves
            assert proc.poll() is None and time.perf_counter() - start < 120, log.read_text()
            time.sleep(0.1)
        print(f"app ready in {time.perf_counter() - start:.1f} s")
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (dev extra)")
    exe = _chromium()
    if exe is None:
        msg = ("NO CHROMIUM FOUND: the browser tests of the web app did not run. Install Debian's chromium "
               "(apt-get install chromium) or point TRELLIS_MV_CHROMIUM at a Chromium executable.")
        print(f"\n{'!' * 20} {msg} {'!' * 20}", file=sys.stderr)
        pytest.skip(msg)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server)
    pg.wait_for_selector("#run")
    yield pg
    context.close()


def _upload(pg, files):
    pg.locator("#photos input[type=file]").set_input_files([str(f) for f in files])
    for f in files:  # each file is listed once uploaded
        pg.wait_for_selector(f"#photos td.filename[aria-label='{Path(f).name}']")


def _choose(pg, elem_id, value):
    box = pg.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    pg.locator(f"ul[role=listbox] li[role=option][aria-label='{value}']").click()
    assert box.input_value() == value


def _status(pg, start: str) -> str:
    pg.wait_for_function(f"document.querySelector('#status').innerText.trim().startsWith({start!r})")
    return pg.inner_text("#status")


def test_browser_run_shows_glb_picture_cost_and_downloads(page, server):
    _upload(page, proxy.example_images())
    page.fill("#steps textarea, #steps input", "4")
    _choose(page, "agg-sparse_structure", "stochastic")
    page.click("#run")
    status = _status(page, "Done")
    assert re.match(r"Done \(run \d+\): 4 views, [\d.]+ s\.$", status), status
    # the 3D viewer holds the GLB, and the picture is shown
    page.wait_for_selector("#model3d canvas")
    glb = page.locator("#model3d a[data-testid=model3d-download-link]").get_attribute("href")
    assert glb and glb.split("?")[0].endswith(".glb")
    page.wait_for_selector("#picture img")
    assert "comparison" in (page.locator("#picture img").get_attribute("src") or "")
    summary = page.inner_text("#summary")
    assert summary.startswith("4 views ·")  # no view angles typed: none shown
    assert "sparse_structure = stochastic" in summary and "texture = multidiffusion" in summary
    cost = page.inner_text("#cost")
    # stochastic with guidance: positive and negative forward a step; multidiffusion: one batched forward a step
    assert re.search(r"sparse_structure\s+stochastic\s+8\s+[\d.]+", cost), cost
    assert re.search(r"texture\s+multidiffusion\s+4\s+[\d.]+", cost), cost
    # the downloads are served: the summary JSON says what the page said
    links = {a.get_attribute("download"): a.get_attribute("href") for a in page.locator("#downloads a[download]").all()}
    names = sorted(n for n in links if n.endswith((".glb", ".png", ".json")))
    assert names == ["comparison.png", "mesh.glb", "summary.json"], links
    data = json.loads(page.request.get(links["summary.json"]).text())
    assert data["num_views"] == 4 and data["aggregators"] == {"sparse_structure": "stochastic", "texture": "multidiffusion"}
    forwards = {s: v["model_forwards"] for s, v in data["cost"]["stages"].items()}
    assert forwards == {"sparse_structure": 8, "texture": 4} and data["cost"]["model_forwards"] == 12
    if os.environ.get("TRELLIS_MV_APP_SCREENSHOT"):  # the picture in docs/app.rst
        page.wait_for_timeout(1500)  # the viewer's first frames
        path = os.environ["TRELLIS_MV_APP_SCREENSHOT"]
        page.screenshot(path=path, full_page=True)
        Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)


def test_browser_bad_input_gets_a_message_and_the_app_keeps_serving(page, tmp_path):
    page.click("#run")
    assert _status(page, "Error") == "Error: no photo: upload 1 to 8 photos of one object (PNG or JPEG)"
    _upload(page, [proxy.example_images()[0], _text_file(tmp_path / "notes.txt")])
    page.click("#run")
    message = _status(page, "Error")
    assert message == "Error: photo 2 ('notes.txt') is not an image; upload PNG or JPEG files"
    assert "Traceback" not in page.content()
    page.reload()
    page.wait_for_selector("#run")
    _upload(page, proxy.example_images()[:2])
    page.fill("#opts-texture textarea, #opts-texture input", "colour=red")
    page.click("#run")
    assert "has no option 'colour'" in _status(page, "Error")
    page.fill("#opts-texture textarea, #opts-texture input", "")
    page.fill("#steps textarea, #steps input", "2")
    page.click("#run")
    assert re.match(r"Done \(run \d+\): 2 views", _status(page, "Done"))


def test_browser_compare_and_two_tabs_at_once(page, browser, server):
    other = browser.new_page()
    other.goto(server)
    other.wait_for_selector("#run")
    for pg in (page, other):
        _upload(pg, proxy.example_images()[:3])
        pg.fill("#steps textarea, #steps input", "2")
    page.get_by_role("tab", name="Compare").click()
    _choose(page, "cmp-agg-1", "stochastic")
    page.click("#compare")
    other.click("#run")  # queued behind the comparison on the one shared pipeline
    assert re.match(r"Done \(run \d+\): compared multidiffusion, stochastic on 3 views\.$", _status(page, "Done"))
    assert re.match(r"Done \(run \d+\): 3 views", _status(other, "Done"))
    for k, name in enumerate(["multidiffusion", "stochastic"]):
        assert page.inner_text(f"#cmp-title-{k}").startswith(f"{k + 1} · {name}")
        page.wait_for_selector(f"#cmp-model3d-{k} canvas")
        page.wait_for_selector(f"#cmp-picture-{k} img")
    assert page.inner_text("#cmp-title-2").strip() == ""
    other.close()


# ------------------------------------------------------------------------------------------
# what a researcher sees: the result, prepared photos, progress, messages, a readable comparison
def _photo_on_a_table(path: Path, busy: bool = False) -> Path:
    """A 1600x1200 JPEG of a box on a plain table top (``busy``: on a graded one)."""
    import numpy as np

    pixels = np.empty((1200, 1600, 3))
    pixels[:] = np.linspace(0, 255, 1600)[None, :, None] if busy else (225, 225, 220)
    pixels[300:1000, 500:900] = (180, 40, 30)
    Image.fromarray(pixels.astype("uint8")).save(path, quality=85)
    return path


def test_browser_example_photos_are_one_click_away(page):
    page.get_by_text("4 views: front, right, back, left").click()
    for f in proxy.example_images():
        page.wait_for_selector(f"#photos td.filename[aria-label='{f.name}']")
    assert page.input_value("#views textarea, #views input") == "front; right; back; left"
    page.wait_for_function("document.querySelectorAll('#prepared img').length === 4")
    assert page.inner_text("#prepare-notes").count("already a square on black") == 4


def test_browser_photos_are_prepared_with_a_preview_and_a_warning(page, tmp_path):
    _upload(page, [_photo_on_a_table(tmp_path / "mug.jpg"), _photo_on_a_table(tmp_path / "busy.jpg", busy=True)])
    page.wait_for_function("document.querySelectorAll('#prepared img').length === 2")
    notes = page.inner_text("#prepare-notes")
    assert re.search(r"photo 1 \(mug.jpg\): background #e\w+ removed; cropped to the object", notes), notes
    assert re.search(r"photo 2 \(busy.jpg\): warning: the background is not plain", notes), notes
    page.uncheck("#prepare input")
    page.wait_for_function("document.querySelector('#prepare-notes').innerText.includes('used as uploaded')")
    page.check("#prepare input")
    page.fill("#steps textarea, #steps input", "2")
    page.click("#run")
    assert re.match(r"Done \(run \d+\): 2 views", _status(page, "Done"))
    links = {a.get_attribute("download"): a.get_attribute("href") for a in page.locator("#downloads a[download]").all()}
    data = json.loads(page.request.get(links["summary.json"]).text())
    assert [Path(p).name for p in data["images"]] == ["0_mug.png", "1_busy.png"]  # the prepared photos ran


def test_browser_viewer_shows_the_result_and_diagnostics_apart(page):
    pytest.importorskip("trellis_mv_spatial")
    _upload(page, proxy.example_images()[:2])
    page.fill("#views textarea, #views input", "front; right")
    page.fill("#steps textarea, #steps input", "2")
    _choose(page, "agg-texture", "visibility")
    assert "None for this run" in page.inner_text("#diagnostics-about")
    assert page.locator("#diagnostics3d a[data-testid=model3d-download-link]").count() == 0
    page.click("#run")
    assert re.match(r"Done \(run \d+\): 2 views", _status(page, "Done"))
    glb = page.locator("#model3d a[data-testid=model3d-download-link]").get_attribute("href")
    assert glb.split("?")[0].endswith("/mesh.glb"), glb
    page.locator("#diagnostics3d").scroll_into_view_if_needed()  # the viewer draws once it is on screen
    page.wait_for_selector("#diagnostics3d canvas")
    diag = page.locator("#diagnostics3d a[data-testid=model3d-download-link]").get_attribute("href")
    assert diag.split("?")[0].endswith("/dominant_view.glb"), diag
    assert "Not the result" in page.inner_text("#diagnostics")


def test_browser_a_missing_view_angle_points_at_the_field_and_a_new_run_clears_the_error(page):
    pytest.importorskip("trellis_mv_spatial")
    _upload(page, proxy.example_images()[:2])
    page.fill("#steps textarea, #steps input", "40")  # long enough to watch the progress
    _choose(page, "agg-texture", "visibility")
    page.click("#run")
    message = _status(page, "Error")
    assert "visibility needs a view angle for each photo" in message and "fill 'View angles'" in message, message
    assert "cameras=" not in message and "--images" not in message
    page.fill("#views textarea, #views input", "front; right")
    page.click("#run")
    page.wait_for_function("!document.querySelector('#status').innerText.includes('Error')", timeout=2_000)
    # per-step progress with the time left
    page.wait_for_function(r"/(sparse_structure|texture): step \d+\/40 · (about \d+ s|under a second) left/"
                           ".test(document.body.innerText)")
    assert re.match(r"Done \(run \d+\): 2 views", _status(page, "Done"))


def test_browser_compare_is_readable(page):
    _upload(page, proxy.example_images()[:2])
    page.fill("#steps textarea, #steps input", "2")
    page.get_by_role("tab", name="Compare").click()
    _choose(page, "cmp-agg-1", "stochastic")
    page.click("#compare")
    _status(page, "Done")
    boxes = [page.locator(f"#cmp-model3d-{k}").bounding_box() for k in range(2)]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and boxes[1]["x"] >= boxes[0]["x"] + boxes[0]["width"]  # side by side
    for k, name in enumerate(["multidiffusion", "stochastic"]):
        assert page.inner_text(f"#cmp-title-{k}").startswith(f"{k + 1} · {name}")
        cells = page.locator(f"#cmp-cost-{k} td, #cmp-cost-{k} th")
        assert cells.count() >= 9
        heights = [cells.nth(i).bounding_box()["height"] for i in range(cells.count())]
        assert max(heights) < 2 * min(heights), heights  # no cell wraps letter by letter
    names = [a.get_attribute("download") for a in page.locator("#cmp-downloads a[download]").all()]
    assert {"1-multidiffusion-mesh.glb", "2-stochastic-mesh.glb", "2-stochastic-summary.json"} <= set(names), names
    for cell in page.locator("#cmp-downloads td.filename").all():  # the whole name is shown
        assert cell.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), cell.inner_text()
