"""The fast training step and its resumable state."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trellis_mv.proxy import ProxyConfig, ProxyModels
from trellis_mv.proxy._data import make_shapes
from trellis_mv.proxy._fast import (
    PackedTexture,
    ViewBank,
    build_bank,
    gather_cells,
    layout,
    max_cells,
    pack_cells,
    pack_voxels,
    plan_buckets,
)
from trellis_mv.proxy._state import MAX_TOTAL, SHARD_BYTES, load_state, save_state, state_exists
from trellis_mv.proxy.train import FastStep, random_views, train
from trellis_mv.sparse import SparseTensor

TINY = ProxyConfig(width=16, heads=2, encoder_layers=1, structure_blocks=1, texture_blocks=1, patch=8)


def _shapes(n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    occ, col = make_shapes(range(start, start + n))
    return torch.from_numpy(occ), torch.from_numpy(col)


@pytest.mark.parametrize("voxel_blocks", [0, 2])
def test_the_packed_texture_stage_gives_the_sparse_models_velocities(voxel_blocks):
    torch.manual_seed(0)
    models = ProxyModels(ProxyConfig(width=32, heads=2, encoder_layers=1, structure_blocks=1, texture_blocks=2, patch=8,
                                     voxel_blocks=voxel_blocks))
    torch.nn.init.normal_(models.texture.out.weight, std=0.5)  # zero at init: make the output say something
    for block in models.texture.voxel:  # so are the voxel blocks' outputs
        torch.nn.init.normal_(block.cross.out.weight, std=0.5)
        torch.nn.init.normal_(block.mlp[2].weight, std=0.5)
    occ, _ = _shapes(3, 40)
    occ[2] = False  # an empty item in the batch
    cells = max_cells(occ)
    cond = torch.randn(3, 64, 32)
    t = torch.tensor([100.0, 600.0, 900.0])
    feats = torch.randn(*occ.shape, 3)
    coords = occ.nonzero().int()
    sparse = models.texture(SparseTensor(feats[occ], coords, 3), t, cond).feats

    cell, voxels, slots = pack_cells(occ, cells + 5)  # spare slots and rows change nothing
    rows = int(occ.flatten(1).sum(1).max()) + 3
    index, valid = pack_voxels(voxels, rows)
    packed = PackedTexture(models.texture)(gather_cells(feats, cell), cell, voxels, slots, t, cond, index)
    assert packed.shape == (3, rows, 3)
    assert int(voxels.sum()) == int(valid.sum()) == len(coords)
    # the same voxels in both layouts: scatter the packed rows to their cells, the cells back to the grid
    by_cell = torch.zeros(3, (cells + 5) * 8, 3).scatter_(1, index[..., None].expand(-1, -1, 3), packed * valid[..., None])
    grid = torch.zeros(3, 8**3, 8, 3)
    grid.scatter_(1, cell[..., None, None].expand(-1, -1, 8, 3), by_cell.reshape(3, cells + 5, 8, 3) * voxels[..., None])
    grid = grid.reshape(3, 8, 8, 8, 2, 2, 2, 3).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(3, 16, 16, 16, 3)
    torch.testing.assert_close(grid[occ], sparse, atol=1e-5, rtol=1e-4)


def test_packing_keeps_every_occupied_voxel_in_cell_order():
    occ, col = _shapes(4)
    cells = max_cells(occ)
    cell, voxels, slots = pack_cells(occ, cells)
    per_item = (occ.reshape(4, 8, 2, 8, 2, 8, 2).sum((2, 4, 6)) > 0).sum((1, 2, 3))
    assert torch.equal(slots.sum(1), per_item)
    for i in range(4):
        used = cell[i][slots[i]]
        assert bool((used[1:] > used[:-1]).all())  # strictly increasing: cell order, no repeats
    assert int(voxels.sum()) == int(occ.sum())
    rgb = gather_cells(col, cell)[voxels]
    assert torch.equal(rgb.sort(0).values, col[occ].sort(0).values)


def test_the_bank_holds_views_of_its_shapes_and_is_read_back_from_its_cache(tmp_path):
    from trellis_mv.proxy._cameras import input_views

    occ, col = _shapes(3)
    bank = build_bank(occ, col, per_shape=2, seed=5, device="cpu", draw_views=random_views, cache=tmp_path)
    assert bank.images.shape == (3, 2, 3, 64, 64) and bank.images.dtype == torch.uint8
    view = tuple(bank.views[1, 1].tolist())
    ref = input_views(occ[1], col[1], [view])[0]
    assert (bank.images[1, 1].float() / 255 - ref).abs().max() <= 0.5 / 255 + 1e-6
    again = build_bank(occ, col, per_shape=2, seed=5, device="cpu", draw_views=random_views, cache=tmp_path)  # cached
    assert torch.equal(again.images, bank.images) and len(list(tmp_path.glob("bank-*.npz"))) == 1
    o, c, im = bank.batch(torch.Generator().manual_seed(0), plan_buckets(occ, 5, buckets=1))
    assert o.shape == (5, 16, 16, 16) and c.dtype == torch.float32 and im.shape == (5, 3, 64, 64)


def test_buckets_split_the_shapes_by_size_and_each_batch_draws_its_share_from_each():
    occ, col = _shapes(200)
    cells = _cells(occ)
    voxels = occ.flatten(1).sum(1)
    plan = plan_buckets(occ, batch=64, buckets=4)
    assert 2 <= len(plan) <= 4 and sum(b.items for b in plan) == 64 and all(b.items >= 1 for b in plan)
    members = torch.cat([b.shapes for b in plan])
    assert sorted(members.tolist()) == list(range(200))  # every shape in exactly one bucket
    for b in plan:
        assert int(cells[b.shapes].max()) <= b.cells and int(voxels[b.shapes].max()) <= b.rows  # each fits its padding
        assert abs(b.items - 64 * b.shapes.numel() / 200) < 1  # its share of the batch
    assert [b.cells for b in plan] == sorted(b.cells for b in plan) and len({b.cells for b in plan}) == len(plan)
    one = plan_buckets(occ, batch=64, buckets=1)[0]
    work = lambda p: sum(b.items * (b.cells + 0.15 * b.rows) for b in p)
    assert work(plan) < 0.8 * work([one])  # less padding than one bucket of the largest shape's size
    # a batch: each bucket's items in turn, drawn from its own shapes
    bank = ViewBank(occ, (col * 255).round().to(torch.uint8), torch.zeros(200, 1, 3, 64, 64, dtype=torch.uint8),
                    torch.zeros(200, 1, 2))
    o, _, _ = bank.batch(torch.Generator().manual_seed(0), plan)
    first = 0
    for b in plan:
        assert int(_cells(o[first : first + b.items]).max()) <= b.cells
        first += b.items
    # a batch too small for a bucket of few shapes merges it with its neighbour
    assert all(b.items >= 1 for b in plan_buckets(occ, batch=2, buckets=4)) and len(plan_buckets(occ, 2, 4)) <= 2


def _cells(occ: torch.Tensor) -> torch.Tensor:
    return (occ.reshape(occ.shape[0], 8, 2, 8, 2, 8, 2).sum((2, 4, 6)) > 0).flatten(1).sum(1)


def test_bucketed_losses_equal_one_padding_for_the_same_draws():
    from trellis_mv.proxy._fast import fast_losses

    torch.manual_seed(0)
    models = ProxyModels(ProxyConfig(width=32, heads=2, encoder_layers=1, structure_blocks=1, texture_blocks=1, patch=8,
                                     voxel_blocks=1))
    torch.nn.init.normal_(models.texture.out.weight, std=0.5)
    occ, col = _shapes(40)
    plan = plan_buckets(occ, batch=12, buckets=3)
    assert len(plan) > 1
    bank = ViewBank(occ, (col * 255).round().to(torch.uint8), torch.rand(40, 1, 3, 64, 64).mul(255).to(torch.uint8),
                    torch.zeros(40, 1, 2))
    o, c, im = bank.batch(torch.Generator().manual_seed(1), plan)
    packed = PackedTexture(models.texture)
    widest = [(12, max(b.cells for b in plan), max(b.rows for b in plan))]
    texture = {}
    for name, lay in (("buckets", layout(plan)), ("one", widest)):
        # the same noise for both: the texture draws are made per bucket, so give each layout one run of items
        texture[name] = [fast_losses(models, packed, o[i : i + 1], c[i : i + 1], im[i : i + 1],
                                     torch.Generator().manual_seed(i), [(1, cl, r)], cond_drop=0.0)["texture"]
                         for i, (cl, r) in enumerate((cl, r) for n, cl, r in lay for _ in range(n))]
    torch.testing.assert_close(torch.stack(texture["buckets"]), torch.stack(texture["one"]), atol=1e-5, rtol=1e-4)


def test_the_fast_step_trains_the_losses_finite_and_falling():
    s = train(steps=40, batch=8, shapes=6, seed=0, lr=3e-3, verbose=False, config=TINY, log_every=10, bank_views=2)
    log = s["log"]
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    assert all(math.isfinite(r[k]) for r in log for k in ("structure", "texture"))
    first, last = log[0]["structure"] + log[0]["texture"], log[-1]["structure"] + log[-1]["texture"]
    assert last < 0.9 * first
    assert s["eval_losses_after"]["structure"] < s["eval_losses_before"]["structure"]


def _kw(tmp_path, **extra):
    return dict(
        steps=6, batch=4, shapes=4, seed=1, lr=2e-3, verbose=False, config=TINY, log_every=2, bank_views=2,
        bank_cache=tmp_path / "bank", data_cache=tmp_path / "shapes.npz", state_every=100, **extra,
    )


def test_an_exact_state_resumes_bit_for_bit(tmp_path):
    whole = train(**_kw(tmp_path, exact_state=True))
    state = tmp_path / "state"
    first = train(**_kw(tmp_path, exact_state=True), state=state, stop_at=3)
    assert first["steps"] == 3 and state_exists(state)
    rest = train(**_kw(tmp_path, exact_state=True), state=state)
    assert rest["steps"] == 6 and rest["steps_this_command"] == 3
    a, b = whole["models"].state_dict(), rest["models"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # EMA weights, bit for bit
    same = lambda log: [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for r in log]
    assert same(rest["log"]) == same(whole["log"])  # the loss log (and its unlogged step) travels in the state
    meta, tensors = load_state(state)
    assert meta["step"] == 6 and [c["last_step"] for c in meta["commands"]] == [3, 6]
    assert tensors["exp_avg_sq.encoder.pos"].dtype == torch.float32


def test_a_compact_state_resumes_to_float_tolerance(tmp_path):
    whole = train(**_kw(tmp_path))
    state = tmp_path / "state"
    train(**_kw(tmp_path), state=state, stop_at=3)
    _, tensors = load_state(state)
    assert tensors["model.encoder.pos"].dtype == torch.float16
    assert tensors["ema.encoder.pos"].dtype == torch.float16
    assert tensors["exp_avg.encoder.pos"].dtype == torch.bfloat16
    rest = train(**_kw(tmp_path), state=state)
    a, b = whole["models"].state_dict(), rest["models"].state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the rounding of the EMA and the moments shows
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-3, rtol=1e-2)
    for x, y in zip(whole["log"], rest["log"]):
        assert x["step"] == y["step"] and abs(x["texture"] - y["texture"]) < 1e-2


def test_the_default_networks_state_fits_the_transfer_limits(tmp_path):
    occ, col = _shapes(1)
    bank = ViewBank(occ, (col * 255).round().to(torch.uint8), torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8),
                    torch.zeros(1, 1, 2))
    models = ProxyModels()
    import copy

    fast = FastStep(models, copy.deepcopy(models).requires_grad_(False), bank, torch.Generator().manual_seed(0), 1, 1e-3)
    fast(1, 1e-3)  # creates the moments
    meta = save_state(tmp_path / "s", fast.tensors(), {"step": 1})
    files = list((tmp_path / "s").glob("shard-*.safetensors"))
    assert len(files) == len(meta["shards"]) >= 3
    assert all(f.stat().st_size <= 16 * 2**20 for f in files)
    total = sum(f.stat().st_size for f in (tmp_path / "s").iterdir())
    assert 46e6 < total <= 48e6 < MAX_TOTAL  # four 11.9 MB halves: with an 18.5 MB checkout within 64 MiB
    with pytest.raises(ValueError, match="MiB"):  # float32 everything does not fit
        save_state(tmp_path / "x", fast.tensors(exact=True), {"step": 1})


def test_state_writes_replace_the_folder_atomically(tmp_path):
    d = tmp_path / "s"
    save_state(d, {"model.a": torch.zeros(10), "model.b": torch.ones(10)}, {"step": 1}, shard_bytes=48)
    assert len(json.loads((d / "state.json").read_text())["shards"]) == 2
    save_state(d, {"model.a": torch.full((10,), 2.0)}, {"step": 2})
    meta, t = load_state(d)
    assert meta["step"] == 2 and set(t) == {"model.a"} and not (tmp_path / "s.tmp").exists()
    d.rename(tmp_path / "s.old")  # a swap stopped between its two renames
    assert load_state(d)[0]["step"] == 2
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "none")
    with pytest.raises(ValueError, match="more than a shard"):
        save_state(d, {"model.a": torch.zeros(100)}, {}, shard_bytes=SHARD_BYTES // 2**20)


def test_the_fast_step_refuses_the_legacy_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="legacy"):
        train(steps=1, batch=2, shapes=2, config=TINY, verbose=False, ckpt=tmp_path / "x.pt")


def test_the_command_line_writes_the_weights_the_state_and_the_log(tmp_path):
    from trellis_mv.proxy._models import load_models
    from trellis_mv.proxy.train import main

    args = ["--steps", "2", "--batch", "2", "--shapes", "2", "--bank-views", "1", "--workers", "1", "--log-every", "1",
            "--device", "cpu", "--state", str(tmp_path / "state"), "--out", str(tmp_path / "w.safetensors"),
            "--log", str(tmp_path / "log.json")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "log.json").read_text())
    assert summary["steps"] == 2 and [r["step"] for r in summary["log"]] == [1, 2]
    assert load_models(tmp_path / "w.safetensors").cfg == ProxyConfig()
    assert load_state(tmp_path / "state")[0]["step"] == 2


def test_added_voxel_blocks_start_at_identity_and_then_learn(tmp_path):
    from trellis_mv.proxy._models import extend_models, load_models, save_models
    from trellis_mv.proxy.train import main

    torch.manual_seed(0)
    flat = ProxyConfig(**{**TINY.__dict__, "voxel_blocks": 0})
    base = ProxyModels(flat)
    torch.nn.init.normal_(base.texture.out.weight, std=0.5)
    big = extend_models(base, TINY)
    occ, _ = _shapes(2, 7)
    coords = occ.nonzero().int()
    x = SparseTensor(torch.randn(len(coords), 3), coords, 2)
    t, cond = torch.tensor([200.0, 800.0]), torch.randn(2, 64, 16)
    torch.testing.assert_close(big.texture(x, t, cond).feats, base.texture(x, t, cond).feats)
    assert {k for k in big.state_dict() if k not in base.state_dict()} == {
        k for k in big.state_dict() if k.startswith("texture.voxel.0.")}
    with pytest.raises(ValueError, match="only voxel_blocks may grow"):
        extend_models(base, ProxyConfig(**{**TINY.__dict__, "width": 32}))
    with pytest.raises(ValueError, match="fewer"):
        extend_models(big, flat)

    # the command line adds them to --init weights, and training moves them off zero
    save_models(base, tmp_path / "base.safetensors")
    args = ["--steps", "3", "--batch", "2", "--shapes", "2", "--bank-views", "1", "--workers", "1", "--log-every", "1",
            "--device", "cpu", "--init", str(tmp_path / "base.safetensors"), "--voxel-blocks", "1",
            "--out", str(tmp_path / "w.safetensors")]
    assert main(args) == 0
    trained = load_models(tmp_path / "w.safetensors")
    assert trained.cfg == TINY
    assert float(trained.texture.voxel[0].mlp[2].weight.abs().sum()) > 0
