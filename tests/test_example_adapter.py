"""A third-party adapter distribution (docs/examples/trellis-mv-adapter-example) is selected by --model without any
change to the core, listed beside the built-in adapters, and a model two adapters claim is refused naming both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import trellis_mv

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "trellis-mv-adapter-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory, install_example):
    """The example built and installed into a directory of its own."""
    with install_example(EXAMPLE, "trellis_mv_adapter_example", tmp_path_factory.mktemp("adapter")) as target:
        yield target


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "trellis_mv.cli", *args], env=env, capture_output=True, text=True)


def test_generate_runs_it_by_model_name(installed: Path, tmp_path: Path) -> None:
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(red)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(blue)
    for mode, colour in (("multidiffusion", [0.5, 0.0, 0.5]), ("single:view=1", [0.0, 0.0, 1.0])):
        out = tmp_path / mode.replace(":", "_")
        done = _cli(installed, "generate", "--model", "tint", "--images", str(red), str(blue), "--mode", mode,
                    "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "colour.json").read_text())[0] == pytest.approx(colour, abs=1e-5)
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["model"], summary["aggregators"]) == ("tint", {"colour": mode.split(":")[0]})


def test_list_shows_it_beside_the_built_in_adapters(installed: Path) -> None:
    done = _cli(installed, "list", "--strict")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.split("adapter", 1)[1].splitlines()[1:] if line}
    assert rows == {"proxy": "trellis-mv", "tint": "trellis-mv-adapter-example", "trellis": "trellis-mv",
                    "trellis2": "trellis-mv"}


def test_two_adapters_for_one_model_are_refused_naming_both(installed: Path) -> None:
    registry = trellis_mv.Registry.from_entry_points()

    class Impostor:
        name = "impostor"

        @classmethod
        def load(cls, model: str, *, device: str | None = None) -> Impostor:
            return cls()

    class Plugin:
        @trellis_mv.hookimpl
        def adapter_for(self, model: str) -> type | None:
            return Impostor if model == "tint" else None

    registry.register(Plugin(), name="impostor", distribution="trellis-mv-impostor")
    with pytest.raises(trellis_mv.ParameterError, match="'tint' of 'trellis-mv-adapter-example' and 'impostor' of "
                                                        "'trellis-mv-impostor'"):
        trellis_mv.load_adapter("tint", registry=registry)
    assert trellis_mv.adapter_class("proxy", registry=registry).__name__ == "ProxyAdapter"  # others still answer


def test_an_unknown_model_lists_the_adapters() -> None:
    with pytest.raises(trellis_mv.ParameterError, match=r"no installed adapter runs model 'no/such-model'.*proxy \(trellis-mv\)"):
        trellis_mv.load_adapter("no/such-model")
