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
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "mesh.glb", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_views"] == 2
    assert summary["aggregators"] == {"sparse_structure": "multidiffusion", "texture": "multidiffusion"}
    assert summary["params"]["texture"]["steps"] == 4
    # multidiffusion: one forward per step and stage, views and negative batched
    assert summary["model_calls"]["total"] == 2 * 4
    assert "wrote comparison.png, mesh.glb, summary.json" in capsys.readouterr().out


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
    assert summary["model_calls"] == {"sparse_structure": 6, "texture": 2, "total": 8}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "missing.png"], "images[0]='missing.png' does not exist"),
        (["--images", "{readme}"], "is not a readable image"),
        (["--images", "{front}", "--mode", "nope"], "unknown aggregator 'nope'"),
        (["--images", "{front}", "--stage", "shape=stochastic"], "unknown stage 'shape'"),
        (["--images", "{front}", "--mode", "stochastic:ordre=random"], "has no option 'ordre'"),
        (["--images", "{front}", "--pipeline-type", "512"], "--pipeline-type applies to TRELLIS.2 models only"),
        (["--images", "{front}", "{front}", "--weights", "1", "-1"], "finite and non-negative"),
    ],
)
def test_generate_errors_exit_2_and_write_nothing(tmp_path, capsys, views, argv, message):
    readme = tmp_path / "README.md"
    readme.write_text("not an image")
    out = tmp_path / "out"
    argv = [a.format(front=views[0], readme=readme) for a in argv]
    assert main(["generate", *argv, "--out", str(out), "--quiet", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trellis-mv: error: ") and message in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no staging folder left behind


def test_trellis2_missing_points_to_the_proxy(tmp_path, capsys, views, monkeypatch):
    for name in ("trellis2", "trellis2.pipelines"):
        monkeypatch.setitem(sys.modules, name, None)  # as where TRELLIS.2 is not installed
    out = tmp_path / "out"
    assert main(["generate", "--images", views[0], "--model", "microsoft/TRELLIS.2-4B", "--out", str(out)]) == 2
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
