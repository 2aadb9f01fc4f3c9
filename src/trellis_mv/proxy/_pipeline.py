"""The proxy pipeline adapter: two TRELLIS.2-style stages, one sampler instance each.

``ProxyPipeline.samplers`` maps ``"sparse_structure"`` (dense latent) and ``"texture"``
(sparse colour latent) to their :class:`~trellis_mv.samplers.FlowEulerGuidanceIntervalSampler`;
``run(images)`` stacks the views' conditioning ``[N, L, C]`` and passes it as ``cond`` to each
``sampler.sample``, as TRELLIS.2's pipeline does. Unpatched, it takes one view; inside
:func:`trellis_mv.patch_sampler` or :func:`trellis_mv.pipeline.run_multi_image` each stage is
multi-view.

>>> import trellis_mv
>>> from trellis_mv.pipeline import run_multi_image
>>> pipe = ProxyPipeline()
>>> views = [example_images()[0], example_images()[2]]
>>> result, patches = run_multi_image(pipe, views, mode="multidiffusion", seed=1, verbose=False)
>>> result.occupancy.shape, patches["sparse_structure"].model_calls
(torch.Size([1, 16, 16, 16]), 12)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from trellis_mv.proxy._models import ProxyModels, decode_structure, load_models
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
from trellis_mv.sparse import SparseTensor

__all__ = ["DEFAULT_PARAMS", "STAGES", "ProxyPipeline", "ProxyResult", "default_weights", "example_images", "preprocess"]

STAGES = ("sparse_structure", "texture")
#: Per-stage sampler parameters, in TRELLIS.2's style.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "sparse_structure": {
        "steps": 12, "guidance_strength": 3.0, "guidance_rescale": 0.7, "rescale_t": 3.0, "guidance_interval": (0.0, 1.0),
    },
    "texture": {
        "steps": 12, "guidance_strength": 3.0, "guidance_rescale": 0.7, "rescale_t": 3.0, "guidance_interval": (0.0, 1.0),
    },
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def default_weights() -> Path:
    """Path of the shipped weights file."""
    return Path(str(resources.files("trellis_mv.proxy") / "weights" / "proxy.safetensors"))


def example_images() -> list[Path]:
    """The bundled example views (front, right, back, left) of one held-out shape."""
    root = Path(str(resources.files("trellis_mv.proxy") / "examples"))
    return [root / f"{v}.png" for v in ("front", "right", "back", "left")]


def preprocess(image: Image.Image | str | Path, size: int = 64) -> torch.Tensor:
    """An image as the model sees it: ``float [3, size, size]`` in ``[0, 1]``.

    RGBA is composited on black (``rgb * alpha``, as TRELLIS.2's preprocessing), grayscale
    and palette images become RGB, a non-square image is centre-padded with black to a
    square, then it is resized (box filter) to ``size``.

    >>> preprocess(Image.new("LA", (90, 30), (200, 128))).shape
    torch.Size([3, 64, 64])
    """
    if not isinstance(image, Image.Image):
        image = Image.open(image)
        image.load()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
        rgb = rgba[..., :3] * rgba[..., 3:]
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    h, w = rgb.shape[:2]
    side = max(h, w)
    canvas = np.zeros((side, side, 3), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = rgb
    pil = Image.fromarray((canvas * 255).round().astype(np.uint8))
    if side != size:
        pil = pil.resize((size, size), Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


@dataclass
class ProxyResult:
    """Generated shapes: ``occupancy bool [B, 16, 16, 16]`` and ``colors float [B, 16, 16, 16, 3]``."""

    occupancy: torch.Tensor
    colors: torch.Tensor


class ProxyPipeline:
    """The embedded proxy model as a pipeline adapter (stages ``sparse_structure``, ``texture``).

    :param weights: a weights file (default: the shipped one).
    :param device: torch device.
    :param models: already loaded :class:`ProxyModels` (then ``weights`` is ignored).
    """

    stages = STAGES

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", models: ProxyModels | None = None) -> None:
        self.device = torch.device(device)
        if models is None:
            models = load_models(weights or default_weights(), self.device)
        self.models = models.to(self.device).eval()
        self._samplers = {stage: FlowEulerGuidanceIntervalSampler(sigma_min=1e-5) for stage in STAGES}
        self.params = copy.deepcopy(DEFAULT_PARAMS)

    @property
    def samplers(self) -> dict[str, FlowEulerGuidanceIntervalSampler]:
        """Stage name → its own sampler instance."""
        return self._samplers

    @torch.no_grad()
    def get_cond(self, images: Sequence[Image.Image | str | Path | torch.Tensor]) -> torch.Tensor:
        """Image tokens of each view, stacked: ``[N, 64, width]``."""
        batch = torch.stack([im if isinstance(im, torch.Tensor) else preprocess(im) for im in images]).to(self.device)
        return self.models.encoder(batch)

    @torch.no_grad()
    def run(
        self,
        images: Sequence[Image.Image | str | Path | torch.Tensor],
        *,
        seed: int = 0,
        num_samples: int = 1,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        verbose: bool = True,
    ) -> ProxyResult:
        """Sample both stages with the views' conditioning stacked as ``cond``.

        :param images: the views (paths, PIL images or preprocessed ``[3, 64, 64]`` tensors).
        :param seed: seed of the noise of both stages.
        :param num_samples: samples drawn at once (batch of the noise).
        :param params: per-stage overrides of :data:`DEFAULT_PARAMS`.
        """
        if len(images) == 0:
            raise ValueError("no views: give at least one image")
        merged = {s: {**self.params[s], **dict((params or {}).get(s, {}))} for s in STAGES}
        cond = self.get_cond(images)
        neg = torch.zeros_like(cond[:1])
        gen = torch.Generator(device="cpu").manual_seed(seed)
        b = num_samples

        noise = torch.randn((b, 8, 8, 8, 8), generator=gen).to(self.device)
        out = self.samplers["sparse_structure"].sample(
            self.models.structure, noise, cond, neg, verbose=verbose, tqdm_desc="sparse_structure", **merged["sparse_structure"]
        )
        occ = decode_structure(out.samples)
        empty = ~occ.flatten(1).any(1)
        occ[empty, 8, 8, 8] = True  # an empty sample keeps one voxel so that the texture stage has a latent

        coords = occ.nonzero().int()
        feats = torch.randn((coords.shape[0], 3), generator=gen).to(self.device)
        out = self.samplers["texture"].sample(
            self.models.texture, SparseTensor(feats, coords, b), cond, neg, verbose=verbose, tqdm_desc="texture",
            **merged["texture"],
        )
        colors = torch.zeros((*occ.shape, 3), device=self.device)
        c = coords.long()
        colors[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = (out.samples.feats.float().clamp(-1, 1) + 1) / 2
        return ProxyResult(occupancy=occ.cpu(), colors=colors.cpu())
