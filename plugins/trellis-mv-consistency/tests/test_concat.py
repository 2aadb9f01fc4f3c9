import math
from dataclasses import replace

import pytest
import torch
from trellis_mv_consistency.concat import Concat, takes_bias

import trellis_mv
from trellis_mv import AggregatorOptionError, patch_sampler
from trellis_mv.testing import AggregatorTests, make_problem


class TestConcat(AggregatorTests):
    aggregator, distribution = Concat, "trellis-mv-consistency"


class AttnDenoiser(torch.nn.Module):
    """A dense velocity model with softmax cross-attention on the condition tokens that takes ``cond_bias``."""

    def __init__(self, channels: int = 4, cond_dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w_q = torch.randn(channels, cond_dim, generator=g)
        self.w_k = torch.randn(cond_dim, cond_dim, generator=g) / cond_dim**0.5
        self.w_v = torch.randn(cond_dim, channels, generator=g)
        self.w_t = torch.randn(channels, generator=g) * 0.5

    def forward(self, x, t, cond, cond_bias=None):
        b, c = x.shape[:2]
        h = x.reshape(b, c, -1).transpose(1, 2)  # [B, P, C]
        logits = (h @ self.w_q) @ (cond @ self.w_k).transpose(1, 2)  # [B, P, L]
        if cond_bias is not None:
            logits = logits + cond_bias[:, None, :]
        out = torch.softmax(logits, dim=-1) @ (cond @ self.w_v)
        v = torch.tanh(out) - 0.5 * h + (t / 1000).view(-1, 1, 1) * self.w_t
        return v.transpose(1, 2).reshape(x.shape)


def attn_problem(**kw):
    problem = make_problem(**kw)
    return replace(problem, model=AttnDenoiser())


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_is_the_sampler_on_the_concatenated_tokens(kind):
    problem = make_problem(kind=kind, num_views=3, num_samples=2, rescale=0.7)
    with patch_sampler(problem.sampler, "concat"):
        ours = problem.run()
    n, length, width = problem.cond.shape
    tokens = problem.cond.reshape(1, n * length, width).expand(2, -1, -1)
    reference = problem.sampler.sample(problem.model, problem.noise, tokens, problem.neg_cond.expand(2, -1, -1),
                                       verbose=False, **problem.kwargs).samples
    assert torch.equal(trellis_mv._tensors.feats(ours), trellis_mv._tensors.feats(reference))


@pytest.mark.parametrize("num_views", [1, 2, 4])
def test_one_positive_and_one_negative_forward_per_step(num_views):
    problem = make_problem(num_views=num_views, num_samples=2, steps=5)
    seen = []

    def model(x, t, cond, **kw):
        seen.append(cond.shape[1])
        return problem.model(x, t, cond, **kw)

    with patch_sampler(problem.sampler, "concat") as patch:
        replace(problem, model=model).run()
    assert patch.model_calls == 2 * 5 and patch.batch_rows == 2 * 5 * 2
    assert sorted(set(seen)) == sorted({5 * num_views, 5})  # positive N*L tokens, negative L tokens
    problem.kwargs["guidance_strength"] = 1.0
    with patch_sampler(problem.sampler, "concat") as patch:
        problem.run()
    assert patch.model_calls == 5


def test_equal_biases_change_nothing_on_any_model():
    problem = make_problem(num_views=3)
    with patch_sampler(problem.sampler, "concat"):
        plain = problem.run()
    with patch_sampler(problem.sampler, "concat", bias=[0.7, 0.7, 0.7]):
        biased = problem.run()
    assert torch.equal(plain, biased)


def test_a_tiled_negative_with_any_bias_is_the_negative():
    model, x, t = AttnDenoiser(), torch.randn(2, 4, 3, 3), torch.full((2,), 300.0)
    neg = torch.randn(1, 5, 8).expand(2, -1, -1)
    bias = torch.tensor([0.0, -1.5, 2.0]).repeat_interleave(5).expand(2, -1)
    torch.testing.assert_close(model(x, t, neg.repeat(1, 3, 1), cond_bias=bias), model(x, t, neg))


def test_bias_is_the_log_of_the_weights():
    problem = attn_problem(num_views=3, rescale=0.7)
    with patch_sampler(problem.sampler, "concat", weights=[4, 1, 2]):
        weighted = problem.run()
    with patch_sampler(problem.sampler, "concat", bias=[math.log(4), 0.0, math.log(2)]):
        biased = problem.run()
    with patch_sampler(problem.sampler, "concat"):
        plain = problem.run()
    torch.testing.assert_close(weighted, biased)
    assert (weighted - plain).abs().max() > 1e-3


def test_a_strongly_negative_bias_all_but_removes_a_view():
    problem = attn_problem(num_views=3)
    with patch_sampler(problem.sampler, "concat", bias=[0.0, 0.0, -40.0]):
        biased = problem.run()
    with patch_sampler(problem.sampler, "concat", weights=[1, 1, 0]):
        dropped = problem.run()
    torch.testing.assert_close(biased, dropped)


def test_identical_views_with_biases_equal_one_view():
    problem = attn_problem(num_views=1)
    with patch_sampler(problem.sampler, "concat"):
        one = problem.run()
    with patch_sampler(problem.sampler, "concat", bias=[1.0, -2.0, 0.5], weights=[1, 3, 2]):
        three = problem.run(cond=problem.cond.repeat(3, 1, 1))
    torch.testing.assert_close(three, one)


def test_permuting_views_weights_and_biases_together_changes_nothing():
    problem = attn_problem(num_views=3)
    weights, bias, perm = [1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [2, 0, 1]
    with patch_sampler(problem.sampler, "concat", weights=weights, bias=bias):
        a = problem.run()
    with patch_sampler(problem.sampler, "concat", weights=[weights[i] for i in perm], bias=[bias[i] for i in perm]):
        b = problem.run(cond=problem.cond[perm])
    torch.testing.assert_close(a, b)


def test_takes_bias_reads_the_forward_signature():
    assert takes_bias(AttnDenoiser())
    assert not takes_bias(make_problem().model)  # forward(x, t, cond, **kwargs): a catch-all is no promise


@pytest.mark.parametrize(
    "patch_kw, message",
    [
        (dict(bias=[0.0, 1.0, 0.0]), r"concat: option bias=\[0.0, 1.0, 0.0\] asks for unequal attention"),
        (dict(weights=[2, 1, 1]), r"concat: weights=\[0.5, 0.25, 0.25\] asks for unequal attention"),
    ],
)
def test_unequal_attention_on_a_model_without_cond_bias_is_an_error(patch_kw, message):
    problem = make_problem(num_views=3)
    with pytest.raises(AggregatorOptionError, match=message) as info:
        with patch_sampler(problem.sampler, "concat", **patch_kw):
            problem.run()
    assert info.value.aggregator == "concat" and "'cond_bias'" in str(info.value)


@pytest.mark.parametrize("bias", [[0.0, float("nan")], [float("-inf"), 0.0], "01", [True, 0.0], [], 1.0])
def test_bad_bias_names_the_aggregator_and_the_option(bias):
    with pytest.raises(AggregatorOptionError, match=r"^concat: option bias must") as info:
        trellis_mv.get_aggregator("concat", bias=bias)
    assert info.value.aggregator == "concat"


def test_a_bias_for_another_number_of_views_is_reported_at_the_first_step():
    problem = make_problem(num_views=3)
    with pytest.raises(AggregatorOptionError, match="concat: option bias gives 2 biases but this sampler call has 3"):
        with patch_sampler(problem.sampler, "concat", bias=[0.0, 1.0]):
            problem.run()


def test_conditioning_that_is_not_token_sequences_cannot_be_concatenated():
    from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler

    sampler = FlowEulerGuidanceIntervalSampler()
    with pytest.raises(AggregatorOptionError, match=r"concat: cond must be token sequences \[N, L, C\].*\(3, 8\)"):
        with patch_sampler(sampler, "concat"):
            sampler.sample(lambda x, t, c, **kw: x, torch.randn(1, 4), torch.randn(3, 8), torch.zeros(1, 8),
                           steps=2, guidance_strength=3.0, verbose=False)
