"""The texture flow's cell layout (a host sync) is built once a stage, not once a step, and never goes stale."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import trellis_mv
from trellis_mv import _tensors as T
from trellis_mv.proxy._models import ProxyConfig, TextureFlow
from trellis_mv.run import run_many
from trellis_mv.sparse import SparseTensor

TINY = ProxyConfig(width=16, heads=2, encoder_layers=1, structure_blocks=1, texture_blocks=1)


def _count_layouts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = torch.unique

    def unique(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "unique", unique)
    return calls


def _latent(seed: int, b: int = 2) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(b, 16, 16, 16, generator=g) > 0.9
    coords = occ.nonzero().int()
    return SparseTensor(torch.randn(coords.shape[0], 3, generator=g), coords, b)


@pytest.mark.parametrize("mode", ["multidiffusion", "single:view=0"])
def test_a_texture_stage_builds_its_layout_once(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    torch.set_num_threads(1)
    adapter = trellis_mv.load_adapter("proxy")
    images = [path for path, _ in adapter.examples()]
    calls = _count_layouts(monkeypatch)
    batch = run_many(adapter, [images[:2], images[2:3]], seeds=[3, 4], mode=mode,
                     params={"sparse_structure": {"steps": 2}, "texture": {"steps": 5}})
    forwards = batch.cost()["stages"]["texture"]["model_forwards"]
    assert forwards >= 5 and len(calls) == 1, (forwards, len(calls))


def test_the_kept_layout_gives_what_a_fresh_one_gives_and_follows_changed_coordinates() -> None:
    torch.manual_seed(0)
    flow = TextureFlow(TINY)
    torch.nn.init.normal_(flow.out.weight)  # zero-initialised: make the output depend on the layout
    x, t, cond = _latent(1), torch.full((2,), 500.0), torch.randn(2, 4, 16)
    first = flow(x, t, cond).feats
    assert torch.equal(flow(x.replace(x.feats * 1), t, cond).feats, first)  # same coordinates: the kept layout
    fresh = TextureFlow(TINY)
    fresh.load_state_dict(flow.state_dict())
    assert torch.equal(fresh(x, t, cond).feats, first)
    other = _latent(2)  # other voxels, as many rows: coordinates changed in place
    n = min(other.coords.shape[0], x.coords.shape[0])
    x2 = SparseTensor(x.feats[:n].clone(), x.coords[:n].clone(), 2)
    before = flow(x2, t, cond).feats
    x2.coords.copy_(other.coords[:n])
    x2.coords[:, 0] = torch.sort(x2.coords[:, 0]).values  # rows of one item stay contiguous
    after = flow(x2, t, cond).feats
    fresh_after = fresh(SparseTensor(x2.feats, x2.coords.clone(), 2), t, cond).feats
    assert torch.equal(after, fresh_after) and not torch.equal(after, before)


def test_repeating_the_same_coordinates_returns_the_same_tensor_until_they_change() -> None:
    x = _latent(5)
    a, b = T.repeat_batch(x, 3), T.repeat_batch(x.replace(x.feats + 1), 3)
    assert a.coords is b.coords and T.repeat_batch(x, 2).coords is not a.coords
    m = x.coords.shape[0]
    assert torch.equal(a.coords[m:2 * m, 0], x.coords[:, 0] + 2) and torch.equal(a.coords[:m], x.coords)
    a.coords[0, 1] += 1  # a model changed the shared repeat in place: it is made again
    c = T.repeat_batch(x, 3)
    assert c.coords is not a.coords and torch.equal(c.coords[:m], x.coords)
    x.coords[0, 1] += 1  # the coordinates themselves changed
    d = T.repeat_batch(x, 3)
    assert d.coords is not c.coords and torch.equal(d.coords[:m], x.coords)
