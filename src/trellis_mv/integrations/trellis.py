"""Multi-view runs of TRELLIS (v1)'s ``TrellisImageTo3DPipeline``.

TRELLIS v1 ships its own ``run_multi_image`` with two modes; this module runs any
registered aggregator per stage instead, through the same door as
:mod:`trellis_mv.integrations.trellis2`: the pipeline's own ``run`` with ``get_cond``
answering the N views and each stage sampler patched. v1's samplers speak their own
guidance dialect (``cfg_strength``, ``cfg_interval``, ``(1 + s) * pos - s * neg``), which
the patch honours as it is.

Stages: ``sparse_structure`` and ``slat``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import Aggregator
from ..pipeline import patch_stages
from . import _common as C
from ._common import ImageError, ParameterError
from .trellis2 import MultiViewResult

__all__ = [
    "DEFAULT_MODEL",
    "STAGES",
    "ImageError",
    "MultiViewResult",
    "ParameterError",
    "load_pipeline",
    "run_multi_image",
    "stage_samplers",
    "validate_params",
]

DEFAULT_MODEL = "microsoft/TRELLIS-image-large"
STAGES: tuple[str, ...] = ("sparse_structure", "slat")
SAMPLER_ATTRIBUTES = {"sparse_structure": "sparse_structure_sampler", "slat": "slat_sampler"}
STAGE_ALIASES = {"ss": "sparse_structure", "structure": "sparse_structure", "sparse": "sparse_structure",
                 "shape": "slat", "structured_latent": "slat"}
SAMPLER_PARAMS: tuple[str, ...] = ("steps", "cfg_strength", "cfg_interval", "rescale_t")
_V2_HINTS = {
    "guidance_strength": "that is TRELLIS.2's name; TRELLIS v1 uses cfg_strength s = guidance_strength - 1",
    "guidance_interval": "that is TRELLIS.2's name; TRELLIS v1 uses cfg_interval",
    "guidance_rescale": "TRELLIS v1's samplers have no guidance rescale",
}
REQUIRED_MODELS = ("sparse_structure_flow_model", "sparse_structure_decoder", "slat_flow_model")

INSTALL_HINT = (
    "TRELLIS is not importable. Install it from https://github.com/microsoft/TRELLIS (its setup.sh), or put its "
    "source folder on PYTHONPATH. To try trellis-mv without it, run with `--model proxy`."
)


def _import_pipeline_class() -> type:
    try:
        from trellis.pipelines import TrellisImageTo3DPipeline
    except ImportError as exc:
        from .trellis2 import TrellisNotInstalled

        raise TrellisNotInstalled(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from exc
    return TrellisImageTo3DPipeline


def validate_params(
    images: Sequence[Any] | None = None,
    *,
    mode: Any = "multidiffusion",
    stages: Mapping[str, Any] | None = None,
    available_models: Sequence[str] | None = None,
    num_samples: int = 1,
    seed: int = 42,
    preprocess_image: bool = True,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    sparse_structure_sampler_params: Mapping[str, Any] | None = None,
    slat_sampler_params: Mapping[str, Any] | None = None,
) -> dict[str, Aggregator]:
    """Check a v1 run's arguments before any model work; see :func:`trellis2.validate_params`."""
    if available_models is not None:
        missing = [m for m in REQUIRED_MODELS if m not in available_models]
        if missing:
            raise ParameterError(f"this TRELLIS pipeline lacks the models {', '.join(missing)}")
    C.check_int("num_samples", num_samples, 1)
    C.check_int("seed", seed, 0)
    if max_batch is not None:
        C.check_int("max_batch", max_batch, 1)
    for stage, p in (("sparse_structure", sparse_structure_sampler_params), ("slat", slat_sampler_params)):
        if p is not None:
            C.check_sampler_params(stage, p, SAMPLER_PARAMS, _V2_HINTS)
    aggregators = C.plan(mode, stages, STAGES, STAGE_ALIASES)
    if images is not None:
        opened = C.load_images(images)
        C.check_images(images, opened, preprocess=preprocess_image)
        C.check_weights(weights, len(opened))
    return aggregators


def load_pipeline(model: str = DEFAULT_MODEL, *, device: str | None = None) -> Any:
    """``TrellisImageTo3DPipeline.from_pretrained(model)``, moved to ``device`` (default CUDA if present)."""
    pipeline = _import_pipeline_class().from_pretrained(model)
    pipeline.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    return pipeline


def stage_samplers(pipeline: Any) -> dict[str, Any]:
    """``{stage: sampler}`` of a TRELLIS v1 pipeline."""
    return {stage: getattr(pipeline, attr) for stage, attr in SAMPLER_ATTRIBUTES.items()}


def run_multi_image(
    pipeline: Any,
    images: Sequence[Any],
    *,
    mode: Any = "multidiffusion",
    stages: Mapping[str, Any] | None = None,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    seed: int = 42,
    num_samples: int = 1,
    preprocess_image: bool = True,
    sparse_structure_sampler_params: Mapping[str, Any] | None = None,
    slat_sampler_params: Mapping[str, Any] | None = None,
    formats: Sequence[str] = ("mesh", "gaussian", "radiance_field"),
    cond: torch.Tensor | None = None,
) -> MultiViewResult:
    """One TRELLIS v1 generation steered by N views, one aggregator per stage.

    Arguments as :func:`trellis_mv.integrations.trellis2.run_multi_image`; the sampler
    parameters are v1's (``steps``, ``cfg_strength``, ``cfg_interval``, ``rescale_t``).
    ``cond`` gives precomputed ``[N, L, C]`` conditioning instead of encoding ``images``.
    ``meshes`` of the result holds what ``decode_slat`` returns for ``formats``.
    """
    ss, slat = dict(sparse_structure_sampler_params or {}), dict(slat_sampler_params or {})
    aggregators = validate_params(
        images if cond is None else None, mode=mode, stages=stages, available_models=list(pipeline.models),
        num_samples=num_samples, seed=seed, preprocess_image=preprocess_image, weights=weights,
        max_batch=max_batch, sparse_structure_sampler_params=ss, slat_sampler_params=slat,
    )
    if cond is None:
        opened = C.load_images(images)
        views = C.preprocess_views(pipeline, images, opened) if preprocess_image else list(opened)
        original_get_cond = pipeline.get_cond

        def get_cond(image: Any) -> dict[str, torch.Tensor]:
            return C.views_cond(original_get_cond(views))
    else:
        views = list(images or [])
        tokens = cond

        def get_cond(image: Any) -> dict[str, torch.Tensor]:
            c = tokens.to(pipeline.device)
            return {"cond": c, "neg_cond": torch.zeros_like(c[:1])}

    start = time.perf_counter()
    with (C.redirect_get_cond(pipeline, get_cond),
          patch_stages(stage_samplers(pipeline), aggregators, weights=weights, max_batch=max_batch) as patches):
        out = pipeline.run(views[0] if views else None, num_samples=num_samples, seed=seed,
                           sparse_structure_sampler_params=ss, slat_sampler_params=slat,
                           formats=list(formats), preprocess_image=False)
    return MultiViewResult(meshes=out, patches=patches, views=views, seconds=time.perf_counter() - start,
                           aggregators=aggregators)
