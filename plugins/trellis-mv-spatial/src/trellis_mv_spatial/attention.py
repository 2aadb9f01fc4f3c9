"""``attention``: per-element view weights from how sharply each view's cross-attention focuses.

Training-free, after MV-SAM3D (arXiv 2603.11633): a latent element whose queries attend to
a few image tokens of a view is informed by that view; one whose attention spreads over all
tokens is not. At every step the views' predictions are computed in one batched forward, as
``multidiffusion`` does; during that forward, forward hooks on the model's cross-attention
modules recompute each query's attention distribution over the image tokens and its entropy
``H`` (normalised by ``log(tokens)``, so in ``[0, 1]``), averaged over heads and layers. Per
element, view ``i`` gets the weight ``w_i exp(-alpha H_i) / sum_j w_j exp(-alpha H_j)``
(``w`` = ``step.weights``), and the per-element weighted mean is guided once.

Models it can hook: TRELLIS.2's and TRELLIS's flow models (``MultiHeadAttention`` and
``SparseMultiHeadAttention`` with ``type="cross"``: the dense structure flow's one token per
latent position, the sparse flows' one query per voxel) and the proxy (the ``cross``
attention of each block: the structure flow's ``2^3`` patches, the texture flow's ``2^3``
voxel cells). A model passed as a function that wraps such a module (a bound method,
``functools.partial``, a closure) is searched too. On any other model the first multi-view step raises
:class:`~trellis_mv.AggregatorOptionError`.

Cost, on top of ``multidiffusion``'s forward: per cross-attention layer, the query and key
projections again and the attention logits ``queries x image tokens`` per head, in float32,
in chunks of at most ``chunk`` queries (memory ``chunk x heads x tokens`` floats a layer, freed
at once); nothing persists between steps. On TRELLIS.2's real flow models at four views
(H100, bf16) a step takes 1.87x a ``multidiffusion`` step on the structure stage (+2.5 GiB
peak) and 1.57x on the shape stage. Hooks live only during the step's forward; a model shared by threads running
at once would mix their captures.

>>> import torch, trellis_mv
>>> class Tiny(torch.nn.Module):                  # no cross-attention to hook
...     def forward(self, x, t, cond, **kw):
...         return x - cond.mean()
>>> from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
>>> sampler = FlowEulerGuidanceIntervalSampler()
>>> with trellis_mv.patch_sampler(sampler, "attention"):
...     sampler.sample(Tiny(), torch.randn(1, 4), torch.randn(2, 3, 8), torch.zeros(1, 3, 8), steps=2, verbose=False)
... # doctest: +ELLIPSIS
Traceback (most recent call last):
...
trellis_mv._errors.AggregatorOptionError: attention: the model Tiny has no cross-attention module to hook ...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trellis_mv import AggregatorOptionError, Step, hookimpl
from trellis_mv.sparse import is_sparse

from ._elements import ElementAggregator, Elements, elements, number_option

__all__ = ["Attention", "Site", "find_cross_attention", "query_entropy"]


def _fail(message: str) -> AggregatorOptionError:
    return AggregatorOptionError(f"attention: {message}", aggregator="attention")


def query_entropy(q: torch.Tensor, k: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Entropy of each query's softmax attention over the keys, normalised to ``[0, 1]``, mean over heads.

    :param q: ``[B, H, Lq, D]`` queries.
    :param k: ``[B, H, Lk, D]`` keys (the logits are scaled by ``D ** -0.5``).
    :returns: ``[B, Lq]``.

    >>> q = torch.zeros(1, 1, 1, 4); k = torch.randn(1, 1, 8, 4)
    >>> round(query_entropy(q, k).item(), 6)                  # a zero query attends uniformly
    1.0
    """
    scale = q.shape[-1] ** -0.5
    out = []
    q, k = q.float(), k.float()
    norm = math.log(k.shape[-2]) if k.shape[-2] > 1 else 1.0
    for start in range(0, q.shape[-2], chunk):
        logp = torch.log_softmax(q[..., start : start + chunk, :] @ k.transpose(-1, -2) * scale, dim=-1)
        out.append(-(logp.exp() * logp).sum(-1).mean(1) / norm)
    return torch.cat(out, -1)


