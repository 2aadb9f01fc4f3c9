"""The proxy model as a :class:`~trellis_mv.Adapter`: two TRELLIS.2-style stages, one sampler each.

``ProxyAdapter.samplers`` maps ``"sparse_structure"`` (dense latent) and ``"texture"``
(sparse colour latent) to their :class:`~trellis_mv.samplers.FlowEulerGuidanceIntervalSampler`;
``sample(views, ...)`` stacks the views' conditioning ``[N, L, C]`` and passes it as
``cond`` to each ``sampler.sample``, as TRELLIS.2's pipeline does. Its object frame is its
latent's: voxel ``[x, y, z]`` with ``+y`` up and the front camera on ``+z``.

>>> import trellis_mv
>>> pipe = ProxyAdapter()
>>> result = trellis_mv.run_multi_image(pipe, example_images()[:2], seed=1, params={"texture": {"steps": 4}})
>>> result.output.occupancy.shape, result.patches["sparse_structure"].model_calls
(torch.Size([1, 16, 16, 16]), 12)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from trellis_mv import voxels
from trellis_mv._errors import ImageError, ParameterError
from trellis_mv._images import load_image
from trellis_mv._spec import hookimpl
from trellis_mv._views import Camera
from trellis_mv.proxy._cameras import NAMED_VIEWS, VIEW_SETS, View, input_views, render, visible_faces
from trellis_mv.proxy._models import ProxyModels, decode_structure, load_models
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
from trellis_mv.sparse import SparseTensor

__all__ = [
    "DEFAULT_PARAMS", "NAMED_VIEWS", "PRECISIONS", "STAGES", "VIEW_SETS", "ProxyAdapter", "ProxyResult", "View",
    "check_precision", "default_weights", "example_images", "input_views", "preprocess", "render", "visible_faces",
]

STAGES = ("sparse_structure", "texture")
#: The networks' precisions (:class:`ProxyAdapter`'s ``precision``).
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a :class:`~trellis_mv.ParameterError` naming them."""
    if precision not in PRECISIONS:
        raise ParameterError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}: use fp32 (exact) "
                             "or bf16 (faster on a GPU)")
    return precision


#: Per-stage sampler parameters, in TRELLIS.2's style.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    stage: {"steps": 12, "guidance_strength": 3.0, "guidance_rescale": 0.7, "rescale_t": 3.0, "guidance_interval": (0.0, 1.0)}
    for stage in STAGES
}


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
    image = load_image(image)
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


