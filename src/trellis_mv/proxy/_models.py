"""The proxy's networks: an image encoder and two DiT-style flow models, as in TRELLIS.2.

* :class:`ImageEncoder` turns a ``64x64`` RGB image into ``(64 / patch)^2`` tokens (256 with
  the default ``4x4`` patches; it stands in for DINOv3 and is trained jointly with the flow models).
* :class:`StructureFlow` (stage ``"sparse_structure"``) predicts the velocity of a dense
  latent ``[B, 8, 8, 8, 8]``: the ``16^3`` occupancy in ``{-1, 1}`` folded space-to-depth;
  one token per latent cell (``structure_patch`` 1, 512 tokens) or per ``2^3`` cells.
* :class:`TextureFlow` (stage ``"texture"``) predicts the velocity of a sparse latent: one
  colour row per occupied voxel (:class:`~trellis_mv.sparse.SparseTensor`, ``feats [M, 3]``
  in ``[-1, 1]``). Voxels are pooled into ``2^3`` cells that attend to the cells of the same
  batch item only, so any number of batch items can be stacked.

Both flow models are called as TRELLIS.2's are: ``model(x_t, 1000 * t [B], cond [B, L, C])``;
cross-attention reads the image tokens, and the negative conditioning is ``zeros_like(cond)``.

>>> import torch
>>> enc, flow = ImageEncoder(), StructureFlow()
>>> cond = enc(torch.rand(2, 3, 64, 64))
>>> flow(torch.randn(2, 8, 8, 8, 8), torch.full((2,), 500.0), cond).shape
torch.Size([2, 8, 8, 8, 8])
"""

from __future__ import annotations

import json
import math
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trellis_mv.sparse import SparseTensor

__all__ = [
    "ImageEncoder",
    "ProxyConfig",
    "ProxyModels",
    "StructureFlow",
    "TextureFlow",
    "decode_structure",
    "encode_structure",
    "extend_models",
    "load_models",
    "save_models",
]


@dataclass(frozen=True)
class ProxyConfig:
    """Sizes of the proxy networks (stored next to the weights)."""

    image_size: int = 64
    patch: int = 4
    width: int = 160
    heads: int = 5
    encoder_layers: int = 3
    structure_blocks: int = 6
    texture_blocks: int = 4
    grid: int = 16
    structure_patch: int = 1
    voxel_blocks: int = 1

    @classmethod
    def from_dict(cls, sizes: dict[str, int]) -> ProxyConfig:
        """The config stored with weights or a training state; those written before voxel blocks have none.

        >>> ProxyConfig.from_dict({"width": 160}).voxel_blocks
        0
        """
        return cls(**{"voxel_blocks": 0, **sizes})