def _context(args: tuple, kwargs: dict) -> torch.Tensor:
    ctx = args[1] if len(args) > 1 else kwargs.get("context", kwargs.get("ctx"))
    if ctx is None or not isinstance(ctx, torch.Tensor):
        raise _fail(f"a cross-attention module was called with context of type {type(ctx).__name__}; "
                    "only dense conditioning tensors [B, L, C] are supported (not variable-length lists)")
    return ctx


def _probe_proxy(m: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    x, ctx = args[0], _context(args, kwargs)
    b, n, w = x.shape
    h = m.heads
    q = m.q(x).reshape(b, n, h, w // h).transpose(1, 2)
    k = m.kv(ctx).reshape(b, ctx.shape[1], 2, h, w // h)[:, :, 0].transpose(1, 2)
    return query_entropy(q, k)


def _probe_trellis(m: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    x, ctx = args[0], _context(args, kwargs)
    h = m.num_heads
    kv = m.to_kv(ctx)
    k = kv.reshape(*kv.shape[:2], 2, h, -1)[:, :, 0]  # [B, Lk, H, D]
    if getattr(m, "qk_rms_norm", False):
        k = m.k_rms_norm(k)
    if is_sparse(x):  # one query per voxel row; each row attends to its own batch item's context
        q = m.to_q(x.feats).reshape(x.feats.shape[0], h, -1)
        if getattr(m, "qk_rms_norm", False):
            q = m.q_rms_norm(q)
        batch = x.coords[:, 0].long()
        out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
        for b in batch.unique().tolist():
            rows = (batch == b).nonzero().squeeze(1)
            out[rows] = query_entropy(q[rows].transpose(0, 1)[None], k[b : b + 1].transpose(1, 2))[0]
        return out
    q = m.to_q(x).reshape(*x.shape[:2], h, -1)
    if getattr(m, "qk_rms_norm", False):
        q = m.q_rms_norm(q)
    return query_entropy(q.transpose(1, 2), k.transpose(1, 2))


@dataclass
class Site:
    """One hooked cross-attention module and how to read its attention entropy."""

    name: str
    module: torch.nn.Module
    probe: Callable[[torch.nn.Module, tuple, dict], torch.Tensor]
    captured: list[torch.Tensor] = field(default_factory=list)


def find_cross_attention(model: Any) -> list[Site]:
    """The cross-attention modules of ``model`` this aggregator can hook (empty when none).

    >>> from trellis_mv.proxy import ProxyPipeline
    >>> [s.name for s in find_cross_attention(ProxyPipeline().models.structure)][:2]
    ['trunk.blocks.0.cross', 'trunk.blocks.1.cross']
    """
    model = _module_of(model)
    if model is None:
        return []
    sites = []
    for name, m in model.named_modules():
        if getattr(m, "_type", None) == "cross" and all(hasattr(m, a) for a in ("to_q", "to_kv", "num_heads")):
            sites.append(Site(name, m, _probe_trellis))
        elif name.rsplit(".", 1)[-1] == "cross" and all(hasattr(m, a) for a in ("q", "kv", "heads")):
            sites.append(Site(name, m, _probe_proxy))
    return sites


def _module_of(model: Any, depth: int = 3) -> torch.nn.Module | None:
    """The module behind ``model``: itself, or the module a bound method, ``functools.partial``,
    ``__wrapped__`` function or closure calls."""
    if isinstance(model, torch.nn.Module):
        return model
    if depth == 0:
        return None
    inner = [getattr(model, "__self__", None), getattr(model, "func", None), getattr(model, "__wrapped__", None)]
    inner += [cell.cell_contents for cell in (getattr(model, "__closure__", None) or ()) if _filled(cell)]
    for candidate in inner:
        found = _module_of(candidate, depth - 1) if candidate is not None and candidate is not model else None
        if found is not None:
            return found
    return None


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _proxy_texture_cells(model: Any, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy texture flow pools voxels into ``2^3`` cells, padded per batch item: each voxel's (item, slot)."""
    coords = x.coords.long()
    cells = int(model.cells)
    cell = coords[:, 1:] // 2
    cell_id = (cell * torch.tensor([cells**2, cells, 1], device=coords.device)).sum(1)
    uniq, inv = torch.unique(coords[:, 0] * cells**3 + cell_id, return_inverse=True)
    item = uniq // cells**3
    per = torch.bincount(item, minlength=int(x.shape[0]))
    slot = torch.arange(uniq.shape[0], device=coords.device) - (torch.cumsum(per, 0) - per)[item]
    return item[inv], slot[inv]


def _proxy_texture_voxels(x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The proxy texture flow's voxel blocks give each batch item's voxels rows of their own, in
    coordinate order: each voxel's (item, row)."""
    item = x.coords[:, 0].long()
    per = torch.bincount(item, minlength=int(x.shape[0]))
    order = torch.argsort(item, stable=True)
    row = torch.empty_like(item)
    row[order] = torch.arange(item.shape[0], device=item.device) - (torch.cumsum(per, 0) - per)[item[order]]
    return item, row


def _to_elements(ent: torch.Tensor, copies: int, step: Step, el: Elements, site: str = "") -> torch.Tensor:
    """Captured entropies of ``copies`` stacked copies of the latent to ``[copies, R]`` (``site``: the module's name)."""
    b = step.batch_size
    if el.spatial is None:
        m = el.rows
        if ent.ndim == 1 and ent.shape[0] == copies * m:
            return ent.reshape(copies, m)
        module = _module_of(step.model)
        if ent.ndim == 2 and ent.shape[0] == copies * b and hasattr(module, "cells"):
            # the proxy's cell trunk queries one row per 2^3 cell; its voxel blocks, one per voxel
            voxel_rows = site.startswith("voxel.")
            item, slot = _proxy_texture_voxels(step.x_t) if voxel_rows else _proxy_texture_cells(module, step.x_t)
            return ent.reshape(copies, b, -1)[:, item, slot]
    elif ent.ndim == 2 and ent.shape[0] == copies * b:
        spatial, lq = el.spatial, ent.shape[1]
        p = math.prod(spatial)
        f = round((p / lq) ** (1 / len(spatial))) if lq else 0
        if f >= 1 and all(s % f == 0 for s in spatial) and math.prod(s // f for s in spatial) == lq:
            grid = ent.reshape(copies * b, *(s // f for s in spatial))
            for dim in range(1, len(spatial) + 1):
                grid = grid.repeat_interleave(f, dim=dim)
            return grid.reshape(copies, b * p)
    raise _fail(f"cannot tell which latent elements the {tuple(ent.shape)} cross-attention queries of "
                f"{type(step.model).__name__} stand for (latent with {el.rows} elements, {b} samples, {copies} copies); "
                "this model's query layout is not supported, use 'visibility' or 'robust'")


class Attention(ElementAggregator):
    """Per element, views weighted by how sharply their cross-attention focuses (MV-SAM3D style)."""

    name = "attention"

    def __init__(self, *, alpha: float = 10.0) -> None:
        self.alpha = number_option("attention", "alpha", alpha, low=0.0,
                                   meaning=" (how strongly lower attention entropy wins, per unit of normalised entropy)")

    def evaluate(self, step: Step, views: list[int]) -> Elements:
        """The views' predictions, with each view's attention entropy per element captured during the forward."""
        sites = find_cross_attention(step.model)
        if not sites:
            raise _fail(f"the model {type(step.model).__name__} has no cross-attention module to hook (looked for "
                        "TRELLIS/TRELLIS.2 attention modules of type 'cross' and the proxy's 'cross' blocks); use "
                        "'visibility' or 'robust' with this model")
        handles = []

        def hook(site: Site) -> Callable[..., None]:
            def capture(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
                with torch.no_grad():
                    site.captured.append(site.probe(module, args, kwargs))

            return capture

        try:
            for site in sites:
                handles.append(site.module.register_forward_hook(hook(site), with_kwargs=True))
            preds = step.predict(views)
        finally:
            for handle in handles:
                handle.remove()
        el = elements(step, preds, views)
        entropy = torch.zeros(len(views), el.rows, dtype=torch.float64, device=el.values.device)
        for site in sites:
            ent = torch.cat(site.captured, 0)
            site.captured.clear()
            rows = ent.shape[0] // (step.batch_size if ent.ndim == 2 or el.spatial is not None else el.rows)
            entropy += _to_elements(ent, rows, step, el, site.name)[: len(views)].to(entropy)
        el.notes["entropy"] = entropy / len(sites)
        return el

    def element_weights(self, step: Step, el: Elements) -> torch.Tensor:
        entropy = el.notes["entropy"]
        step.record("attention_entropy", el.per_element(entropy.float()))
        return torch.softmax(el.prior.to(entropy).log() - self.alpha * entropy, dim=0)

    def __repr__(self) -> str:
        return f"Attention(alpha={self.alpha})"


@hookimpl
def register_aggregators() -> list[type]:
    return [Attention]