class ProxyAdapter:
    """The embedded proxy model (--model proxy), small enough for a CPU: sparse_structure, texture.

    :param weights: a weights file (default: the shipped one).
    :param device: torch device.
    :param models: already loaded :class:`ProxyModels` (then ``weights`` is ignored).
    :param verbose: progress bars while sampling.
    :param precision: ``"fp32"`` (the default: every result equal on every device to float
        rounding) or ``"bf16"``, the networks' forwards under bfloat16 autocast, as they were
        trained (:data:`PRECISIONS`); the sampler's own arithmetic stays float32. On a GPU, bf16
        runs large batches several times faster; its results differ from fp32's by bf16
        rounding (an occupancy at its threshold may flip).
    """

    name = "proxy"
    stage_names = STAGES
    dialect = "trellis2"
    stage_aliases: ClassVar[dict[str, str]] = {
        "ss": "sparse_structure", "structure": "sparse_structure", "sparse": "sparse_structure",
        "tex": "texture", "color": "texture", "colour": "texture",
    }
    latent_frame = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    #: the named views as the proxy renders them (front, right, back, left raised 25 degrees)
    named_cameras: ClassVar[dict[str, Camera]] = NAMED_VIEWS

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", models: ProxyModels | None = None,
                 verbose: bool = False, precision: str = "fp32") -> None:
        self.precision = check_precision(precision)
        self.device = torch.device(device)
        if models is None:
            models = load_models(weights or default_weights(), self.device)
        self.models = models.to(self.device).eval()
        self._samplers = {stage: FlowEulerGuidanceIntervalSampler(sigma_min=1e-5) for stage in STAGES}
        self.default_params = copy.deepcopy(DEFAULT_PARAMS)
        self.verbose = verbose

    @classmethod
    def load(cls, model: str = "proxy", *, device: str | None = None, **options: Any) -> ProxyAdapter:
        """The adapter of ``--model proxy`` (``options``: those of the constructor)."""
        if model != "proxy":
            raise ParameterError(f"the proxy adapter runs model 'proxy', not {model!r}")
        return cls(device=device or "cpu", **options)

    def examples(self) -> list[tuple[Path, str]]:
        """The bundled example views with their cameras: front, right, back, left of one held-out shape."""
        return [(path, path.stem) for path in example_images()]

    @property
    def samplers(self) -> dict[str, FlowEulerGuidanceIntervalSampler]:
        """Stage name → its own sampler instance."""
        return self._samplers

    def prepare(self, images: Sequence[Image.Image | torch.Tensor]) -> list[torch.Tensor]:
        """Each view as the model sees it (:func:`preprocess`); ``[3, S, S]`` tensors in ``[0, 1]`` pass as they are."""
        size = self.models.cfg.image_size
        views = []
        for i, im in enumerate(images):
            if isinstance(im, torch.Tensor):
                if tuple(im.shape) != (3, size, size) or not im.is_floating_point():
                    raise ImageError(f"view {i} is a tensor of shape {tuple(im.shape)} ({im.dtype}); the proxy takes "
                                     f"images, or float tensors [3, {size}, {size}] in [0, 1]")
                views.append(im)
            elif isinstance(im, Image.Image):
                views.append(preprocess(im, size))
            else:
                raise ImageError(f"view {i} is a {type(im).__name__}; the proxy takes images or [3, {size}, {size}] tensors")
        return views

    def _autocast(self) -> Any:
        """The networks' precision (:data:`PRECISIONS`) around a forward."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.no_grad()
    def get_cond(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Image tokens of each view, stacked: ``[N, L, width]`` (float32)."""
        with self._autocast():
            return self.models.encoder(torch.stack(list(views)).to(self.device)).float()

    @torch.no_grad()
    def sample(self, views: Sequence[torch.Tensor], *, seed: int = 0, num_samples: int = 1,
               params: Mapping[str, Mapping[str, Any]] | None = None) -> ProxyResult:
        """Sample both stages with the views' conditioning stacked as ``cond``.

        Sample ``k`` draws its noise from seed ``seed + k`` alone, so a batch of samples
        equals the same seeds drawn one at a time.
        """
        cond = self.get_cond(views)
        out = self._sample(cond, [seed + k for k in range(num_samples)], params)
        return ProxyResult(occupancy=out.occupancy.cpu(), colors=out.colors.cpu())

    @torch.no_grad()
    def sample_many(self, view_sets: Sequence[Sequence[torch.Tensor]], *, seeds: Sequence[int],
                    params: Mapping[str, Mapping[str, Any]] | None = None) -> ProxyResult:
        """One sample per view set, all in one sampler run per stage, left on the model's device.

        The conditioning is per sample, ``[B, N, L, C]`` (sets with fewer views padded at the
        end, :func:`trellis_mv.pad_views`), for a sampler patched with ``per_sample=True``;
        sample ``b`` draws its noise from ``seeds[b]`` as :meth:`sample` would.
        """
        from trellis_mv._views import pad_views

        tokens = self.get_cond([view for views in view_sets for view in views])  # one encoder pass for all
        cond, _ = pad_views(list(tokens.split([len(views) for views in view_sets])))
        return self._sample(cond, list(seeds), params)

    def _sample(self, cond: torch.Tensor, seeds: Sequence[int], params: Mapping[str, Mapping[str, Any]] | None
                ) -> ProxyResult:
        merged = {s: {**self.default_params[s], **dict((params or {}).get(s, {}))} for s in STAGES}
        num_samples = len(seeds)
        neg = torch.zeros_like(cond.flatten(0, cond.ndim - 3)[:1])
        gens = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        noise = torch.stack([torch.randn((8, 8, 8, 8), generator=g) for g in gens]).to(self.device)
        with self._autocast():
            out = self.samplers["sparse_structure"].sample(
                self.models.structure, noise, cond, neg, verbose=self.verbose, tqdm_desc="sparse_structure",
                **merged["sparse_structure"],
            )
        occ = decode_structure(out.samples)
        empty = ~occ.flatten(1).any(1)
        occ[empty, 8, 8, 8] = True  # an empty sample keeps one voxel so that the texture stage has a latent

        coords = occ.nonzero().int()
        counts = torch.bincount(coords[:, 0].long(), minlength=num_samples).tolist()
        feats = torch.cat([torch.randn((n, 3), generator=g) for g, n in zip(gens, counts)]).to(self.device)
        with self._autocast():
            out = self.samplers["texture"].sample(
                self.models.texture, SparseTensor(feats, coords, num_samples), cond, neg, verbose=self.verbose,
                tqdm_desc="texture", **merged["texture"],
            )
        colors = torch.zeros((*occ.shape, 3), device=self.device)
        c = coords.long()
        colors[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = (out.samples.feats.float().clamp(-1, 1) + 1) / 2
        return ProxyResult(occupancy=occ, colors=colors)

    def render(self, output: ProxyResult, camera: Any, size: int) -> torch.Tensor:
        """The first sample seen from ``camera`` (a name of :data:`NAMED_VIEWS`, ``"AZ,EL"``, a pair): ``float [3, size, size]``.

        >>> pipe = ProxyAdapter()
        >>> out = ProxyResult(torch.ones(1, 16, 16, 16, dtype=torch.bool), torch.ones(1, 16, 16, 16, 3))
        >>> tuple(pipe.render(out, "front", 32).shape), pipe.to_voxels(out)[0].shape, len(pipe.to_mesh(out).faces)
        ((3, 32, 32), torch.Size([1, 16, 16, 16]), 3072)
        """
        return voxels.render(output.occupancy[0], output.colors[0], [camera], size, names=self.named_cameras)[0][0]

    def to_mesh(self, output: ProxyResult) -> Any:
        """The first sample's voxels as a ``trimesh.Trimesh`` (:func:`trellis_mv.voxels.mesh_from_voxels`)."""
        return voxels.mesh_from_voxels(output.occupancy[0], output.colors[0])

    def to_voxels(self, output: ProxyResult) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample, where it lies: ``occupancy bool [B, 16, 16, 16]`` and ``colors float [B, 16, 16, 16, 3]``."""
        return output.occupancy, output.colors

    def export(self, result: Any, folder: Path) -> list[str]:
        """``mesh.glb`` and ``comparison.png`` per sample (``mesh_1.glb``, ... after the first)."""
        from trellis_mv.proxy._export import export_result

        return export_result(result, folder)


# -- end of the adapter


#: The name the proxy adapter had before adapters were plugins.
ProxyPipeline = ProxyAdapter


@hookimpl
def register_adapters() -> list[type]:
    return [ProxyAdapter]


@hookimpl
def adapter_for(model: str) -> type | None:
    return ProxyAdapter if model == "proxy" else None
