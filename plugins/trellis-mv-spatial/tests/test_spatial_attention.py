from dataclasses import replace

import pytest
import torch
from spatial_helpers import CrossAttnDenoiser, run_proxy
from trellis_mv_spatial.attention import Attention, find_cross_attention, query_entropy

import trellis_mv
import trellis_mv.testing
from trellis_mv import AggregatorOptionError, patch_sampler
from trellis_mv._tensors import feats
from trellis_mv.testing import AggregatorTests, make_problem


class TestAttention(AggregatorTests):  # the reference problems, the conditioning entering through cross-attention
    aggregator, distribution, denoiser, max_examples = Attention, "trellis-mv-spatial", CrossAttnDenoiser, 8


def test_a_model_without_cross_attention_is_an_error_naming_the_fix():
    problem = make_problem(num_views=2)  # TinyDenoiser pools its conditioning: nothing to hook
    with pytest.raises(AggregatorOptionError, match=r"attention: the model TinyDenoiser has no cross-attention module.*"
                                                     r"use 'visibility' or 'robust'"):
        with patch_sampler(problem.sampler, "attention"):
            problem.run()


def test_bad_alpha_names_the_option():
    with pytest.raises(AggregatorOptionError, match=r"^attention: option alpha must"):
        trellis_mv.get_aggregator("attention", alpha=-1)


def test_query_entropy_is_the_entropy_of_the_attention():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 7, 4, generator=g)
    p = torch.softmax(q @ k.transpose(-1, -2) / 2, -1)
    expected = (-(p * p.log()).sum(-1) / torch.log(torch.tensor(7.0))).mean(1)
    torch.testing.assert_close(query_entropy(q, k, chunk=2), expected)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_the_focused_view_wins_where_the_other_view_is_uniform(kind):
    problem = replace(make_problem(kind=kind, num_views=2, steps=3), model=CrossAttnDenoiser())
    g = torch.Generator().manual_seed(1)
    uniform = torch.randn(1, 1, 8, generator=g).expand(1, 5, 8)  # identical tokens: every query attends uniformly
    focused = 6 * torch.randn(1, 5, 8, generator=g)
    with patch_sampler(problem.sampler, "attention") as patch:
        problem.run(cond=torch.cat([uniform, focused]))
    entropy, weights = patch.diagnostics["attention_entropy"], patch.diagnostics["view_weights"]
    torch.testing.assert_close(entropy[0], torch.ones_like(entropy[0]))
    assert (entropy[1] < 1).all() and (weights[1] > weights[0]).all()


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_chunked_forwards_capture_the_same(kind):
    problem = replace(make_problem(kind=kind, num_views=3, num_samples=2, steps=3), model=CrossAttnDenoiser())
    with patch_sampler(problem.sampler, "attention"):
        whole = feats(problem.run())
    with patch_sampler(problem.sampler, "attention", max_batch=2) as patch:
        chunked = feats(problem.run())
    assert patch.model_calls > 3
    torch.testing.assert_close(whole, chunked)


def test_hooks_are_removed_after_each_step():
    model = CrossAttnDenoiser()
    problem = replace(make_problem(num_views=2, steps=2), model=model)
    with patch_sampler(problem.sampler, "attention"):
        problem.run()
    assert not model.block.cross_attn._forward_hooks


def test_on_the_proxy_every_stage_gets_per_element_weights(proxy):
    pipeline, _, images = proxy
    assert len(find_cross_attention(pipeline.models.structure)) == pipeline.models.cfg.structure_blocks
    cfg = pipeline.models.cfg
    assert len(find_cross_attention(pipeline.models.texture)) == cfg.texture_blocks + cfg.voxel_blocks
    result, patches = run_proxy(pipeline, images[:2], "attention", seed=0, params={s: {"steps": 2} for s in pipeline.samplers})
    dense = patches["sparse_structure"].diagnostics
    sparse = patches["texture"].diagnostics
    assert dense["view_weights"].shape == (2, 1, 8, 8, 8)
    assert sparse["view_weights"].shape == (2, int(result.occupancy.sum()))
    for record in (dense, sparse):
        torch.testing.assert_close(record["view_weights"].sum(0), torch.ones_like(record["view_weights"][0]))
        e = record["attention_entropy"]
        assert ((e > 0) & (e <= 1)).all() and e.std() > 0  # varies per element: the mapping is not constant


def test_on_the_proxy_each_query_row_is_read_as_the_element_it_stands_for(proxy):
    """The texture flow's cell trunk queries one row per cell, its voxel blocks one per voxel: entropies
    written as a code of (batch item, query row) must come back at the voxels those rows hold."""
    from types import SimpleNamespace

    from trellis_mv_spatial.attention import _to_elements

    from trellis_mv.sparse import SparseTensor

    pipeline, _, _ = proxy
    flow = pipeline.models.texture
    occ = torch.zeros(3, 16, 16, 16, dtype=torch.bool)
    occ[0, 2:6, 3:5, 4:9] = True
    occ[1, 9:12, 1:4, 0:2] = True
    occ[2, 0:3, 0:3, 0:3] = True
    coords = occ.nonzero().int()
    coords = coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(0))]  # any row order
    x = SparseTensor(torch.zeros(len(coords), 3), coords, 3)
    _, _, inv, cb, slot, _, vb, vslot, vrows = flow._layout(x.coords, 3)
    step = SimpleNamespace(batch_size=3, x_t=x, model=flow)
    el = SimpleNamespace(spatial=None, rows=len(coords))
    code = (torch.arange(3)[:, None] * 10_000 + torch.arange(vrows.shape[0])[None]).double()
    got = _to_elements(code.repeat(2, 1), 2, step, el, "voxel.0.cross")
    torch.testing.assert_close(got[1], (vb * 10_000 + vslot).double())
    cells = code[:, : int(slot.max()) + 1]
    got = _to_elements(cells.repeat(2, 1), 2, step, el, "trunk.blocks.0.cross")
    torch.testing.assert_close(got[1], (cb[inv] * 10_000 + slot[inv]).double())
