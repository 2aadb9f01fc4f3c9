"""Test support: a reference denoiser with TRELLIS-style cross-attention, and proxy runs with cameras."""

from __future__ import annotations

from typing import Any

import torch

import trellis_mv
from trellis_mv import _tensors as T
from trellis_mv.testing import TinyDenoiser


class CrossAttention(torch.nn.Module):
    """Attention of latent rows on the condition tokens, laid out as TRELLIS's ``MultiHeadAttention(type="cross")``."""

    def __init__(self, channels: int, cond_dim: int, heads: int, g: torch.Generator) -> None:
        super().__init__()
        self._type = "cross"
        self.num_heads = heads
        self.qk_rms_norm = False
        self.to_q = torch.nn.Linear(channels, channels)
        self.to_kv = torch.nn.Linear(cond_dim, 2 * channels)
        for p in self.parameters():
            p.requires_grad_(False)
            p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: Any, context: torch.Tensor) -> Any:
        h = self.num_heads
        kv = self.to_kv(context)
        k, v = kv.reshape(*kv.shape[:2], 2, h, -1).unbind(2)  # [B, L, H, D]
        if T.is_sparse(x):
            q = self.to_q(x.feats).reshape(x.feats.shape[0], h, -1)
            b = x.coords[:, 0].long()
            logits = torch.einsum("mhd,mlhd->mhl", q, k[b]) * q.shape[-1] ** -0.5
            out = torch.einsum("mhl,mlhd->mhd", logits.softmax(-1), v[b])
            return x.replace(out.reshape(x.feats.shape[0], -1))
        q = self.to_q(x).reshape(*x.shape[:2], h, -1)
        logits = torch.einsum("bqhd,blhd->bhql", q, k) * q.shape[-1] ** -0.5
        return torch.einsum("bhql,blhd->bqhd", logits.softmax(-1), v).reshape(x.shape)


class CrossAttnDenoiser(TinyDenoiser):
    """:class:`~trellis_mv.testing.TinyDenoiser` whose conditioning enters through cross-attention, per latent row."""

    def __init__(self, channels: int = 4, cond_dim: int = 8, seed: int = 0) -> None:
        super().__init__(channels, cond_dim, seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.block = torch.nn.Module()
        self.block.cross_attn = CrossAttention(channels, cond_dim, 2, g)

    def forward(self, x: Any, t: torch.Tensor, cond: torch.Tensor, **kwargs: Any) -> Any:
        b = T.batch_size(x)
        if cond.shape[0] != b or t.shape[0] != b:
            raise ValueError(f"conditioning batch {cond.shape[0]} / time batch {t.shape[0]} do not match latent batch {b}")
        self.forwards += 1
        self.rows += b
        self.negative_rows += int((cond.flatten(1).abs().sum(1) == 0).sum())
        if T.is_sparse(x):
            idx = x.coords[:, 0].long()
            attended = self.block.cross_attn(x, cond).feats
            return x.replace(self._velocity(x.feats, t[idx], attended))
        h = x.movedim(1, -1)
        rows = h.reshape(b, -1, self.channels)
        attended = self.block.cross_attn(rows, cond)
        per = rows.shape[1]
        out = self._velocity(rows.reshape(-1, self.channels), t.repeat_interleave(per), attended.reshape(-1, self.channels))
        return out.reshape(h.shape).movedim(-1, 1)


def run_proxy(pipeline: Any, images: list, aggregator: Any, cameras: list | None = None, *, stages: tuple = (),
              **run_kwargs: Any) -> tuple[Any, dict]:
    """The proxy with ``aggregator`` (name, class or instance) on ``stages`` (default: every stage; the others
    multidiffusion) and cameras."""
    run = trellis_mv.run_multi_image(pipeline, images, mode="multidiffusion" if stages else aggregator,
                                     stages=dict.fromkeys(stages, aggregator) if stages else None, cameras=cameras,
                                     **run_kwargs)
    return run.output, run.patches
