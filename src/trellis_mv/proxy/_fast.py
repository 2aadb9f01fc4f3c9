"""The fast training step: static shapes, no host syncs, views from a bank rendered once.

* :class:`ViewBank` holds every training shape (occupancy, colours as ``uint8``) and ``K``
  rendered input views per shape (``uint8 [S, K, 3, 64, 64]``, views drawn from
  :func:`~trellis_mv.proxy.train.random_views`), built once on the device and cached on disk.
  Its shapes are sorted into a few :class:`Bucket` s by their number of occupied cells
  (:func:`plan_buckets`); a batch draws a fixed share of its items from each, so every
  bucket's texture stage runs at its own padding, with static shapes.
* :class:`PackedTexture` runs :class:`~trellis_mv.proxy._models.TextureFlow` (its own
  weights) on a fixed-size layout: each batch item's occupied ``2^3`` cells packed, in cell
  order, into ``cells`` slots, each cell with its 8 voxels and a mask, and each item's occupied
  voxels packed into ``rows`` rows (:func:`pack_voxels`) for the per-voxel layers. Attention
  over the masked slots is the sparse model's attention over the item's cells, so both give
  the same velocities (to float rounding): the weights stay those of the sparse model used at
  sampling time.
* :func:`fast_losses` is :func:`~trellis_mv.proxy.train.losses` on that layout: the same
  losses, every shape static, every random number from one device generator.

>>> import torch
>>> from trellis_mv.proxy._data import make_shapes
>>> occ = torch.from_numpy(make_shapes(range(2))[0])
>>> cells, mask, slots = pack_cells(occ, 200)
>>> tuple(cells.shape), tuple(mask.shape), bool((mask.any(-1) == slots).all())
((2, 200), (2, 200, 8), True)
>>> index, valid = pack_voxels(mask, 1600)
>>> bool((valid.sum(1) == occ.flatten(1).sum(1)).all()), bool((mask.flatten(1).gather(1, index) >= valid).all())
(True, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trellis_mv.proxy._cameras import input_views
from trellis_mv.proxy._models import ProxyModels, TextureFlow, encode_structure

__all__ = [
    "Bucket",
    "PackedTexture",
    "ViewBank",
    "build_bank",
    "ema_update",
    "fast_losses",
    "layout",
    "max_cells",
    "pack_cells",
    "pack_voxels",
    "plan_buckets",
]

SIGMA_MIN = 1e-5


def _cells_view(x: torch.Tensor) -> torch.Tensor:
    """``[B, R, R, R, *]`` to ``[B, (R/2)^3, 8, *]``: cells in ``cx, cy, cz`` order, voxels in ``sub = 4x + 2y + z`` order."""
    b, r = x.shape[0], x.shape[1]
    h = r // 2
    rest = x.shape[4:]
    y = x.reshape(b, h, 2, h, 2, h, 2, *rest)
    perm = (0, 1, 3, 5, 2, 4, 6, *range(7, 7 + len(rest)))
    return y.permute(perm).reshape(b, h**3, 8, *rest)


def max_cells(occupancy: torch.Tensor) -> int:
    """The most occupied ``2^3`` cells of any shape in ``occupancy`` (``bool [S, R, R, R]``)."""
    return int(_counts(occupancy)[0].max(initial=0))


def pack_cells(occupancy: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The occupied cells of each item, packed in cell order into ``cells`` slots, with no host sync.

    :returns: ``cell long [B, cells]`` (the cell index ``cx * h^2 + cy * h + cz`` of each slot,
        0 for empty slots), ``voxels bool [B, cells, 8]`` (which of the slot's voxels are occupied)
        and ``slots bool [B, cells]`` (which slots hold a cell). Items with more occupied cells
        than ``cells`` lose the last ones: pass at least :func:`max_cells` of the data.
    """
    vox = _cells_view(occupancy)  # [B, C, 8]
    valid = vox.any(-1)
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :cells]  # occupied cells first, in order
    slots = torch.gather(valid, 1, order)
    cell = torch.where(slots, order, torch.zeros_like(order))
    voxels = torch.gather(vox, 1, cell[..., None].expand(-1, -1, 8)) & slots[..., None]
    return cell, voxels, slots


