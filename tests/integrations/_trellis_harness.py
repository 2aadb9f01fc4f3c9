"""Tiny TRELLIS.2 / TRELLIS pipelines built from their real classes, with random weights.

The flow models, samplers, SparseTensor and pipeline class are TRELLIS.2's (or TRELLIS')
own code, at a size that samples in well under a second on a CPU. What needs hub weights
or CUDA extensions is replaced by small test doubles: the image encoder (a fixed random
projection of the pixels), the sparse-structure decoder (a quantile threshold of the
latent), the shape decoder's ``upsample`` (for the cascade) and ``decode_latent``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import upstream as _bootstrap
from PIL import Image, ImageDraw

COND_TOKENS, COND_CHANNELS = 6, 32
SLAT_CHANNELS = 8

SS_PARAMS = {"steps": 4, "guidance_strength": 7.5, "guidance_rescale": 0.7, "rescale_t": 5.0,
             "guidance_interval": [0.6, 1.0]}
SHAPE_PARAMS = {"steps": 4, "guidance_strength": 7.5, "guidance_rescale": 0.5, "rescale_t": 3.0,
                "guidance_interval": [0.6, 1.0]}
TEX_PARAMS = {"steps": 4, "guidance_strength": 1.0, "guidance_rescale": 0.0, "rescale_t": 3.0,
              "guidance_interval": [0.6, 0.9]}


def _missing(what: str, exc: Exception) -> None:
    """Skip with the reason; where the sources are required (CI sets TRELLIS_MV_REQUIRE_UPSTREAM=1), fail."""
    message = f"{what} source not available: {exc}"
    if os.environ.get("TRELLIS_MV_REQUIRE_UPSTREAM", "") not in ("", "0"):
        pytest.fail(message + " (TRELLIS_MV_REQUIRE_UPSTREAM is set: these tests must run)")
    pytest.skip(message)


def load_trellis2_or_skip() -> Any:
    try:
        return _bootstrap.load_trellis2(flash_attn_shim=True)
    except _bootstrap.SourceNotFound as exc:
        _missing("TRELLIS.2", exc)


def load_trellis_or_skip() -> Any:
    try:
        return _bootstrap.load_trellis(flash_attn_shim=True)
    except _bootstrap.SourceNotFound as exc:
        _missing("TRELLIS", exc)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere, the zero-initialised modulation and output layers included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen).to(p.dtype)
            if name.endswith("gamma") or "norm" in name:
                p.copy_(1 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.02 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return model.eval()


def dense_kwargs(**extra: Any) -> dict[str, Any]:
    return dict(in_channels=8, model_channels=64, cond_channels=COND_CHANNELS, out_channels=8, num_blocks=2,
                num_heads=2, mlp_ratio=2, pe_mode="rope", share_mod=True, initialization="scaled",
                qk_rms_norm=True, qk_rms_norm_cross=True, **extra)


def tiny_ss_flow(seed: int = 1) -> nn.Module:
    from trellis2.models.sparse_structure_flow import SparseStructureFlowModel

    return randomize_(SparseStructureFlowModel(resolution=8, **dense_kwargs()), seed)


def tiny_slat_flow(in_channels: int, seed: int) -> nn.Module:
    from trellis2.models.structured_latent_flow import SLatFlowModel

    kw = dense_kwargs()
    kw.update(in_channels=in_channels, out_channels=SLAT_CHANNELS)
    return randomize_(SLatFlowModel(resolution=32, **kw), seed)


class QuantileDecoder(nn.Module):
    """Stands in for the sparse-structure VAE decoder: the top 2% of an upsampled latent channel."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = F.interpolate(z[:, :1].float(), size=32, mode="trilinear", align_corners=False)
        q = v.flatten(1).quantile(0.98, dim=1).view(-1, 1, 1, 1, 1)
        return v - q


