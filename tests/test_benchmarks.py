"""Every benchmark script runs: each one's --help (it imports), and the smallest configuration of those that run on a
CPU in seconds (the GPU and browser ones are measured on their machines; their --help still catches a broken import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
#: script -> its smallest configuration (OUT is replaced by a fresh folder)
SMALLEST = {
    "eval_batched.py": ["--device", "cpu", "--objects", "2", "--views", "1", "--steps", "2", "--batch", "4",
                        "--per-job-limit", "2"],
    "eval_mesh_workers.py": ["--device", "cpu", "--objects", "2", "--views", "1", "--workers", "1", "--steps", "1",
                             "--batch", "1"],
    "overhead.py": ["--steps", "2", "--repeats", "1"],
    "paired_runs.py": ["benchmarks/results/proxy_table_H200", "benchmarks/results/proxy_table_H200", "--views", "1"],
    "proxy_capacity.py": ["--objects", "2", "--steps", "1"],
    "proxy_hidden_surface.py": ["--objects", "2", "--samples", "2", "--steps", "2", "--workers", "1"],
    "proxy_fidelity.py": ["--objects", "2", "--seeds", "1", "--steps", "2", "--reference-samples", "1", "--workers", "2",
                          "--device", "cpu", "--out", "OUT"],
    "quality.py": ["--objects", "2", "--seeds", "1", "--views", "1", "--aggregators", "multidiffusion", "--device", "cpu",
                   "--out", "OUT"],
    "spatial_quality.py": ["--objects", "2", "--seeds", "1", "--steps", "2", "--device", "cpu", "--out", "OUT"],
}

def _table_mean(aggregator: str, views: int, metric: str) -> float:
    """A mean of the committed proxy table's summary (what paired_runs.py must find in the same records)."""
    import csv

    with open(ROOT / "benchmarks/results/proxy_table_H200/summary.csv") as f:
        rows = [r for r in csv.DictReader(f)
                if (r["aggregator"], r["num_views"], r["metric"]) == (aggregator, str(views), metric)]
    return float(rows[0]["mean"])


_IOU1 = _table_mean("multidiffusion", 1, "iou")
#: script -> what its smallest configuration must print (a check that can fail, beyond running)
EXPECT = {
    "eval_mesh_workers.py": "the same jobs: True; largest score difference: 0.",  # the pool changes no score
    "proxy_fidelity.py": "| perfect, sampling | ",  # drawn in worker processes
    "proxy_hidden_surface.py": "A perfect model from the front view: between 0.",
    # a run against itself: the table's own mean on both sides, no difference
    "paired_runs.py": f"| 1 | iou | {_IOU1:.4f} | {_IOU1:.4f} | +0.0000 [+0.0000, +0.0000] | ",
    "proxy_capacity.py": "| ceiling: the truth's own latents, decoded | 1.000 (",  # the scores' own ceiling is 1
}


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "support"),
                                                                               os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_imports_and_explains_itself(script: str, tmp_path: Path) -> None:
    done = _run([f"benchmarks/{script}", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_the_smallest_configuration_runs(script: str, tmp_path: Path) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in SMALLEST[script]]
    done = _run([f"benchmarks/{script}", *args], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.strip()
    assert EXPECT.get(script, "") in done.stdout, done.stdout[-2000:]


def test_fidelity_reads_a_committed_table_instead_of_generating(tmp_path: Path) -> None:
    done = _run(["benchmarks/proxy_fidelity.py", "--results", "benchmarks/results/proxy_table_H200",
                 "--reference-samples", "0"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for views in (1, 4):  # per-object means over seeds, then over objects: the table's mean (every object has 3 seeds)
        assert f"{_table_mean('multidiffusion', views, 'hidden_color_acc_seen'):.3f}" in done.stdout
    done = _run(["benchmarks/proxy_fidelity.py", "--results", str(tmp_path), "--reference-samples", "0"], tmp_path)
    assert done.returncode != 0 and "no object with multidiffusion results at both 1 and 4 views" in done.stderr


def test_fidelity_measures_the_weights_it_is_given(tmp_path: Path) -> None:
    import torch

    from trellis_mv.proxy import ProxyConfig
    from trellis_mv.proxy._models import ProxyModels, save_models

    torch.manual_seed(0)
    untrained = save_models(ProxyModels(ProxyConfig()), tmp_path / "untrained.safetensors")
    small = ["benchmarks/proxy_fidelity.py", "--objects", "1", "--seeds", "1", "--steps", "2", "--reference-samples", "0"]
    shipped = _run([*small, "--out", str(tmp_path / "a")], tmp_path)
    other = _run([*small, "--weights", str(untrained), "--out", str(tmp_path / "b")], tmp_path)
    assert shipped.returncode == 0 and other.returncode == 0, shipped.stderr[-2000:] + other.stderr[-2000:]
    table = lambda out: [line for line in out.splitlines() if line.startswith("| ")]
    assert table(shipped.stdout) != table(other.stdout)  # untrained weights score otherwise
    done = _run([*small, "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "c")], tmp_path)
    assert done.returncode == 2 and "no such file" in done.stderr and not (tmp_path / "c").exists()
    done = _run([*small, "--weights", str(untrained), "--results", str(tmp_path / "a")], tmp_path)
    assert done.returncode == 2 and "pass --out DIR, not --results" in done.stderr