def pack_voxels(voxels: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The occupied voxels of each item of a :func:`pack_cells` layout, packed in slot order into ``rows`` rows.

    :param voxels: ``bool [B, cells, 8]``.
    :returns: ``index long [B, rows]`` (``8 * slot + sub`` of each row's voxel, 0 for empty rows)
        and ``valid bool [B, rows]``. Pass at least the most occupied voxels of any item.
    """
    flat = voxels.flatten(1)
    order = torch.argsort((~flat).to(torch.uint8), dim=1, stable=True)[:, :rows]
    valid = torch.gather(flat, 1, order)
    return torch.where(valid, order, torch.zeros_like(order)), valid


def gather_cells(x: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Per-voxel values ``[B, R, R, R, C]`` at the packed cells: ``[B, cells, 8, C]``."""
    xc = _cells_view(x)
    return torch.gather(xc, 1, cell[..., None, None].expand(-1, -1, 8, xc.shape[-1]))


class PackedTexture(nn.Module):
    """:class:`TextureFlow`'s forward on the packed layout of :func:`pack_cells` and :func:`pack_voxels` (its weights)."""

    def __init__(self, flow: TextureFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(
        self, feats: torch.Tensor, cell: torch.Tensor, voxels: torch.Tensor, slots: torch.Tensor, t: torch.Tensor,
        cond: torch.Tensor, index: torch.Tensor,
    ) -> torch.Tensor:
        """Velocities ``[B, rows, 3]`` at the voxels ``index`` of the noisy colours ``feats [B, cells, 8, 3]``.

        A cell's token is the mean of ``inp(colour) + sub`` over its occupied voxels, as in the
        sparse model; ``inp`` is affine, so it is taken of the mean colour (no per-voxel
        width-``w`` tensor of the padded cells is built). The per-voxel layers see only the
        ``rows`` packed voxels.
        """
        f = self.flow
        b, n = cell.shape
        sub = f.sub.weight  # [8, w]: voxel ``sub = 4x + 2y + z`` inside its cell, as the sparse model numbers it
        m = voxels.to(feats.dtype)
        count = m.sum(2, keepdim=True).clamp(min=1)
        mean_rgb = (feats * m[..., None]).sum(2) / count
        pooled = (f.inp(mean_rgb) + (m / count) @ sub.to(m.dtype)) * slots[..., None]
        tok = f.cell_in(pooled) + f.pos(cell)
        valid = slots.clone()
        valid[:, 0] |= ~slots.any(1)  # an empty item still attends somewhere (its output is unused)
        h = f.trunk(tok, t, cond, valid[:, None, None, :])  # [B, cells, w]
        rgb = torch.gather(feats.reshape(b, n * 8, 3), 1, index[..., None].expand(-1, -1, 3))
        h_vox = f.inp(rgb) + f.sub(index % 8)
        per_vox = torch.gather(h, 1, (index // 8)[..., None].expand(-1, -1, h.shape[-1])) + f.skip(h_vox)
        for block in f.voxel:
            per_vox = block(per_vox, cond)
        return f.out(f.head(per_vox))


def _noisy(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x_t = (1 - t) * x0 + (SIGMA_MIN + (1 - SIGMA_MIN) * t) * eps
    return x_t, (1 - SIGMA_MIN) * eps - x0


def fast_losses(
    models: ProxyModels, texture: Callable[..., torch.Tensor], occ: torch.Tensor, col: torch.Tensor,
    images: torch.Tensor, gen: torch.Generator, layout: Sequence[tuple[int, int, int]], cond_drop: float = 0.1,
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    structure: Callable[..., torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Flow-matching losses of both stages on one batch, as :func:`~trellis_mv.proxy.train.losses`, without host syncs.

    :param texture: a :class:`PackedTexture` (or its compiled form).
    :param layout: ``(items, cells, rows)`` of each consecutive run of batch items
        (:func:`layout` of the batch's buckets; one ``(B, cells, rows)`` for a batch of one padding): its
        texture stage packs them into ``cells`` slots and ``rows`` voxel rows (at least the
        most occupied cells and voxels of its items).
    :param encoder: the image encoder to call (default ``models.encoder``; a compiled one may be passed).
    :param structure: the structure flow to call (default ``models.structure``).
    """
    dev = occ.device
    b = occ.shape[0]
    if sum(n for n, _, _ in layout) != b:
        raise ValueError(f"the layout's items {[n for n, _, _ in layout]} do not add up to the batch's {b}")
    tokens = (encoder if encoder is not None else models.encoder)(images)
    keep = (torch.rand(b, generator=gen, device=dev) >= cond_drop).to(tokens.dtype)
    tokens = tokens * keep[:, None, None]

    def times(n: int) -> torch.Tensor:  # logit-normal(1, 1), as TRELLIS.2
        return torch.sigmoid(torch.randn(n, generator=gen, device=dev) + 1.0)

    x0 = encode_structure(occ)
    t = times(b)
    x_t, target = _noisy(x0, t[:, None, None, None, None], torch.randn(x0.shape, generator=gen, device=dev))
    loss_s = F.mse_loss((structure if structure is not None else models.structure)(x_t, 1000 * t, tokens).float(), target)

    t2 = times(b)
    sq, count, first = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
    for n, cells, rows in layout:
        part = slice(first, first + n)
        first += n
        cell, voxels, slots = pack_cells(occ[part], cells)
        index, valid = pack_voxels(voxels, rows)
        f0 = gather_cells(col[part], cell) * 2 - 1  # [n, cells, 8, 3]
        f_t, target2 = _noisy(f0, t2[part, None, None, None], torch.randn(f0.shape, generator=gen, device=dev))
        pred = texture(f_t, cell, voxels, slots, 1000 * t2[part], tokens[part], index)
        target2 = torch.gather(target2.reshape(n, cells * 8, 3), 1, index[..., None].expand(-1, -1, 3))
        m = valid[..., None].float()
        sq = sq + ((pred.float() - target2) ** 2 * m).sum()
        count = count + m.sum() * 3
    return {"structure": loss_s, "texture": sq / count.clamp(min=1)}


def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * param`` for all tensors at once (a few foreach kernels)."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


# ---------------------------------------------------------------------------------------
# the view bank
@dataclass(frozen=True)
class Bucket:
    """Bank shapes whose occupied cells fit ``cells`` slots and voxels ``rows`` rows; ``items`` of every batch are theirs."""

    shapes: torch.Tensor  # long [S_b]: indices into the bank, on its device
    cells: int
    rows: int
    items: int

    def __repr__(self) -> str:
        return f"Bucket(shapes={self.shapes.numel()}, cells={self.cells}, rows={self.rows}, items={self.items})"


def _round8(x: int) -> int:
    return max(-(-x // 8) * 8, 8)


def _counts(occupancy: torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Occupied ``2^3`` cells and voxels of every shape (``int64 [S]`` each)."""
    cells, voxels = [], []
    for i in range(0, occupancy.shape[0], chunk):
        part = occupancy[i : i + chunk]
        cells.append(_cells_view(part).any(-1).sum(-1).cpu())
        voxels.append(part.flatten(1).sum(1).cpu())
    return torch.cat(cells).numpy(), torch.cat(voxels).numpy()


def plan_buckets(occupancy: torch.Tensor, batch: int, buckets: int = 4, voxel_cost: float = 0.15) -> tuple[Bucket, ...]:
    """Sort shapes into at most ``buckets`` runs of their cell count, each padded to its own largest shape.

    A batch of ``batch`` items draws a fixed number of them from each bucket, in proportion to
    its shapes (largest remainder), so each bucket's texture stage has static shapes. The runs
    minimise the padded work ``items * (cells + voxel_cost * rows)`` (a cell token passes the
    trunk; a voxel row passes only the voxel layers, ``voxel_cost`` of a token's work), among
    splits whose every bucket gets at least one item of a batch. A shape's chance to be drawn
    differs from ``1 / S`` only by that rounding (under ``buckets / batch`` of a bucket's share).

    >>> import torch
    >>> from trellis_mv.proxy._data import make_shapes
    >>> occ = torch.from_numpy(make_shapes(range(64))[0])
    >>> plan = plan_buckets(occ, batch=32, buckets=3)
    >>> sum(b.items for b in plan), sorted(torch.cat([b.shapes for b in plan]).tolist()) == list(range(64))
    (32, True)
    >>> plan[0].cells < plan[-1].cells
    True
    """
    if batch < 1 or buckets < 1:
        raise ValueError(f"batch ({batch}) and buckets ({buckets}) must be at least 1")
    cells, voxels = _counts(occupancy)
    total = len(cells)
    values = np.unique(cells)
    members = [np.flatnonzero(cells == v) for v in values]
    sizes = np.array([len(m) for m in members])
    top_vox = [int(voxels[m].max()) for m in members]
    m = len(values)
    inf = float("inf")

    def cost(i: int, j: int) -> float:  # the run of values i..j as one bucket
        n = int(sizes[i : j + 1].sum())
        if n * batch < total:
            return inf
        return n * (_round8(int(values[j])) + voxel_cost * _round8(max(top_vox[i : j + 1])))

    best = [[inf] * (m + 1) for _ in range(buckets + 1)]  # best[k][j]: the first j values in k buckets
    cut = [[0] * (m + 1) for _ in range(buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, buckets + 1):
        for j in range(1, m + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + cost(i, j - 1) if best[k - 1][i] < inf else inf
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, buckets + 1), key=lambda k: (best[k][m], k))
    runs, j = [], m
    while k:
        i = cut[k][j]
        runs.append((i, j))
        j, k = i, k - 1
    runs.reverse()
    shares = [int(sizes[i:j].sum()) * batch / total for i, j in runs]
    items = [int(x) for x in shares]
    for r in sorted(range(len(runs)), key=lambda r: (-(shares[r] - items[r]), r))[: batch - sum(items)]:
        items[r] += 1
    dev = occupancy.device
    return tuple(
        Bucket(torch.from_numpy(np.concatenate(members[i:j])).to(dev), _round8(int(values[j - 1])),
               _round8(max(top_vox[i:j])), n)
        for (i, j), n in zip(runs, items)
    )


@dataclass
class ViewBank:
    """Training shapes and their pre-rendered views, on one device.

    ``occ bool [S, R, R, R]``, ``col uint8 [S, R, R, R, 3]``, ``images uint8 [S, K, 3, H, W]``
    (``round(255 * image)``) and ``views float32 [S, K, 2]`` (azimuth, elevation).
    """

    occ: torch.Tensor
    col: torch.Tensor
    images: torch.Tensor
    views: torch.Tensor

    @property
    def shapes(self) -> int:
        """Number of shapes."""
        return self.occ.shape[0]

    @property
    def per_shape(self) -> int:
        """Views per shape ``K``."""
        return self.images.shape[1]

    def batch(
        self, gen: torch.Generator, buckets: Sequence[Bucket]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random batch, ``bucket.items`` shapes from each bucket in turn (with replacement), each with one of its views.

        :returns: ``occ``, ``col float``, ``images float``; :func:`layout` of ``buckets`` says how they are packed.
        """
        dev = self.occ.device
        idx = torch.cat([b.shapes[torch.randint(0, b.shapes.numel(), (b.items,), generator=gen, device=dev)]
                         for b in buckets])
        k = torch.randint(0, self.per_shape, (idx.numel(),), generator=gen, device=dev)
        images = self.images[idx, k].float() / 255
        return self.occ[idx], self.col[idx].float() / 255, images


def layout(buckets: Sequence[Bucket]) -> list[tuple[int, int, int]]:
    """``(items, cells, rows)`` of each bucket, the ``layout`` of :func:`fast_losses` for a :meth:`ViewBank.batch`."""
    return [(b.items, b.cells, b.rows) for b in buckets]


def _key(shapes: int, per_shape: int, seed: int, size: int) -> str:
    spec = {"shapes": shapes, "per_shape": per_shape, "seed": seed, "size": size, "format": 1}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def build_bank(
    occ: torch.Tensor, col: torch.Tensor, per_shape: int, seed: int, device: str | torch.device,
    draw_views: Callable[[int, np.random.Generator], Sequence[tuple[float, float]]],
    size: int = 64, chunk: int = 256, cache: str | Path | None = None, verbose: bool = False,
) -> ViewBank:
    """Render ``per_shape`` views of every shape on ``device`` (or read them from ``cache``).

    :param occ: ``bool [S, R, R, R]`` (any device); :param col: ``float [S, R, R, R, 3]`` in ``[0, 1]``.
    :param draw_views: ``draw_views(n, rng)`` gives ``n`` training views ``(azimuth, elevation)``
        (:func:`trellis_mv.proxy.train.random_views`); called once, with a generator seeded by ``seed``.
    :param chunk: views rendered per call of the renderer (larger is faster on a GPU).
    :param cache: a folder: the bank is read from it when it holds one of the same shapes
        count, views per shape, seed and size, else written to it.
    """
    dev = torch.device(device)
    s = occ.shape[0]
    occ_d = occ.to(dev)
    col_u8 = (col * 255).round().to(torch.uint8).to(dev)
    path = None if cache is None else Path(cache) / f"bank-{_key(s, per_shape, seed, size)}.npz"
    if path is not None and path.is_file():
        with np.load(path) as f:
            images, views = torch.from_numpy(f["images"]).to(dev), torch.from_numpy(f["views"])
        if verbose:
            print(json.dumps({"bank": str(path), "read": True, "images": list(images.shape)}), flush=True)
        return ViewBank(occ_d, col_u8, images, views)
    rng = np.random.default_rng([seed, 7])
    views = torch.tensor([tuple(v) for v in draw_views(s * per_shape, rng)], dtype=torch.float32).reshape(s, per_shape, 2)
    images = torch.empty((s, per_shape, 3, size, size), dtype=torch.uint8, device=dev)
    flat = images.view(s * per_shape, 3, size, size)
    vlist = [tuple(v) for v in views.reshape(-1, 2).tolist()]
    item = torch.arange(s, device=dev).repeat_interleave(per_shape)
    t0 = time.time()
    col_d = col.to(dev)
    for i in range(0, s * per_shape, chunk):
        j = min(i + chunk, s * per_shape)
        sel = item[i:j]
        img = input_views(occ_d[sel], col_d[sel], vlist[i:j], size=size)
        flat[i:j] = (img * 255).round().to(torch.uint8)
    del col_d
    seconds = time.time() - t0
    if verbose:
        rate = s * per_shape / max(seconds, 1e-9)
        rec = {"bank_views": s * per_shape, "render_seconds": round(seconds, 1), "views_per_s": round(rate)}
        print(json.dumps(rec), flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images.cpu().numpy(), views=views.numpy())
        tmp.replace(path)
    return ViewBank(occ_d, col_u8, images, views)


def bank_bytes(shapes: int, per_shape: int, size: int = 64) -> int:
    """Bytes the bank's images take (``uint8``)."""
    return shapes * per_shape * 3 * size * size


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Learning rate of ``step`` (1-based): linear warm-up over ``warmup`` steps, cosine to 5% at ``steps``.

    The same schedule as the legacy run's ``LambdaLR`` (which is called with ``step - 1``).

    >>> round(cosine_lr(1, 100, 1.0, 10), 3), round(cosine_lr(100, 100, 1.0, 10), 3)
    (0.1, 0.05)
    """
    s = step - 1
    return lr * min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
