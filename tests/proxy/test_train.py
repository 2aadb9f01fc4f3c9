"""Training of the proxy model: a run split over commands equals one run."""

from __future__ import annotations

import numpy as np
import torch

from trellis_mv.proxy import NAMED_VIEWS, ProxyConfig
from trellis_mv.proxy.train import random_views, train

TINY = ProxyConfig(width=16, heads=2, encoder_layers=1, structure_blocks=1, texture_blocks=1, patch=8)


def test_a_legacy_run_continued_from_its_checkpoint_equals_an_uninterrupted_run(tmp_path):
    kw = dict(steps=3, batch=2, shapes=4, seed=0, lr=1e-3, verbose=False, config=TINY, log_every=1, legacy=True)
    whole = train(**kw)
    ckpt = tmp_path / "run.pt"
    first = train(**kw, ckpt=ckpt, time_limit=0.0)  # stops after one step and writes the checkpoint
    assert first["steps"] == 1 and ckpt.is_file()
    rest = train(**kw, ckpt=ckpt, data_cache=tmp_path / "shapes.npz")
    assert rest["steps"] == 3 and rest["steps_this_command"] == 2
    a, b = whole["models"].state_dict(), rest["models"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # EMA weights, bit for bit
    assert [r["step"] for r in rest["log"]] == [1, 2, 3]
    same = lambda rec: {k: v for k, v in rec.items() if k != "seconds"}
    assert same(rest["log"][-1]) == same(whole["log"][-1])  # the loss window travels in the checkpoint too


def test_training_views_are_mostly_the_ones_users_take():
    views = random_views(2000, np.random.default_rng(1))
    usual = [v for v in views if v[0] % 45 == 0 and 20 <= v[1] <= 30]
    assert 0.65 < len(usual) / len(views) < 0.75
    assert {az for az, _ in usual} == {45.0 * k for k in range(8)}
    assert NAMED_VIEWS["top"] in views
