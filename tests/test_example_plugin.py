"""The third-party example in docs/examples installs like any distribution and is discovered by its entry point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import trellis_mv
from trellis_mv.testing import check_aggregator

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "trellis-mv-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory, install_example):
    """The example built and installed into a directory of its own."""
    with install_example(EXAMPLE, "trellis_mv_example", tmp_path_factory.mktemp("example")) as target:
        yield target


def test_the_example_is_under_60_lines():
    files = [p for p in EXAMPLE.rglob("*") if p.is_file()]
    assert sum(len(p.read_text().splitlines()) for p in files) < 60


def test_registry_discovers_it_with_its_distribution(installed):
    info = trellis_mv.Registry.from_entry_points().info("median")
    assert (info.distribution, info.version, info.plugin) == ("trellis-mv-example", "0.1.0", "median")
    assert info.summary.startswith("Per-element median")


def test_it_conforms(installed):
    check_aggregator(trellis_mv.Registry.from_entry_points().info("median").factory)


def test_trellis_mv_list_shows_it(installed):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "trellis_mv.cli", "list", "--strict"], env=env,
                         check=True, capture_output=True, text=True).stdout
    assert any(line.split()[:3] == ["median", "trellis-mv-example", "0.1.0"] for line in out.splitlines())
