"""The numbers README.md and the docs quote are the committed results' (scripts/write_numbers.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def numbers():
    spec = importlib.util.spec_from_file_location("write_numbers", ROOT / "scripts" / "write_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quoted_numbers_are_those_of_the_committed_results(numbers):
    stale = numbers.update(check=True)
    assert stale == [], f"stale numbers in {stale}: run python scripts/write_numbers.py"


def test_a_changed_result_makes_its_blocks_stale_and_check_writes_nothing(numbers, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    monkeypatch.setitem(numbers.BLOCKS, "measured", (("README.md",), lambda: "- four views gain +0.99 IoU"))
    assert numbers.update(check=True) == ["README.md: measured"]
    assert (ROOT / "README.md").read_text() == readme


def test_the_blocks_quote_device_date_and_source(numbers):
    text = numbers.readme_measured()
    for device in ("NVIDIA H100", "NVIDIA H200", "2-core CPU"):
        assert device in text
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(bullets) >= 4 and all("`benchmarks/results/" in b and "2026-" in b for b in bullets)  # each names both
    assert "+0.02 IoU" not in text and "too weak to tell the aggregators apart" not in text


def test_readme_names_every_command_and_help_lists_them_all():
    from trellis_mv.cli import build_parser

    parser = build_parser()
    commands = sorted(parser._subparsers._group_actions[0].choices)
    assert commands == ["app", "demo", "eval", "generate", "list"]
    readme = (ROOT / "README.md").read_text()
    help_text = parser.format_help()
    for name in commands:
        assert f"\ntrellis-mv {name} " in readme, name
        assert f"\n    {name} " in help_text, name
    assert "not on a package index" in readme and "pip install trellis-mv\n" not in readme
