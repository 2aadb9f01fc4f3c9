"""``concat``: the views' image tokens concatenated into one conditioning sequence.

TRELLIS.2's own multi-image trainer (``MultiImageConditionedMixin``) and Hunyuan3D-2mv
condition on the tokens of all views at once; here the same is done without training and
without view embeddings: the conditioning ``[N, L, C]`` becomes one sequence ``[1, N*L, C]``
and the sampler is called once with it, its own guidance included. Cost per step: one
positive and one negative forward, whatever N (the positive attends to N times more
tokens).

The negative stays the one ``[1, L, C]`` row the sampler was given: the model's
cross-attention is evaluated per call, so the positive and the negative need not have the
same number of tokens, and a sequence of K copies of one row attends exactly as that row
does (every copy has the same attention logit and value), so ``zeros_like(cond[:1])``
*is* the negative of the concatenated sequence.

Weights. A view of weight 0 (``patch_sampler(..., weights=...)``) is left out of the
sequence. Other unequal weights, and the option ``bias``, are added to the attention
logits of each view's tokens (``log w_i + bias_i``): a softmax over the concatenated keys
then mixes the per-view attention outputs in proportion to ``w_i * exp(bias_i)`` times each
view's own attention mass. Only a model that takes a per-token bias can do that: its
``forward`` must accept the keyword ``cond_bias``, a tensor ``[B, L_cond]`` added to the
cross-attention logits of every query and head. On a model without it (TRELLIS.2's flow
models, the proxy) unequal weights or biases raise :class:`~trellis_mv.AggregatorOptionError`:
repeating a view's tokens is not weighting it (duplicates attend exactly as one copy), and
ignoring the request silently would be worse. Equal biases change nothing (softmax is
shift-invariant) and work everywhere.

Per-sample views (``patch_sampler(..., per_sample=True)``): each sample's sequence holds its
own views' tokens. Samples with different numbers of views ``n_b`` get sequences of one
length ``M * L`` by repeating each sample's whole sequence ``M / n_b`` times, ``M`` the least
common multiple of the ``n_b``: K copies of a sequence attend exactly as the sequence, so this
is exact on any model; the positive then attends to ``M`` views' worth of tokens (group
objects by view count to keep ``M`` at the largest count).

>>> import torch, trellis_mv
>>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
>>> sampler, model = FlowEulerGuidanceIntervalSampler(), lambda x, t, cond, **kw: x - cond.mean()
>>> with trellis_mv.patch_sampler(sampler, "concat") as patch:
...     out = sampler.sample(model, torch.randn(1, 5), torch.randn(4, 3, 8), torch.zeros(1, 3, 8),
...                          steps=8, guidance_strength=3.0, verbose=False)
>>> patch.model_calls                     # 8 steps x (one positive + one negative), for 4 views
16
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch

from trellis_mv import AggregatorOptionError, Step, hookimpl

__all__ = ["BIAS_KEYWORD", "Concat", "takes_bias"]

#: The keyword through which a model accepts a per-token cross-attention bias ``[B, L_cond]``.
BIAS_KEYWORD = "cond_bias"


def takes_bias(model: Any) -> bool:
    """Whether ``model``'s forward names the keyword :data:`BIAS_KEYWORD` (``**kwargs`` does not count).

    >>> takes_bias(lambda x, t, cond, cond_bias=None: x), takes_bias(lambda x, t, cond, **kw: x)
    (True, False)
    """
    fn = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(BIAS_KEYWORD)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _fail(option: str, message: str) -> AggregatorOptionError:
    return AggregatorOptionError(f"concat: {option} {message}", aggregator="concat")


class Concat:
    """The views' tokens concatenated into one sequence: one positive and one negative forward per step."""

    name = "concat"
    fuses = True  # N copies of a view's tokens attend exactly as one copy
    # Permuting views (with their weights and biases) permutes blocks of keys, which softmax
    # attention ignores, on models without positional encodings of the condition tokens
    # (TRELLIS.2's). The conformance kit checks it with unequal weights, which only a model
    # taking ``cond_bias`` can honour, so the claim is tested in this plugin's own tests.
    order_free = False
    weighted = True

    def __init__(self, *, bias: Sequence[float] | None = None) -> None:
        if bias is not None:
            if isinstance(bias, (str, bytes)) or not isinstance(bias, Sequence) or not bias or any(
                isinstance(b, bool) or not isinstance(b, (int, float)) for b in bias
            ):
                raise _fail("option bias", f"must be a non-empty sequence of numbers, one per view; got bias={bias!r}")
            if not all(math.isfinite(b) for b in bias):
                raise _fail("option bias", f"must hold finite numbers (a view is left out with weight 0, not with "
                                           f"-inf); got bias={list(bias)!r}")
        self.bias = None if bias is None else [float(b) for b in bias]

    def __call__(self, step: Step) -> Any:
        if step.per_sample:
            return self._per_sample(step)
        cond = step.cond
        if cond.ndim != 3:
            raise _fail("cond", f"must be token sequences [N, L, C] to concatenate; the views' conditioning has shape "
                                f"{tuple(cond.shape)}")
        n, length, width = cond.shape
        bias = self.bias if self.bias is not None else [0.0] * n
        if len(bias) != n:
            raise _fail("option bias", f"gives {len(bias)} biases but this sampler call has {n} views; "
                                       "give one bias per view")
        weights = step.weights.tolist()
        keep = [i for i in range(n) if weights[i] > 0]
        tokens = cond[keep].reshape(1, len(keep) * length, width)
        logits = [bias[i] + math.log(weights[i]) for i in keep]
        if max(logits) - min(logits) <= 1e-12:  # nothing to bias: the sampler's own step
            return step.sampler_call(tokens)
        if not takes_bias(step.model):
            unequal_bias = len({bias[i] for i in keep}) > 1
            given = f"option bias={[bias[i] for i in keep]}" if unequal_bias else f"weights={weights}"
            raise _fail(given, f"asks for unequal attention to the views, but the model's forward takes no "
                               f"{BIAS_KEYWORD!r} keyword to bias its attention per view. Repeating tokens is not "
                               "weighting: use equal weights and biases with this model, or an aggregator that weights "
                               "predictions ('weighted', 'multidiffusion')")
        top = max(logits)
        per_token = torch.tensor([v - top for v in logits], dtype=cond.dtype, device=cond.device)
        cond_bias = per_token.repeat_interleave(length).unsqueeze(0).expand(step.batch_size, -1)
        # the negative gets the same bias, so it is tiled to the same length: K copies of one row
        # attend as that row does, whatever bias each copy gets
        neg = step.neg_cond.repeat(1, len(keep), 1) if step.neg_cond is not None else None
        return step.sampler_call(tokens, neg=neg, **{BIAS_KEYWORD: cond_bias})

    def _per_sample(self, step: Step) -> Any:
        cond = step.cond
        if cond.ndim != 4:
            raise _fail("cond", f"must be token sequences [B, N, L, C] to concatenate; the views' conditioning has "
                                f"shape {tuple(cond.shape)}")
        b, n, length, width = cond.shape
        bias = self.bias if self.bias is not None else [0.0] * n
        if len(bias) != n:
            raise _fail("option bias", f"gives {len(bias)} biases but this sampler call has {n} views; "
                                       "give one bias per view")
        counts = step.sample_num_views
        key = f"concat {counts}"
        if key not in step.state:  # once per run: each sample's views, its whole sequence repeated to M views
            m = math.lcm(*counts)
            order = [[v for _ in range(m // k) for v in range(k)] for k in counts]
            step.state[key] = (torch.arange(b, device=cond.device)[:, None], torch.tensor(order, device=cond.device))
        rows, index = step.state[key]
        tokens = cond[rows, index].reshape(b, -1, width)  # [B, M * L, C]
        weights = step.sample_weights.tolist()
        logits = [[bias[i] + math.log(w[i]) for i in range(k)] for w, k in zip(weights, counts, strict=True)]
        if all(max(row) - min(row) <= 1e-12 for row in logits):
            return step.sampler_call(tokens)
        if not takes_bias(step.model):
            unequal_bias = any(len({bias[i] for i in range(k)}) > 1 for k in counts)
            given = f"option bias={bias}" if unequal_bias else f"weights={weights}"
            raise _fail(given, f"asks for unequal attention to the views, but the model's forward takes no "
                               f"{BIAS_KEYWORD!r} keyword to bias its attention per view. Repeating tokens is not "
                               "weighting: use equal weights and biases with this model, or an aggregator that weights "
                               "predictions ('weighted', 'multidiffusion')")
        shifted = [[v - max(row) for v in row] + [0.0] * (n - len(row)) for row in logits]
        per_view = torch.tensor(shifted, dtype=cond.dtype, device=cond.device)
        cond_bias = per_view.gather(1, index).repeat_interleave(length, dim=1)  # [B, M * L]
        neg = step.neg_cond.repeat(1, index.shape[1], 1) if step.neg_cond is not None else None
        return step.sampler_call(tokens, neg=neg, **{BIAS_KEYWORD: cond_bias})

    def __repr__(self) -> str:
        return f"Concat(bias={self.bias!r})"


@hookimpl
def register_aggregators() -> list[type]:
    return [Concat]
