"""A minimal sparse voxel tensor with the interface of TRELLIS.2's ``SparseTensor``.

TRELLIS.2's structured latents are sparse: ``feats`` of shape ``[M, C]`` hold one row per
active voxel and ``coords`` of shape ``[M, 4]`` hold ``(batch, x, y, z)``, with the rows of
one batch item contiguous. The samplers only need element-wise arithmetic on it, and the
sampler patch only needs ``feats``, ``coords``, ``replace`` and ``shape``. This class
provides exactly that, so that the embedded proxy model and the conformance kit exercise
the sparse code path without TRELLIS.2 installed.

>>> import torch
>>> x = SparseTensor(torch.ones(3, 2), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]))
>>> x.shape
torch.Size([2, 2])
>>> (2 * x - 1).feats.sum().item()
6.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._tensors import feats, is_sparse, with_feats

__all__ = ["SparseTensor", "feats", "is_sparse", "with_feats"]


class SparseTensor:
    """Sparse voxels: ``feats [M, C]`` and ``coords [M, 4]`` (batch index first).

    :param feats: one feature row per active voxel.
    :param coords: ``int`` coordinates ``(batch, x, y, z)``; rows of one batch item contiguous.
    :param batch_size: number of batch items; inferred from ``coords`` when omitted.
    :param shape: TRELLIS.2's way to give the batch size, ``[B, C]``; ``shape[0]`` is used.
    """

    __slots__ = ("_batch_size", "coords", "feats")

    def __init__(
        self, feats: torch.Tensor, coords: torch.Tensor, batch_size: int | None = None, shape: torch.Size | None = None
    ) -> None:
        if feats.ndim < 2 or coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(
                f"SparseTensor expects feats [M, C] and coords [M, 4]; got feats {tuple(feats.shape)} "
                f"and coords {tuple(coords.shape)}"
            )
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}")
        self.feats = feats
        self.coords = coords
        if batch_size is None and shape is not None:
            batch_size = int(shape[0])
        if batch_size is None:
            batch_size = int(coords[:, 0].max().item()) + 1 if coords.shape[0] else 0
        self._batch_size = batch_size

    # -- the tensor-like surface the samplers and the patch rely on --------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size([self._batch_size, *self.feats.shape[1:]])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_index(self) -> torch.Tensor:
        """Batch item of each row, as a ``long`` tensor."""
        return self.coords[:, 0].long()

    def replace(self, feats: torch.Tensor, coords: torch.Tensor | None = None) -> SparseTensor:
        """The same voxels with new features (and optionally new coordinates)."""
        return SparseTensor(feats, self.coords if coords is None else coords, self._batch_size)

    def std(self, dim: int | list[int] | None = None, keepdim: bool = False) -> torch.Tensor:
        """Per-batch-item standard deviation over voxels and channels, ``[B, 1]``.

        Matches what TRELLIS.2's guidance rescale needs: a per-sample scale.
        """
        b = self._batch_size
        idx = self.batch_index
        flat = self.feats.reshape(self.feats.shape[0], -1).float()
        count = torch.bincount(idx, minlength=b).clamp_min(1).to(flat) * flat.shape[1]
        total = torch.zeros(b, dtype=flat.dtype, device=flat.device).index_add_(0, idx, flat.sum(1))
        mean = total / count
        sq = torch.zeros(b, dtype=flat.dtype, device=flat.device).index_add_(
            0, idx, ((flat - mean[idx, None]) ** 2).sum(1)
        )
        out = (sq / (count - 1).clamp_min(1)).sqrt().to(self.feats.dtype)
        return out[:, None] if keepdim else out

    def _elementwise(self, other: Any, op: Callable[[torch.Tensor, Any], torch.Tensor]) -> SparseTensor:
        if isinstance(other, SparseTensor):
            other = other.feats
        elif isinstance(other, torch.Tensor) and other.ndim >= 1 and other.shape[0] == self._batch_size:
            # a per-batch-item tensor such as [B, 1]: broadcast to the rows of each item
            # (when B equals the number of rows the two readings coincide)
            other = other[self.batch_index]
        return self.replace(op(self.feats, other))

    def __add__(self, other: Any) -> SparseTensor:
        return self._elementwise(other, torch.add)

    def __radd__(self, other: Any) -> SparseTensor:
        return self._elementwise(other, lambda a, b: b + a)

    def __sub__(self, other: Any) -> SparseTensor:
        return self._elementwise(other, torch.sub)

    def __rsub__(self, other: Any) -> SparseTensor:
        return self._elementwise(other, lambda a, b: b - a)

    def __mul__(self, other: Any) -> SparseTensor:
        return self._elementwise(other, torch.mul)

    def __rmul__(self, other: Any) -> SparseTensor:
        return self._elementwise(other, lambda a, b: b * a)

    def __truediv__(self, other: Any) -> SparseTensor:
        return self._elementwise(other, torch.div)

    def __neg__(self) -> SparseTensor:
        return self.replace(-self.feats)

    def __repr__(self) -> str:
        return f"SparseTensor(shape={tuple(self.shape)}, voxels={self.feats.shape[0]})"
