"""Batch operations on latents that may be dense tensors or sparse voxel tensors.

A *sparse* latent is anything with ``feats``, ``coords`` (batch index in column 0) and
``replace(feats)``: TRELLIS.2's ``SparseTensor`` and :class:`trellis_mv.sparse.SparseTensor`.
Sparse models keep the row order of their input (the Euler update is element-wise on
``feats``), which is what lets one forward evaluate several copies of a latent.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

Latent = Any  # a torch.Tensor or a sparse tensor


def is_sparse(x: object) -> bool:
    """Whether ``x`` is a sparse latent (has ``feats``, ``coords`` and ``replace``)."""
    return hasattr(x, "feats") and hasattr(x, "coords") and hasattr(x, "replace")


def batch_size(x: Latent) -> int:
    return int(x.shape[0])


def feats(x: Latent) -> torch.Tensor:
    """The values of a latent as a plain tensor (``feats`` of a sparse one)."""
    return x.feats if is_sparse(x) else x


def with_feats(like: Latent, values: torch.Tensor) -> Latent:
    """A latent shaped like ``like`` holding ``values`` (for sparse ones: the same voxels).

    >>> import torch
    >>> with_feats(torch.zeros(2), torch.ones(2))
    tensor([1., 1.])
    """
    return like.replace(values) if is_sparse(like) else values


#: (id, version of the coordinates, n, batch) -> (the coordinates, weakly; their repeat; its version)
_REPEATED: dict[tuple[int, int, int, int], tuple[weakref.ref[torch.Tensor], torch.Tensor, int]] = {}


def _repeated_coords(coords: torch.Tensor, n: int, b: int) -> torch.Tensor:
    """``n`` copies of sparse ``coords`` with batch indices offset by ``b``; the same tensor for the same input.

    A sampler keeps its voxels through a stage, so every step repeats the same coordinates:
    returning the same tensor lets a model key a cache on it (the proxy's texture flow builds its
    cell layout, a host sync, once a stage instead of once a step). An entry is dropped when its
    coordinates are freed, and is not used when either tensor was changed in place.
    """
    key = (id(coords), coords._version, n, b)
    hit = _REPEATED.get(key)
    if hit is not None and hit[0]() is coords and hit[1]._version == hit[2]:
        return hit[1]
    out = coords.repeat(n, 1)
    out[:, 0] += torch.arange(n, device=coords.device, dtype=coords.dtype).repeat_interleave(coords.shape[0]) * b
    if len(_REPEATED) >= 16:  # the stages alive at once are few (entries also go with their coordinates)
        _REPEATED.clear()

    def forget(_: weakref.ref[torch.Tensor]) -> None:
        _REPEATED.pop(key, None)

    _REPEATED[key] = (weakref.ref(coords, forget), out, out._version)
    return out


def repeat_batch(x: Latent, n: int) -> Latent:
    """``n`` copies of ``x`` concatenated along the batch: copy ``k`` holds items ``k*B .. k*B+B-1``.

    For a sparse ``x``, repeating the same coordinates again returns the same coordinate tensor
    (:func:`_repeated_coords`), so that what a model derives from them can be kept through a stage.
    """
    if n == 1:
        return x
    if is_sparse(x):
        b = batch_size(x)
        coords = _repeated_coords(x.coords, n, b)
        values = x.feats.repeat(n, *([1] * (x.feats.ndim - 1)))
        # give the batch size explicitly: a sample without voxels must not shrink the batch
        return type(x)(feats=values, coords=coords, shape=torch.Size([n * b, *x.shape[1:]]))
    return x.repeat(n, *([1] * (x.ndim - 1)))


def split_batch(y: Latent, like: Latent, n: int) -> list[Latent]:
    """Undo :func:`repeat_batch` on a model output ``y``: ``n`` latents shaped like ``like``."""
    if n == 1:
        return [y]
    if is_sparse(like):
        rows = like.feats.shape[0]
        values = feats(y)
        if values.shape[0] != n * rows:
            raise ValueError(f"expected {n * rows} rows from the model, got {values.shape[0]}")
        return [like.replace(values[k * rows : (k + 1) * rows]) for k in range(n)]
    return list(y.split(batch_size(like)))


def weighted_sum(preds: list[Latent], weights: list[float]) -> Latent:
    """``sum(w_i * p_i)``; with uniform weights ``1/n``, ``sum(p_i) / n``, the order TRELLIS v1 uses."""
    n = len(preds)
    if all(abs(w * n - 1) < 1e-9 for w in weights):
        total = preds[0]
        for p in preds[1:]:
            total = total + p
        return total / n if n > 1 else total
    total = weights[0] * preds[0]
    for w, p in zip(weights[1:], preds[1:], strict=False):
        total = total + w * p
    return total


def sample_weighted_sum(preds: list[Latent], weights: torch.Tensor) -> Latent:
    """``sum_i w[b, i] * p_i[b]`` per sample ``b``: weights ``[B, V]``, one row per sample, for ``V`` predictions.

    >>> import torch
    >>> sample_weighted_sum([torch.ones(2, 3), torch.zeros(2, 3)], torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    tensor([[1.0000, 1.0000, 1.0000],
            [0.2500, 0.2500, 0.2500]])
    """
    like = preds[0]
    values = torch.stack([feats(p) for p in preds])  # [V, B, ...] or, sparse, [V, M, ...]
    w = weights.to(device=values.device, dtype=values.dtype).T  # [V, B]
    if is_sparse(like):
        w = w[:, like.coords[:, 0].long()]
    w = w.reshape(*w.shape, *([1] * (values.ndim - 2)))
    return with_feats(like, (w * values).sum(0))
