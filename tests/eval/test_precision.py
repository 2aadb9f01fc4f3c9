"""The proxy's bf16 precision: close to fp32, part of an evaluation's configuration, refused where it has no meaning."""

from __future__ import annotations

import json

import pytest
import torch

import trellis_mv
from trellis_mv import ParameterError
from trellis_mv.eval import evaluate
from trellis_mv.proxy import ProxyAdapter, example_images

FEW = {"sparse_structure": {"steps": 3}, "texture": {"steps": 3}}


@pytest.fixture(scope="module")
def fp32() -> ProxyAdapter:
    return ProxyAdapter()


def test_bf16_samples_what_fp32_samples_to_bf16_rounding_and_returns_float32(fp32):
    bf16 = ProxyAdapter(models=fp32.models, precision="bf16")
    a = trellis_mv.run_multi_image(fp32, example_images()[:2], seed=3, params=FEW).output
    b = trellis_mv.run_multi_image(bf16, example_images()[:2], seed=3, params=FEW).output
    assert b.colors.dtype == torch.float32 and bf16.get_cond([torch.rand(3, 64, 64)]).dtype == torch.float32
    both, either = (a.occupancy & b.occupancy).sum().item(), (a.occupancy | b.occupancy).sum().item()
    assert both / either > 0.95
    shared = a.occupancy & b.occupancy
    assert (a.colors[shared] - b.colors[shared]).abs().mean() < 0.05  # measured 0.028 (guidance 3 amplifies rounding)
    assert not torch.equal(a.colors, b.colors)  # it did run in another precision


def test_an_unknown_precision_is_named_with_the_choices():
    with pytest.raises(ParameterError, match=r"precision 'fp16' is not one of fp32, bf16"):
        ProxyAdapter(precision="fp16")


def test_precision_is_part_of_an_evaluation_and_refused_where_it_means_nothing(tmp_path, fp32):
    out = tmp_path / "run"
    evaluate(out=out, objects=1, views=[1], params=FEW, device="cpu", progress=False, report=False, precision="bf16")
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):  # resumed only at its own precision
        evaluate(out=out, objects=1, views=[1], params=FEW, device="cpu", progress=False, report=False)
    with pytest.raises(ValueError, match="proxy model's option"):
        evaluate(out=tmp_path / "t2", model="microsoft/TRELLIS.2-4B", objects=1, views=[1], precision="bf16")
    with pytest.raises(ValueError, match="pass it to the adapter"):
        evaluate(out=tmp_path / "a", adapter=fp32, objects=1, views=[1], precision="bf16")
    assert not (tmp_path / "t2").exists() and not (tmp_path / "a").exists()  # refused before any folder or model work
    plain = tmp_path / "plain"
    evaluate(out=plain, objects=1, views=[1], params=FEW, device="cpu", progress=False, report=False)
    assert "precision" not in json.loads((plain / "config.json").read_text())  # fp32 folders read as before