# ---------------------------------------------------------------------------------------
# latents
def encode_structure(occupancy: torch.Tensor) -> torch.Tensor:
    """``[B, 16, 16, 16]`` occupancy to the dense latent ``[B, 8, 8, 8, 8]`` in ``{-1, 1}``.

    >>> occ = torch.rand(2, 16, 16, 16) > 0.5
    >>> bool((decode_structure(encode_structure(occ)) == occ).all())
    True
    """
    x = occupancy.float() * 2 - 1
    b, r = x.shape[0], x.shape[1]
    x = x.reshape(b, r // 2, 2, r // 2, 2, r // 2, 2)
    return x.permute(0, 2, 4, 6, 1, 3, 5).reshape(b, 8, r // 2, r // 2, r // 2).contiguous()


def decode_structure(latent: torch.Tensor) -> torch.Tensor:
    """Dense latent ``[B, 8, 8, 8, 8]`` back to occupancy ``bool [B, 16, 16, 16]`` (threshold 0)."""
    b, _, h = latent.shape[0], latent.shape[1], latent.shape[2]
    x = latent.reshape(b, 2, 2, 2, h, h, h).permute(0, 4, 1, 5, 2, 6, 3)
    return x.reshape(b, 2 * h, 2 * h, 2 * h) > 0


# ---------------------------------------------------------------------------------------
# building blocks
def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, w = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, w // h).transpose(1, 2)
        k, v = self.kv(ctx).reshape(b, ctx.shape[1], 2, h, w // h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, n, w))


class _Block(nn.Module):
    """DiT block: adaLN-modulated self-attention and MLP, plus cross-attention on image tokens."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.cross = _Attention(width, heads)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(approximate="tanh"), nn.Linear(2 * width, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.ada(F.silu(temb))[:, None].chunk(6, -1)
        h = self.norm1(x) * (1 + s1) + b1
        x = x + (1 + g1) * self.attn(h, h, mask)
        x = x + self.cross(self.norm2(x), cond)
        return x + (1 + g2) * self.mlp(self.norm3(x) * (1 + s2) + b2)


class _VoxelBlock(nn.Module):
    """One voxel's own look at the image: cross-attention from each voxel to the image tokens, then an MLP.

    Its two output projections start at zero, so a block added to trained weights leaves their
    velocities unchanged until it is trained.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.cross = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        last = nn.Linear(2 * width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(approximate="tanh"), last)
        for lin in (self.cross.out, last):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = x + self.cross(self.norm1(x), cond.to(x.dtype))
        return x + self.mlp(self.norm2(x))


class _Trunk(nn.Module):
    def __init__(self, width: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.width = width
        self.t_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.ada = nn.Linear(width, 2 * width)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None = None):
        if cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"conditioning batch {cond.shape[0]} does not match latent batch {x.shape[0]}: "
                "pass one conditioning row per batch item (repeat it for num_samples > 1)"
            )
        temb = self.t_mlp(_timestep_embedding(t, self.width))
        cond = cond.to(x.dtype)
        for block in self.blocks:
            x = block(x, temb, cond, mask)
        shift, scale = self.ada(F.silu(temb))[:, None].chunk(2, -1)
        return self.norm(x) * (1 + scale) + shift


# ---------------------------------------------------------------------------------------
# the three networks
class ImageEncoder(nn.Module):
    """``[B, 3, 64, 64]`` images in ``[0, 1]`` to tokens ``[B, 64, width]``."""

    def __init__(self, cfg: ProxyConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ProxyConfig()
        n = (cfg.image_size // cfg.patch) ** 2
        self.embed = nn.Conv2d(3, cfg.width, cfg.patch, cfg.patch)
        self.pos = nn.Parameter(torch.randn(1, n, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, 2 * cfg.width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images * 2 - 1).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.layers(x))


class StructureFlow(nn.Module):
    """Velocity of the dense structure latent ``[B, 8, 8, 8, 8]``: one token per ``structure_patch^3`` latent cells."""

    def __init__(self, cfg: ProxyConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ProxyConfig()
        self.p = cfg.structure_patch
        self.res = cfg.grid // 2
        self.n = (self.res // self.p) ** 3
        self.inp = nn.Linear(8 * self.p**3, cfg.width)
        self.pos = nn.Parameter(torch.randn(1, self.n, cfg.width) * 0.02)
        self.trunk = _Trunk(cfg.width, cfg.heads, cfg.structure_blocks)
        self.out = nn.Linear(cfg.width, 8 * self.p**3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **_: object) -> torch.Tensor:
        b, c, p = x.shape[0], x.shape[1], self.p
        r = self.res // p
        tok = x.reshape(b, c, r, p, r, p, r, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, r**3, c * p**3)
        h = self.trunk(self.inp(tok) + self.pos, t, cond)
        out = self.out(h).reshape(b, r, r, r, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(x.shape).to(x.dtype)  # in x's dtype under autocast too, as the texture flow's


class TextureFlow(nn.Module):
    """Velocity of the sparse colour latent (one row per occupied voxel), per batch item."""

    def __init__(self, cfg: ProxyConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ProxyConfig()
        w = cfg.width
        self.cells = cfg.grid // 2
        self.inp = nn.Linear(3, w)
        self.sub = nn.Embedding(8, w)  # position of the voxel inside its 2^3 cell
        self.pos = nn.Embedding(self.cells**3, w)
        self.cell_in = nn.Linear(w, w)
        self.trunk = _Trunk(w, cfg.heads, cfg.texture_blocks)
        self.skip = nn.Linear(w, w)
        self.voxel = nn.ModuleList(_VoxelBlock(w, cfg.heads) for _ in range(cfg.voxel_blocks))
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.GELU(approximate="tanh"))
        self.out = nn.Linear(w, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._cached_layout: tuple[tuple[int, int, int], weakref.ref[torch.Tensor], tuple[torch.Tensor, ...]] | None = None

    def _layout(self, coords: torch.Tensor, b: int) -> tuple[torch.Tensor, ...]:
        """The cells of ``coords`` and where each sits in the padded token batch; kept for the same coordinates.

        Building it syncs with the device (the number of cells and the longest item decide the
        shapes); a sampler keeps its voxels through the texture stage (and
        :func:`trellis_mv._tensors.repeat_batch` returns the same repeated coordinates), so the
        layout is built once a stage, not once a step. Coordinates changed in place are built again.
        """
        key = (id(coords), coords._version, b)
        cached = self._cached_layout
        if cached is not None and cached[0] == key and cached[1]() is coords:
            return cached[2]
        c = coords.long()
        xyz = c[:, 1:]
        sub = (xyz % 2 * torch.tensor([4, 2, 1], device=c.device)).sum(1)
        cell_id = (xyz // 2 * torch.tensor([self.cells**2, self.cells, 1], device=c.device)).sum(1)
        key_cell = c[:, 0] * self.cells**3 + cell_id
        uniq, inv = torch.unique(key_cell, return_inverse=True)
        k = uniq.shape[0]
        cb = uniq // self.cells**3  # batch item of each cell (cells sorted by batch)
        per = torch.bincount(cb, minlength=b)
        start = torch.cumsum(per, 0) - per
        slot = torch.arange(k, device=c.device) - start[cb]
        # each voxel's place among its item's voxels (the voxel blocks' rows, no padding between cells)
        vb = c[:, 0]
        vper = torch.bincount(vb, minlength=b)
        order = torch.argsort(vb, stable=True)
        vslot = torch.empty_like(vb)
        vslot[order] = torch.arange(vb.shape[0], device=c.device) - (torch.cumsum(vper, 0) - vper)[vb[order]]
        longest = torch.stack([per.max(), vper.max()]).tolist() if k else [1, 1]  # the one host sync
        n, nv = max(int(longest[0]), 1), max(int(longest[1]), 1)
        valid = torch.zeros(b, n, dtype=torch.bool, device=c.device)
        valid[cb, slot] = True
        valid[:, 0] = True  # an empty item still attends somewhere (its output is unused)
        layout = (sub, uniq, inv, cb, slot, valid, vb, vslot, torch.empty(nv, 0, device=c.device))
        self._cached_layout = (key, weakref.ref(coords), layout)
        return layout

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor, **_: object) -> SparseTensor:
        b = x.shape[0]
        sub, uniq, inv, cb, slot, valid, vb, vslot, vrows = self._layout(x.coords, b)
        h_vox = self.inp(x.feats.to(self.inp.weight.dtype)) + self.sub(sub)
        k = uniq.shape[0]
        pooled = torch.zeros(k, h_vox.shape[1], device=h_vox.device, dtype=h_vox.dtype).index_add_(0, inv, h_vox)
        count = torch.zeros(k, device=h_vox.device, dtype=h_vox.dtype).index_add_(
            0, inv, torch.ones_like(inv, dtype=h_vox.dtype)
        )
        tok = self.cell_in(pooled / count[:, None]) + self.pos(uniq % self.cells**3)
        padded = torch.zeros(b, valid.shape[1], tok.shape[1], device=tok.device, dtype=tok.dtype)
        padded[cb, slot] = tok
        h = self.trunk(padded, t, cond, valid[:, None, None, :])
        per_vox = h[cb[inv], slot[inv]] + self.skip(h_vox)
        if len(self.voxel):
            # each item's voxels in rows of their own (vrows.shape[0]: the most voxels of any item); a
            # voxel's cross-attention does not depend on its row, so this equals the packed layout's rows
            grid = torch.zeros(b, vrows.shape[0], per_vox.shape[1], device=per_vox.device, dtype=per_vox.dtype)
            grid[vb, vslot] = per_vox
            for block in self.voxel:
                grid = block(grid, cond)
            per_vox = grid[vb, vslot]
        return x.replace(self.out(self.head(per_vox)).to(x.feats.dtype))


class ProxyModels(nn.Module):
    """The encoder and the two stage models, saved and loaded together."""

    def __init__(self, cfg: ProxyConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ProxyConfig()
        self.encoder = ImageEncoder(self.cfg)
        self.structure = StructureFlow(self.cfg)
        self.texture = TextureFlow(self.cfg)


def extend_models(models: ProxyModels, cfg: ProxyConfig) -> ProxyModels:
    """``models`` with ``cfg``'s added voxel blocks: trained weights kept, the new blocks at identity.

    Only ``voxel_blocks`` may grow (each new :class:`_VoxelBlock` starts with zero output
    projections, so the extended models predict what ``models`` predict).

    >>> base = ProxyModels()
    >>> big = extend_models(base, ProxyConfig(voxel_blocks=1))
    >>> len(big.texture.voxel), big.cfg.voxel_blocks
    (1, 1)

    :raises ValueError: when ``cfg`` changes another size or removes voxel blocks.
    """
    old = asdict(models.cfg)
    new = asdict(cfg)
    changed = sorted(k for k in old if old[k] != new[k] and k != "voxel_blocks")
    if changed or cfg.voxel_blocks < models.cfg.voxel_blocks:
        raise ValueError(
            f"cannot extend proxy weights of config {models.cfg} to {cfg}: only voxel_blocks may grow "
            f"(changed: {changed or ['voxel_blocks (fewer)']}); train from scratch for other sizes"
        )
    out = ProxyModels(cfg)
    missing, unexpected = out.load_state_dict(models.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("texture.voxel.") for k in missing), (missing, unexpected)
    p = next(models.parameters())
    return out.to(device=p.device, dtype=p.dtype).train(models.training)


def save_models(models: ProxyModels, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the weights as float16 safetensors with the config in the metadata.

    >>> import tempfile, os
    >>> p = save_models(ProxyModels(), os.path.join(tempfile.mkdtemp(), "w.safetensors"))
    >>> load_models(p).cfg == ProxyConfig()
    True
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in models.state_dict().items()}
    meta = {"config": json.dumps(asdict(models.cfg)), "format": "trellis-mv-proxy-1", **(metadata or {})}
    save_file(state, str(path), metadata=meta)
    return path


def load_models(path: str | Path, device: str | torch.device = "cpu") -> ProxyModels:
    """Load :class:`ProxyModels` saved by :func:`save_models` (float32, eval mode).

    :raises FileNotFoundError: when ``path`` does not exist.
    :raises ValueError: when the file is not a proxy weights file or does not match the networks.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"proxy weights not found at weights={str(path)!r}; reinstall trellis-mv or pass the path "
            "written by `python -m trellis_mv.proxy.train`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ValueError(f"weights={str(path)!r} is not a readable safetensors file ({exc}); re-train or reinstall") from exc
    if meta.get("format") != "trellis-mv-proxy-1":
        raise ValueError(f"weights={str(path)!r} is not a trellis-mv proxy weights file (format={meta.get('format')!r})")
    try:
        cfg = ProxyConfig.from_dict(json.loads(meta["config"]))
        if not all(isinstance(v, int) and (0 <= v if k == "voxel_blocks" else 0 < v) and v <= 4096
                   for k, v in cfg.__dict__.items()):
            raise ValueError(f"sizes out of range: {cfg}")
        models = ProxyModels(cfg)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"weights={str(path)!r} has a broken proxy config ({type(exc).__name__}: {exc}); re-train or "
                         "reinstall") from exc
    try:
        models.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(f"weights={str(path)!r} do not match the proxy networks: {exc}") from exc
    return models.to(device).eval()
