"""Folder data sets: a changed data set is never resumed, outputs are never data, broken objects are named up front."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from trellis_mv.eval import _run
from trellis_mv.eval._datasets import FolderDataset, write_example_folder
from trellis_mv.eval.cli import main as eval_main

OPTIONS = ["--views", "1", "--steps", "1", "--threads", "1", "--quiet"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_example_folder(tmp_path / "data", objects=1, views=("front", "right"))


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_run, "_load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))


def _eval(data: Path, out: Path, *extra: str) -> int:
    return eval_main(["--dataset", f"folder:{data}", *OPTIONS, "--out", str(out), *extra])


def _object(data: Path) -> Path:
    return next(p for p in sorted(data.iterdir()) if p.is_dir())


def test_resuming_after_the_data_set_changed_is_refused(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(data, out, "--max-jobs", "1") == 0
    config = json.loads((out / "config.json").read_text())
    assert set(config["inputs"]) == {_object(data).name}
    shutil.copy(_object(data) / "right.png", _object(data) / "front.png")  # an edited view
    assert _eval(data, out) == 2
    err = capsys.readouterr().err
    assert f"the inputs of objects {_object(data).name} changed" in err and "--out" in err


def test_the_output_folder_is_never_read_as_data(data, capsys, no_model):
    assert _eval(data, data / "results") == 2  # --out inside the data set
    assert "overlap" in capsys.readouterr().err and not (data / "results").exists()
    run = data / "zz-run"  # a trellis-mv output folder that lies among the objects
    run.mkdir()
    (run / ".trellis-mv.json").write_text('{"trellis_mv": "0", "kind": "eval", "files": []}')
    (run / "front.png").write_bytes((_object(data) / "front.png").read_bytes())
    assert FolderDataset(data).object_ids() == [_object(data).name]


@pytest.mark.parametrize("broken, message", [
    ("nan", "has vertices that are NaN or infinite"),
    ("no faces", "has no faces"),
    ("garbage", "cannot be read"),
])
def test_broken_meshes_are_named_before_any_model_work(data, tmp_path, capsys, no_model, broken, message):
    obj = _object(data)
    mesh = trimesh.load(obj / "mesh.ply", force="mesh")
    if broken == "nan":
        vertices = np.asarray(mesh.vertices).copy()
        vertices[0] = np.nan
        trimesh.Trimesh(vertices, mesh.faces, process=False).export(obj / "mesh.ply")
    elif broken == "no faces":
        (obj / "mesh.ply").unlink()
        (obj / "mesh.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    else:
        (obj / "mesh.ply").write_bytes(b"ply\nformat garbage\n\x00\x01")
    assert _eval(data, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"object {obj.name!r}" in err and message in err and len(err.strip().splitlines()) == 1


def test_two_views_of_one_name_are_an_error(data, tmp_path, capsys, no_model):
    from PIL import Image

    obj = _object(data)
    Image.open(obj / "right.png").convert("RGB").save(obj / "front.jpg")
    assert _eval(data, tmp_path / "out") == 2
    assert "two views named 'front' (front.jpg, front.png)" in capsys.readouterr().err


def test_a_photos_only_data_set_is_refused_before_any_job(data, tmp_path, capsys, no_model):
    obj = _object(data)
    (obj / "mesh.ply").unlink()
    (obj / "cameras.json").unlink()
    assert _eval(data, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "nothing can be scored" in err and "cameras.json" in err


def test_report_with_an_empty_plan_keeps_the_tables(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(data, out) == 0
    before = (out / "summary.csv").read_text()
    assert before.count("\n") > 2
    (out / "plan.json").write_text("{}")
    assert eval_main(["report", str(out)]) == 2
    assert "plan.json is empty" in capsys.readouterr().err
    assert (out / "summary.csv").read_text() == before


@pytest.mark.parametrize("extra, message", [
    (["--threads", "-1"], "--threads -1: give a number of CPU threads >= 1"),
    (["--device", "garbage"], "--device 'garbage' is not a torch device; use cpu, cuda or cuda:N"),
    pytest.param(["--device", "cuda"], "CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")),
])
def test_bad_process_options_are_one_line_errors(data, tmp_path, capsys, no_model, extra, message):
    assert _eval(data, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
