"""Ranks: a missing rank is named after a timeout instead of waited for forever; ranks that run different jobs say so."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch

from trellis_mv.eval.cli import main as eval_main

PARAMS = {"sparse_structure": {"steps": 1}, "texture": {"steps": 1}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, out: str, case: str) -> None:
    import torch.distributed as dist

    from trellis_mv import PatchError, run_multi_image
    from trellis_mv.proxy import ProxyPipeline, example_images, preprocess

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    images = [preprocess(p) for p in example_images()[:2]]
    error = ""
    try:
        if case == "hung" and rank == 1:
            time.sleep(5)  # alive but never starts the run
        else:
            mode = "stochastic" if case == "different" and rank == 1 else "multidiffusion"
            run_multi_image(ProxyPipeline(), images, mode=mode, params=PARAMS, group=dist.group.WORLD)
    except PatchError as exc:
        error = str(exc)
    finally:
        dist.destroy_process_group()  # a gloo group alive at exit can abort the process (SIGABRT)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(error))


def _spawn(tmp_path: Path, case: str) -> list[str]:
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp_path), case), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_running_different_aggregators_both_say_which_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("TRELLIS_MV_RANK_TIMEOUT", "60")
    errors = _spawn(tmp_path, "different")
    for error in errors:
        assert "rank 1 runs a different job from rank 0: aggregators" in error, error
        assert "Stochastic" in error and "MultiDiffusion" in error


def test_a_rank_that_never_comes_is_named_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("TRELLIS_MV_RANK_TIMEOUT", "2")
    start = time.monotonic()
    errors = _spawn(tmp_path, "hung")
    assert "rank(s) 1 of the group did not reach the start of sampling within 2 s" in errors[0], errors[0]
    assert time.monotonic() - start < 60


def test_a_dead_eval_rank_stops_rank_0_with_its_number(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRELLIS_MV_RANK_TIMEOUT", "0.5")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # rank 1 was launched and died at once
    start = time.monotonic()
    rc = eval_main(["--dataset", "proxy", "--objects", "1", "--views", "1", "--steps", "1", "--threads", "1", "--quiet",
                    "--out", str(tmp_path / "out")])
    assert rc == 2 and time.monotonic() - start < 60
    assert "rank(s) 1 wrote no result in time" in capsys.readouterr().err


def test_a_bad_timeout_is_named(monkeypatch):
    from trellis_mv import PatchError
    from trellis_mv._distributed import rank_timeout

    monkeypatch.setenv("TRELLIS_MV_RANK_TIMEOUT", "soon")
    with pytest.raises(PatchError, match="TRELLIS_MV_RANK_TIMEOUT='soon'"):
        rank_timeout()
