"""Property tests: every view's conditioning reaches the latent copy it belongs to, shared or per sample."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from trellis_mv import _tensors as T
from trellis_mv import patch_sampler
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
from trellis_mv.sparse import SparseTensor


class Probe:
    """A model whose output tells which conditioning row and which sample produced it."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond, **kw):
        b = T.batch_size(x)
        assert cond.shape[0] == b == t.shape[0]
        self.calls.append((b, kw))
        tag = cond[:, 0, 0]  # view id (negative: 0)
        if T.is_sparse(x):
            idx = x.coords[:, 0].long()
            return x.replace(x.feats * 0 + tag[idx, None] * 1000 + x.feats[:, :1].round())
        return x * 0 + tag.view(-1, *([1] * (x.ndim - 1))) * 1000 + x[:, :1].round()


def _latent(kind, b, g):
    if kind == "dense":
        return torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 2, 3).contiguous()
    coords, feats = [], []
    for i in range(b):
        n = int(torch.randint(0, 5, (1,), generator=g))  # a sample may have no voxels
        coords.append(torch.tensor([[i, k, 0, 0] for k in range(n)]))
        feats.append(torch.full((n, 2), float(i)))
    return SparseTensor(torch.cat(feats), torch.cat(coords).int(), batch_size=b)


@given(
    kind=st.sampled_from(["dense", "sparse"]),
    n=st.integers(1, 6),
    b=st.integers(1, 4),
    subset=st.data(),
    cap=st.one_of(st.none(), st.integers(1, 10)),
    with_negative=st.booleans(),
)
def test_predict_routes_each_view_to_its_copy(kind, n, b, subset, cap, with_negative):
    g = torch.Generator().manual_seed(n * 10 + b)
    x = _latent(kind, b, g)
    concat = _latent(kind, b, g)  # a batch-aligned model kwarg, like TRELLIS.2's concat_cond
    cond = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1).expand(n, 3, 2).contiguous()
    views = subset.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n), label="views")
    probe = Probe()
    seen = {}
    sampler = FlowEulerGuidanceIntervalSampler()

    def agg(step):
        seen["preds"] = step.predict(views)
        seen["neg"] = step.negative() if with_negative else None
        return step.guide(step.fuse(seen["preds"], [1 / len(views)] * len(views)))

    agg.name = "probe"
    with patch_sampler(sampler, type("Probe", (), {"name": "probe", "__call__": lambda self, s: agg(s)})(), max_batch=cap):
        sampler._inference_model(probe, x, 0.5, cond, neg_cond=torch.zeros(1, 3, 2), guidance_strength=3.0,
                                 guidance_interval=(0.0, 1.0), concat_cond=concat)
    sample_id = T.feats(x)[..., :1] if kind == "sparse" else T.feats(x)[:, :1]
    for v, pred in zip(views, seen["preds"]):
        values = T.feats(pred)
        if kind == "sparse":
            assert torch.equal(pred.coords, x.coords)
        expected = (v + 1) * 1000 + sample_id
        assert torch.equal(values[..., :1] if kind == "sparse" else values[:, :1], expected)
    if with_negative:
        neg_vals = T.feats(seen["neg"])
        assert torch.equal(neg_vals[..., :1] if kind == "sparse" else neg_vals[:, :1], sample_id)
    per_call = len(views) + 1 if cap is None else max(1, cap // b)
    for rows, kw in probe.calls:
        assert rows <= per_call * b and rows % b == 0
        assert T.batch_size(kw["concat_cond"]) == rows  # model kwargs are repeated with the latent


@given(n=st.integers(1, 5), b=st.integers(1, 3))
def test_select_passes_one_view_repeated_per_sample(n, b):
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 2, 3).contiguous()
    cond = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1).expand(n, 3, 2).contiguous()
    sampler = FlowEulerGuidanceIntervalSampler()
    got = {}
    agg = type("Pick", (), {"name": "pick", "__call__": lambda self, s: got.setdefault(s.index, s.select(n - 1))})()
    with patch_sampler(sampler, agg):
        pred = sampler._inference_model(Probe(), x, 0.5, cond, neg_cond=torch.zeros(1, 3, 2),
                                        guidance_strength=1.0, guidance_interval=(0.0, 1.0))
    assert torch.equal(pred[:, :1], n * 1000 + x[:, :1])


def _own_latent(kind, b):
    if kind == "dense":
        return torch.zeros(b, 2, 3)
    coords = torch.tensor([[i, k, 0, 0] for i in range(b) for k in range(i % 3)], dtype=torch.int32).reshape(-1, 4)
    return SparseTensor(torch.zeros(coords.shape[0], 2), coords, batch_size=b)  # sample 0 has no voxels


def _tagged(counts, n):
    return torch.stack([
        torch.stack([torch.full((3, 2), 100.0 * (b + 1) + v + 1) for v in range(n)]) for b in range(len(counts))
    ])


@given(
    kind=st.sampled_from(["dense", "sparse"]),
    counts=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    subset=st.data(),
    cap=st.one_of(st.none(), st.integers(4, 12)),
    neg=st.sampled_from(["one", "per-sample", "like-cond"]),
)
def test_predict_pairs_each_sample_with_its_own_view(kind, counts, subset, cap, neg):
    b, n = len(counts), max(counts)
    x = _own_latent(kind, b)
    cond = _tagged(counts, n)  # sample b's view v: 100 * (b + 1) + v + 1
    weights = [[1.0] * k + [0.0] * (n - k) for k in counts]
    views = subset.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n), label="views")
    neg_cond = {"one": torch.zeros(1, 3, 2), "per-sample": torch.zeros(b, 3, 2), "like-cond": torch.zeros_like(cond)}[neg]
    cap = None if cap is None or cap < b else cap
    probe, seen = Probe(), {}

    class Look:
        name = "look"

        def __call__(self, step):
            seen["preds"], seen["neg"] = step.predict(views), step.negative()
            return step.guide(step.fuse(seen["preds"], [1 / len(views)] * len(views)))

    sampler = FlowEulerGuidanceIntervalSampler()
    with patch_sampler(sampler, Look(), per_sample=True, weights=weights, max_batch=cap) as patch:
        sampler._inference_model(probe, x, 0.5, cond, neg_cond=neg_cond, guidance_strength=3.0, guidance_interval=(0.0, 1.0))
    sample_of = x.coords[:, 0].long()[:, None] if kind == "sparse" else torch.arange(b).view(b, 1, 1).expand(b, 2, 3)
    for v, pred in zip(views, seen["preds"], strict=True):
        tag = 1000 * (100.0 * (sample_of + 1) + v + 1)  # the probe's output on a zero latent
        assert torch.equal(T.feats(pred), tag.to(torch.float32).expand_as(T.feats(pred)))
    assert not T.feats(seen["neg"]).any()
    per_call = len(views) + 1 if cap is None else cap // b
    assert all(rows <= per_call * b and rows % b == 0 for rows, _ in probe.calls)
    assert patch.model_calls == -(-(len(views) + 1) // per_call)  # no forward beyond what max_batch forces