class UpsampleDecoder(nn.Module):
    """Stands in for the shape decoder in the cascade: each voxel's centre in 512-voxel units."""

    low_vram = False

    def upsample(self, slat: Any, upsample_times: int = 4) -> torch.Tensor:
        c = slat.coords
        return torch.cat([c[:, :1], c[:, 1:] * 16 + 8], dim=1)


class PixelEncoder:
    """Stands in for DINOv3: a fixed random projection of an 8x8 thumbnail, ``[N, 6, 32]``."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(123)
        self.proj = torch.randn(8 * 8 * 3, COND_TOKENS * COND_CHANNELS, generator=gen) / 8
        self.image_size = 512
        self.calls: list[tuple[int, int]] = []

    def to(self, *args: Any, **kwargs: Any) -> PixelEncoder:
        return self

    def cpu(self) -> PixelEncoder:
        return self

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        self.calls.append((len(images), self.image_size))
        rows = [torch.from_numpy(np.asarray(im.convert("RGB").resize((8, 8)), dtype=np.float32) / 255).flatten()
                for im in images]
        tokens = torch.stack(rows) @ self.proj
        return tokens.view(len(images), COND_TOKENS, COND_CHANNELS) + self.image_size / 1024


def tiny_pipeline(*, cascade: bool = True) -> Any:
    """A ``Trellis2ImageTo3DPipeline`` with every model of every pipeline type, tiny and random."""
    from trellis2.pipelines.samplers import FlowEulerGuidanceIntervalSampler
    from trellis2.pipelines.trellis2_image_to_3d import Trellis2ImageTo3DPipeline

    models = {
        "sparse_structure_flow_model": tiny_ss_flow(1),
        "sparse_structure_decoder": QuantileDecoder(),
        "shape_slat_flow_model_512": tiny_slat_flow(SLAT_CHANNELS, 2),
        "shape_slat_flow_model_1024": tiny_slat_flow(SLAT_CHANNELS, 3),
        "tex_slat_flow_model_512": tiny_slat_flow(2 * SLAT_CHANNELS, 4),
        "tex_slat_flow_model_1024": tiny_slat_flow(2 * SLAT_CHANNELS, 5),
        "shape_slat_decoder": UpsampleDecoder(),
    }
    gen = torch.Generator().manual_seed(7)
    norm = lambda: {"mean": (torch.randn(SLAT_CHANNELS, generator=gen) * 0.1).tolist(),
                    "std": (1 + torch.rand(SLAT_CHANNELS, generator=gen)).tolist()}
    pipeline = Trellis2ImageTo3DPipeline(
        models=models,
        sparse_structure_sampler=FlowEulerGuidanceIntervalSampler(sigma_min=1e-5),
        shape_slat_sampler=FlowEulerGuidanceIntervalSampler(sigma_min=1e-5),
        tex_slat_sampler=FlowEulerGuidanceIntervalSampler(sigma_min=1e-5),
        sparse_structure_sampler_params=dict(SS_PARAMS),
        shape_slat_sampler_params=dict(SHAPE_PARAMS),
        tex_slat_sampler_params=dict(TEX_PARAMS),
        shape_slat_normalization=norm(),
        tex_slat_normalization=norm(),
        image_cond_model=PixelEncoder(),
        rembg_model=None,
        low_vram=False,
        default_pipeline_type="1024_cascade",
    )
    # The real decoders need TRELLIS.2's CUDA extensions; the latents are what is compared.
    pipeline.decode_latent = lambda shape_slat, tex_slat, resolution: []
    return pipeline


def disc_image(color: tuple[int, int, int], *, size: int = 64, radius: int = 20, offset: int = 0,
               alpha: bool = True) -> Image.Image:
    """An RGBA picture of an opaque disc on a transparent background (no background removal needed)."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    c = size // 2 + offset
    ImageDraw.Draw(im).ellipse([c - radius, c - radius, c + radius, c + radius], fill=(*color, 255))
    return im if alpha else im.convert("RGB")


VIEW_COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def views(n: int) -> list[Image.Image]:
    return [disc_image(VIEW_COLORS[i % 4], offset=i) for i in range(n)]
