"""End to end on the proxy: torchrun over 2 processes and an interrupted run give the tables of one plain run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trellis_mv.cli import main as cli_main
from trellis_mv.eval import _run
from trellis_mv.eval.cli import main as eval_main

# 2 objects, N in {1, 2}: per object multidiffusion on 2 view sets and the single view on 2 views = 8 jobs
ARGS = ["--dataset", "proxy", "--objects", "2", "--views", "1", "2", "--aggregators", "multidiffusion", "--seeds", "1",
        "--steps", "2", "--threads", "1", "--quiet"]
TABLES = ("summary.csv", "paired.csv")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    return env


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    assert eval_main([*ARGS, "--out", str(out)]) == 0
    return out


def test_plain_run_writes_the_tables_with_every_baseline(plain):
    summary = (plain / "summary.csv").read_text().splitlines()
    assert summary[0] == "aggregator,num_views,metric,mean,ci95,n"
    labels = {(row.split(",")[0], row.split(",")[1]) for row in summary[1:]}
    assert {("multidiffusion", "2"), ("single:view=0", "2"), ("single:view=1", "2"), ("single-mean", "2"),
            ("single-best", "2")} <= labels
    metrics = {row.split(",")[2] for row in summary[1:]}
    assert {"iou", "chamfer", "model_forwards", "latent_rows"} <= metrics
    paired = (plain / "paired.csv").read_text().splitlines()
    assert paired[0] == "aggregator,num_views,baseline,metric,diff,ci95,p,n"
    assert {r.split(",")[2] for r in paired[1:]} == {"single-mean", "single-best"}
    assert (plain / "summary.md").read_text().startswith("# Evaluation")
    assert "seconds" in (plain / "timing.csv").read_text()


def test_torchrun_on_two_processes_gives_exactly_the_same_tables(plain, tmp_path):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trellis_mv.eval",
           *ARGS, "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "results").iterdir()) == ["rank-0000.jsonl", "rank-0001.jsonl"]
    for name in TABLES:
        assert (out / name).read_text() == (plain / name).read_text(), name


def test_views_spread_over_two_processes_give_the_tables_of_one(plain, tmp_path):
    """--spread-views: every rank runs every job, each step's views split over the ranks; rank 0 records."""
    import csv

    out = tmp_path / "spread"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trellis_mv.eval",
           *ARGS, "--spread-views", "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "results").iterdir()) == ["rank-0000.jsonl"]
    rows = lambda folder: {(r["aggregator"], r["num_views"], r["metric"]): float(r["mean"])
                           for r in csv.DictReader((folder / "summary.csv").open())}
    spread, one = rows(out), rows(plain)
    assert spread.keys() == one.keys()
    # the same arithmetic in other batch chunks moves float32 rounding only (see _distributed)
    cost = ("seconds", "peak_memory_mib", "latent_rows", "model_forwards")
    assert all(abs(spread[k] - one[k]) <= 0.02 * max(1.0, abs(one[k])) for k in one if k[2] not in cost)
    # rank 0 evaluated only its share of each forward's rows
    assert all(spread[k] < one[k] for k in one if k[2] == "latent_rows" and k[0] == "multidiffusion")


def test_interrupted_run_resumed_gives_the_same_tables(plain, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    assert eval_main([*ARGS, "--out", str(out), "--max-jobs", "3"]) == 0
    assert not (out / "summary.csv").exists()
    lines = (out / "results" / "rank-0000.jsonl").read_text().splitlines()
    assert len(lines) == 3
    with open(out / "results" / "rank-0000.jsonl", "a") as f:  # and a job killed while its line was written
        f.write(lines[0][: len(lines[0]) // 2])
    before = {json.loads(line)["key"] for line in lines}
    assert cli_main(["eval", *ARGS, "--out", str(out)]) == 0
    after = [json.loads(line)["key"] for line in (out / "results" / "rank-0000.jsonl").read_text().splitlines()[4:]]
    assert len(after) == 8 - 3 and not before & set(after)  # the done jobs are not run again
    for name in TABLES:
        assert (out / name).read_text() == (plain / name).read_text(), name
    assert cli_main(["eval", "report", str(out)]) == 0  # rebuilding from the files changes nothing
    for name in TABLES:
        assert (out / name).read_text() == (plain / name).read_text(), name


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--aggregators", "nope"], "unknown aggregator 'nope'"),
        (["--aggregators", "stochastic:ordre=random"], "has no option 'ordre'"),
        (["--aggregators", "single:view=1"], "single-view baselines"),
        (["--views", "0"], "a view count must be >= 1"),
        (["--views", "5"], "has 4 views but --views asks for 5"),
        (["--seeds", "0"], "need at least 1 seed"),
        (["--dataset", "photos"], "unknown dataset 'photos'"),
        (["--dataset", "folder:/no/such/folder"], "does not exist"),
        (["--objects", "0"], "--objects >= 1"),
        (["--steps", "shape=3"], "unknown stage 'shape'"),
        (["--mesh-workers", "-1"], "--mesh-workers -1: must be an integer >= 0"),
    ],
)
def test_bad_arguments_fail_before_any_model_work(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(_run, "_load_adapter", lambda *a: pytest.fail("a model was loaded"))
    out = tmp_path / "out"
    assert eval_main([*ARGS, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (out / "results").exists()


def test_restart_with_other_options_is_refused(plain, capsys):
    assert eval_main([*ARGS[:-1], "--seeds", "2", "--out", str(plain)]) == 2
    assert "holds results of another evaluation (seeds differ)" in capsys.readouterr().err


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert cli_main(["eval", "report", str(Path(tmp_path))]) == 2
    assert "is not the --out folder" in capsys.readouterr().err


def test_batched_and_per_job_results_agree(plain, tmp_path):
    """The same jobs one sampler run each (--batch 1) and many objects per run: every score to float tolerance."""
    per_job = tmp_path / "per_job"
    assert eval_main([*ARGS, "--out", str(per_job), "--batch", "1"]) == 0

    def records(folder):
        return {r["key"]: r for r in map(json.loads, (folder / "results" / "rank-0000.jsonl").read_text().splitlines())}

    one, many = records(per_job), records(plain)
    assert one.keys() == many.keys() and len(one) == 8
    assert {r["timing"]["batch"] for r in one.values()} == {1} and max(r["timing"]["batch"] for r in many.values()) > 1
    for key, rec in one.items():
        assert rec["cost"] == many[key]["cost"], key  # a forward holds every object: the same count per generation
        for metric, value in rec["metrics"].items():
            other = many[key]["metrics"][metric]
            assert (value is None and other is None) or abs(value - other) < 1e-4, (key, metric, value, other)
