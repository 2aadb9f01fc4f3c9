"""Output folders: nothing of the user's is ever overwritten or deleted, by generate, eval, eval report or eval example."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from trellis_mv import proxy
from trellis_mv._errors import OutputError
from trellis_mv.cli import main
from trellis_mv.eval.cli import main as eval_main

FAST = ["--quiet", "--steps", "1"]
EVAL = ["--dataset", "proxy", "--objects", "1", "--views", "1", "--steps", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def photo() -> str:
    return str(proxy.example_images()[0])


def _generate(out: Path, photo: str, *extra: str) -> int:
    return main(["generate", "--images", photo, "--out", str(out), *FAST, *extra])


def _dead_pid() -> int:
    proc = multiprocessing.get_context("spawn").Process(target=int)
    proc.start()
    proc.join()
    return int(proc.pid)


def test_overwrite_keeps_a_file_trellis_mv_did_not_write(tmp_path, photo, capsys):
    out = tmp_path / "o"
    assert _generate(out, photo) == 0
    shutil.copy(photo, out / "my-photo.png")  # the user's, added after the run
    assert _generate(out, photo, "--overwrite") == 2
    assert "holds files trellis-mv did not write (my-photo.png)" in capsys.readouterr().err
    assert (out / "my-photo.png").read_bytes() == Path(photo).read_bytes()


def test_overwrite_never_replaces_an_input_of_the_run(tmp_path, photo, capsys):
    out = tmp_path / "o"
    assert _generate(out, photo) == 0
    own = out / "comparison.png"  # trellis-mv's own file, given back as a view
    before = own.read_bytes()
    assert _generate(out, str(own), "--overwrite") == 2
    assert "overlap" in capsys.readouterr().err and own.read_bytes() == before


def test_the_marker_lists_what_was_written(tmp_path, photo):
    out = tmp_path / "o"
    from trellis_mv._outputs import MARKER_FILE

    assert _generate(out, photo) == 0
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["kind"] == "generate"
    assert sorted(marker["files"]) == sorted(p.name for p in out.iterdir() if p.name != MARKER_FILE)


def test_eval_out_refuses_a_users_folder_and_a_generate_folder(tmp_path, photo, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.md").write_text("my notes")
    assert eval_main([*EVAL, "--out", str(mine)]) == 2
    assert "did not write (summary.md)" in capsys.readouterr().err
    assert (mine / "summary.md").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["summary.md"]
    gen = tmp_path / "gen"
    assert _generate(gen, photo) == 0
    listing = sorted(p.name for p in gen.iterdir())
    assert eval_main([*EVAL, "--out", str(gen)]) == 2
    assert "`trellis-mv generate`" in capsys.readouterr().err and sorted(p.name for p in gen.iterdir()) == listing


def test_eval_report_and_example_refuse_a_users_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "plan.json").write_text("{}")
    assert eval_main(["report", str(mine)]) == 2
    assert "did not write" in capsys.readouterr().err and not (mine / "summary.csv").exists()
    assert eval_main(["example", str(mine), "--objects", "1"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "plan.json"]
    data = tmp_path / "data"
    assert eval_main(["example", str(data), "--objects", "1"]) == 0
    assert eval_main(["example", str(data), "--objects", "1"]) == 2  # an earlier example: --overwrite replaces it
    assert eval_main(["example", str(data), "--objects", "2", "--overwrite"]) == 0
    assert len([p for p in data.iterdir() if p.is_dir()]) == 2


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, photo, capsys):
    from trellis_mv._outputs import write_lock

    out = tmp_path / "o"
    with write_lock(out):  # another living run holds the folder
        assert _generate(out, photo) == 2
    assert "another trellis-mv run is writing" in capsys.readouterr().err and not out.exists()
    assert _generate(out, photo) == 0  # the lock is gone with its run
    assert _generate(out, photo) == 2  # and the second run of the two is told, not silently merged
    assert "holds an earlier run" in capsys.readouterr().err


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, photo):
    out = tmp_path / "o"
    (tmp_path / ".o.trellis-mv-lock").write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid()}))
    assert _generate(out, photo) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_staging_names_never_collide_with_a_users_files(tmp_path, photo, capsys):
    out = tmp_path / "o"
    assert _generate(out, photo) == 0
    (out / ".trellis-mv-staging-notes").write_text("mine")  # named like a staging folder, inside
    beside = tmp_path / ".trellis-mv-staging-keep"  # and beside it
    beside.mkdir()
    (beside / "data.txt").write_text("mine too")
    assert _generate(out, photo, "--overwrite") == 2
    assert "did not write (.trellis-mv-staging-notes)" in capsys.readouterr().err
    (out / ".trellis-mv-staging-notes").unlink()
    assert _generate(out, photo, "--overwrite") == 0
    assert (beside / "data.txt").read_text() == "mine too"


def test_a_killed_runs_staging_folder_is_cleaned_by_the_next_run(tmp_path, photo):
    stale = tmp_path / ".trellis-mv-staging-abc123"
    stale.mkdir()
    (stale / "mesh.glb").write_bytes(b"half")
    (stale / ".trellis-mv-owner").write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid()}))
    assert _generate(tmp_path / "o", photo) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_symlinked_out_is_refused_before_any_model_work(tmp_path, photo, capsys, monkeypatch):
    target = tmp_path / "real"
    target.mkdir()
    (target / "thesis.tex").write_text("precious")
    link = tmp_path / "link"
    link.symlink_to(target)
    monkeypatch.setattr("trellis_mv.cli.load_adapter", lambda *a, **k: pytest.fail("a model was loaded"))
    assert _generate(link, photo, "--overwrite") == 2
    assert "symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and sorted(p.name for p in target.iterdir()) == ["thesis.tex"]


def test_one_mechanism_for_every_kind(tmp_path):
    from trellis_mv._outputs import check_output, output_folder

    with output_folder(tmp_path / "ex", kind="example") as staging:
        (staging / "obj").mkdir()
    with pytest.raises(OutputError, match="`trellis-mv example`, not of `trellis-mv generate`"):
        check_output(tmp_path / "ex", overwrite=True)
