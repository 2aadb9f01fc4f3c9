"""A broken plugin is a one-line error naming the plugin and its distribution; auto_generate never trusts a bad score."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch

import trellis_mv
from trellis_mv.cli import main
from trellis_mv.proxy import HELD_OUT_SEED, ProxyPipeline, example_images, input_views, make_shape

BROKEN = '''
from trellis_mv import hookimpl

class Needy:
    """Needs an argument nobody gives."""
    name = "needy"
    def __init__(self, scale):
        self.scale = scale
    def __call__(self, step):
        return step.select(0)

class Crashy:
    """Raises at every step."""
    name = "crashy"
    def __call__(self, step):
        raise ZeroDivisionError("the plugin's own bug")

@hookimpl
def register_aggregators():
    return [Needy, Crashy]
'''


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    info = tmp_path / "tmv_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tmv-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[trellis_mv]\nbroken = tmvfake_broken\n")
    (tmp_path / "tmvfake_broken.py").write_text(textwrap.dedent(BROKEN))
    monkeypatch.syspath_prepend(str(tmp_path))
    trellis_mv._registry._default = None
    yield
    sys.modules.pop("tmvfake_broken", None)
    trellis_mv._registry._default = None


def _generate(tmp_path, mode: str) -> int:
    return main(["generate", "--images", str(example_images()[0]), "--out", str(tmp_path / "out"), "--quiet",
                 "--steps", "1", "--mode", mode])


def test_a_plugin_whose_init_needs_an_argument(tmp_path, capsys, broken_plugin):
    assert _generate(tmp_path, "needy") == 2
    err = capsys.readouterr().err
    assert "aggregator 'needy' needs the option(s) scale; give them as needy:scale=VALUE" in err
    assert "distribution 'tmv-broken'" in err and len(err.strip().splitlines()) == 1
    assert _generate(tmp_path, "needy:scale=2") == 0


def test_a_plugin_whose_call_raises(tmp_path, capsys, broken_plugin):
    assert _generate(tmp_path, "crashy") == 2
    err = capsys.readouterr().err
    assert "aggregator 'crashy' (from distribution tmv-broken) raised ZeroDivisionError: the plugin's own bug" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# -- auto_generate (plugins/trellis-mv-spatial) --------------------------------------------------

STEPS = {"sparse_structure": {"steps": 1}, "texture": {"steps": 1}}


@pytest.fixture(scope="module")
def views() -> list[torch.Tensor]:
    shape = make_shape(HELD_OUT_SEED)
    return list(input_views(shape.occupancy, shape.colors, ["front", "back"]))


def test_auto_generate_never_picks_a_nan_score(views):
    from trellis_mv_spatial import auto_generate

    def score(result, images, cameras):  # NaN for multidiffusion's result (the first candidate), else finite
        score.calls += 1
        return torch.full((len(images),), math.nan if score.calls == 1 else 0.1 * score.calls)

    score.calls = 0
    out = auto_generate(ProxyPipeline(), views, ["front", "back"], candidates=["multidiffusion"], score=score,
                        params=STEPS)
    assert math.isnan(out.scores["multidiffusion"]) and out.choice == "single:view=0"
    with pytest.raises(ValueError, match="every candidate's score is NaN"):
        auto_generate(ProxyPipeline(), views, ["front", "back"], candidates=["multidiffusion"], params=STEPS,
                      score=lambda r, i, c: torch.full((len(i),), math.nan))


def test_auto_generate_refuses_a_scorer_with_too_few_scores(views):
    from trellis_mv_spatial import auto_generate

    with pytest.raises(ValueError, match="returned 1 errors for 2 views"):
        auto_generate(ProxyPipeline(), views, ["front", "back"], candidates=["multidiffusion"], params=STEPS,
                      score=lambda r, i, c: torch.zeros(1))
