"""Multi-view runs of TRELLIS.2's ``Trellis2ImageTo3DPipeline``.

A run is the pipeline's own :meth:`run`, with the N views' conditioning answered by
``get_cond`` and each stage sampler (sparse structure, shape, texture) patched with its
aggregator by :func:`trellis_mv.patch_sampler`. Everything else is TRELLIS.2's: the
pipeline types, the cascade's two shape passes and its token-budget fallback, the
sampler defaults from ``pipeline.json``, the decoders. The views travel through the
shape and texture models as one batch of TRELLIS.2 sparse tensors (the patch repeats the
latent per view and per sample), the texture stage's ``concat_cond`` included.

>>> from trellis_mv.integrations import trellis2  # doctest: +SKIP
>>> pipeline = trellis2.load_pipeline("microsoft/TRELLIS.2-4B")  # doctest: +SKIP
>>> result = trellis2.run_multi_image(pipeline, ["front.png", "back.png"],
...                                   stages={"texture": "stochastic"}, seed=42)  # doctest: +SKIP
>>> summary = trellis2.generate(["front.png", "back.png"], "out/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import Aggregator
from ..pipeline import patch_stages
from . import _common as C
from ._common import ImageError, ParameterError

__all__ = [
    "DEFAULT_MODEL",
    "PIPELINE_TYPES",
    "STAGES",
    "ImageError",
    "MultiViewResult",
    "ParameterError",
    "TrellisNotInstalled",
    "generate",
    "load_pipeline",
    "required_models",
    "run_multi_image",
    "stage_samplers",
    "validate_params",
]

DEFAULT_MODEL = "microsoft/TRELLIS.2-4B"

#: The three sampled stages, in order, and the pipeline attribute holding each one's sampler.
STAGES: tuple[str, ...] = ("sparse_structure", "shape", "texture")
SAMPLER_ATTRIBUTES = {
    "sparse_structure": "sparse_structure_sampler",
    "shape": "shape_slat_sampler",
    "texture": "tex_slat_sampler",
}
STAGE_ALIASES = {"ss": "sparse_structure", "structure": "sparse_structure", "sparse": "sparse_structure",
                 "shape_slat": "shape", "tex": "texture", "tex_slat": "texture"}

#: Pipeline type -> the flow models it needs (besides the sparse-structure ones), as TRELLIS.2's run() asserts.
PIPELINE_TYPES: dict[str, tuple[str, ...]] = {
    "512": ("shape_slat_flow_model_512", "tex_slat_flow_model_512"),
    "1024": ("shape_slat_flow_model_1024", "tex_slat_flow_model_1024"),
    "1024_cascade": ("shape_slat_flow_model_512", "shape_slat_flow_model_1024", "tex_slat_flow_model_1024"),
    "1536_cascade": ("shape_slat_flow_model_512", "shape_slat_flow_model_1024", "tex_slat_flow_model_1024"),
}
_COMMON_MODELS = ("sparse_structure_flow_model", "sparse_structure_decoder")
_DECODERS = ("shape_slat_decoder", "tex_slat_decoder")

#: The sampler parameters a stage accepts (TRELLIS.2's FlowEulerGuidanceIntervalSampler).
SAMPLER_PARAMS: tuple[str, ...] = ("steps", "guidance_strength", "guidance_rescale", "rescale_t", "guidance_interval")
_V1_HINTS = {
    "cfg_strength": "that is TRELLIS v1's name; TRELLIS.2 uses guidance_strength g = cfg_strength + 1",
    "cfg_interval": "that is TRELLIS v1's name; TRELLIS.2 uses guidance_interval",
}
_PARAM_ARGS = {"sparse_structure": "sparse_structure_sampler_params", "shape": "shape_slat_sampler_params",
               "texture": "tex_slat_sampler_params"}

INSTALL_HINT = (
    "TRELLIS.2 is not importable. Install it from https://github.com/microsoft/TRELLIS.2 (its setup.sh builds "
    "the CUDA extensions: o_voxel, cumesh, flex_gemm, nvdiffrast), or put its source folder on PYTHONPATH. "
    "To try trellis-mv without it, run with `--model proxy` (the embedded CPU model)."
)


class TrellisNotInstalled(ImportError):
    """TRELLIS.2 (or an extension it needs for this step) cannot be imported."""


def _import_pipeline_class() -> type:
    try:
        from trellis2.pipelines import Trellis2ImageTo3DPipeline
    except ImportError as exc:
        raise TrellisNotInstalled(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from exc
    return Trellis2ImageTo3DPipeline


# -- loading and checking ---------------------------------------------------------------------


def required_models(pipeline_type: str) -> tuple[str, ...]:
    """The model names a pipeline type needs to sample (its flow models and the structure decoder)."""
    if pipeline_type not in PIPELINE_TYPES:
        raise ParameterError(
            f"unknown pipeline_type {pipeline_type!r}; expected one of {', '.join(PIPELINE_TYPES)}"
        )
    return (*_COMMON_MODELS, *PIPELINE_TYPES[pipeline_type])


def pipeline_config(model: str) -> dict[str, Any]:
    """``pipeline.json``'s ``args`` of a local folder or hub id, read without loading any weights."""
    local = Path(model) / "pipeline.json"
    if local.is_file():
        path = local
    elif Path(model).exists():
        raise ParameterError(f"{model} has no pipeline.json; expected a TRELLIS.2 model folder or a hub id")
    else:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:
            raise TrellisNotInstalled(f"huggingface_hub is needed to fetch {model!r}: pip install huggingface_hub") from exc
        path = Path(hf_hub_download(model, "pipeline.json"))
    with open(path) as f:
        return json.load(f)["args"]


def validate_params(
    images: Sequence[Any] | None = None,
    *,
    mode: Any = "multidiffusion",
    stages: Mapping[str, Any] | None = None,
    pipeline_type: str | None = "1024_cascade",
    available_models: Sequence[str] | None = None,
    num_samples: int = 1,
    seed: int = 42,
    max_num_tokens: int = 49152,
    preprocess_image: bool = True,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    sparse_structure_sampler_params: Mapping[str, Any] | None = None,
    shape_slat_sampler_params: Mapping[str, Any] | None = None,
    tex_slat_sampler_params: Mapping[str, Any] | None = None,
) -> dict[str, Aggregator]:
    """Check every argument of a run before any model is loaded or evaluated.

    :param images: paths or PIL images; each is opened and checked (readable, same size as
        the others, a foreground where an alpha channel is given).
    :param available_models: model names the pipeline has (``pipeline.models`` keys or
        ``pipeline.json``'s ``models``); checked against ``pipeline_type``.
    :returns: the aggregator of each stage (:func:`trellis_mv.plan_stages`).
    :raises ParameterError: out-of-range numbers, unknown names or options, missing models.
    :raises ImageError: unreadable images, different sizes, no foreground.
    """
    if pipeline_type is not None:
        needed = required_models(pipeline_type)
        if available_models is not None:
            missing = [m for m in needed if m not in available_models]
            if missing:
                raise ParameterError(
                    f"pipeline_type {pipeline_type!r} needs the models {', '.join(missing)}, which this pipeline "
                    f"does not have (it has: {', '.join(sorted(available_models))})"
                )
    C.check_int("num_samples", num_samples, 1)
    C.check_int("seed", seed, 0)
    C.check_int("max_num_tokens", max_num_tokens, 1)
    if max_batch is not None:
        C.check_int("max_batch", max_batch, 1)
    params = {"sparse_structure": sparse_structure_sampler_params, "shape": shape_slat_sampler_params,
              "texture": tex_slat_sampler_params}
    for stage, p in params.items():
        if p is not None:
            if not isinstance(p, Mapping):
                raise ParameterError(f"{_PARAM_ARGS[stage]} must be a dict; got {p!r}")
            C.check_sampler_params(stage, p, SAMPLER_PARAMS, _V1_HINTS)
    aggregators = C.plan(mode, stages, STAGES, STAGE_ALIASES)
    if images is not None:
        opened = C.load_images(images)
        C.check_images(images, opened, preprocess=preprocess_image)
        C.check_weights(weights, len(opened))
    return aggregators


def load_pipeline(model: str = DEFAULT_MODEL, *, device: str | torch.device | None = None,
                  pipeline_type: str | None = None) -> Any:
    """``Trellis2ImageTo3DPipeline.from_pretrained(model)`` (hub id or local folder), moved to ``device``.

    With ``pipeline_type``, ``pipeline.json`` is read first and a missing model is reported
    before any weights are downloaded or loaded.
    """
    cls = _import_pipeline_class()
    if pipeline_type is not None:
        models = list(pipeline_config(model).get("models", {}))
        validate_params(pipeline_type=pipeline_type, available_models=models)
    pipeline = cls.from_pretrained(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline.to(torch.device(device))
    return pipeline


def stage_samplers(pipeline: Any) -> dict[str, Any]:
    """``{stage: sampler}`` of a TRELLIS.2 pipeline (what the patches act on)."""
    return {stage: getattr(pipeline, attr) for stage, attr in SAMPLER_ATTRIBUTES.items()}


# -- running ----------------------------------------------------------------------------------


@dataclass
class MultiViewResult:
    """What :func:`run_multi_image` returns.

    :ivar meshes: the pipeline's decoded outputs (``MeshWithVoxel`` per sample), or ``None``
        when ``decode=False``.
    :ivar latents: ``(shape_slat, tex_slat, resolution)`` as the pipeline's
        ``return_latent=True`` gives them, when asked for.
    :ivar patches: ``{stage: Patch}``: forwards, rows and per-step records of each stage.
    :ivar views: the (preprocessed) view images.
    :ivar seconds: wall-clock time of the sampling run.
    :ivar aggregators: ``{stage: aggregator}`` as :func:`validate_params` planned them.
    """

    meshes: Any
    latents: Any = None
    patches: dict[str, Any] = field(default_factory=dict)
    views: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    aggregators: dict[str, Aggregator] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"stages": C.summarize_patches(self.patches), "seconds": round(self.seconds, 3)}


def run_multi_image(
    pipeline: Any,
    images: Sequence[Any],
    *,
    mode: Any = "multidiffusion",
    stages: Mapping[str, Any] | None = None,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    pipeline_type: str | None = None,
    seed: int = 42,
    num_samples: int = 1,
    preprocess_image: bool = True,
    max_num_tokens: int = 49152,
    sparse_structure_sampler_params: Mapping[str, Any] | None = None,
    shape_slat_sampler_params: Mapping[str, Any] | None = None,
    tex_slat_sampler_params: Mapping[str, Any] | None = None,
    conds: Mapping[int, torch.Tensor] | None = None,
    return_latent: bool = False,
) -> MultiViewResult:
    """One TRELLIS.2 generation steered by N views.

    :param pipeline: a ``Trellis2ImageTo3DPipeline``.
    :param images: N views (paths or PIL images) of one object, all the same size.
    :param mode: the aggregator of every stage: a registered name, ``"name:key=value,..."``,
        ``(name, options)`` or an aggregator instance (:func:`trellis_mv.plan_stages`).
    :param stages: per-stage overrides of ``mode``, keyed ``sparse_structure``, ``shape``,
        ``texture`` (or an alias such as ``ss``, ``tex``); e.g. ``{"texture": "stochastic"}``.
    :param weights: one weight per view, for aggregators that use them (every stage).
    :param max_batch: cap on latent rows per model forward (memory); default: all views at once.
    :param pipeline_type: ``512``, ``1024``, ``1024_cascade``, ``1536_cascade`` (default: the
        pipeline's own default, ``1024_cascade``).
    :param seed, num_samples, preprocess_image, max_num_tokens: as in TRELLIS.2's ``run``.
    :param sparse_structure_sampler_params, shape_slat_sampler_params, tex_slat_sampler_params:
        ``steps``, ``guidance_strength``, ``guidance_rescale``, ``rescale_t``,
        ``guidance_interval``; what is not given keeps the pipeline's defaults.
    :param conds: precomputed conditioning ``{512: [N, L, C], 1024: [N, L, C]}`` instead of
        encoding ``images`` (which are then only used for their count when given).
    :param return_latent: also return the latents.
    """
    pipeline_type = pipeline_type or getattr(pipeline, "default_pipeline_type", "1024_cascade")
    ss, shape, tex = (dict(p or {}) for p in (sparse_structure_sampler_params, shape_slat_sampler_params,
                                               tex_slat_sampler_params))
    aggregators = validate_params(
        images if conds is None else None, mode=mode, stages=stages, pipeline_type=pipeline_type,
        available_models=list(pipeline.models), num_samples=num_samples, seed=seed,
        max_num_tokens=max_num_tokens, preprocess_image=preprocess_image, weights=weights, max_batch=max_batch,
        sparse_structure_sampler_params=ss, shape_slat_sampler_params=shape, tex_slat_sampler_params=tex,
    )
    if conds is None:
        opened = C.load_images(images)
        views = C.preprocess_views(pipeline, images, opened) if preprocess_image else list(opened)
        original_get_cond = pipeline.get_cond

        def get_cond(image: Any, resolution: int, include_neg_cond: bool = True) -> dict[str, torch.Tensor]:
            return C.views_cond(original_get_cond(views, resolution, include_neg_cond))
    else:
        views = list(images or [])
        tokens = {int(k): v for k, v in conds.items()}

        def get_cond(image: Any, resolution: int, include_neg_cond: bool = True) -> dict[str, torch.Tensor]:
            if resolution not in tokens:
                raise ParameterError(f"conds has no {resolution}-px conditioning; it has {sorted(tokens)}")
            cond = tokens[resolution].to(pipeline.device)
            return {"cond": cond, "neg_cond": torch.zeros_like(cond[:1])} if include_neg_cond else {"cond": cond}

    start = time.perf_counter()
    with (C.redirect_get_cond(pipeline, get_cond),
          patch_stages(stage_samplers(pipeline), aggregators, weights=weights, max_batch=max_batch) as patches):
        out = pipeline.run(
            views[0] if views else None, num_samples=num_samples, seed=seed,
            sparse_structure_sampler_params=ss, shape_slat_sampler_params=shape, tex_slat_sampler_params=tex,
            preprocess_image=False, return_latent=return_latent, pipeline_type=pipeline_type,
            max_num_tokens=max_num_tokens,
        )
    seconds = time.perf_counter() - start
    meshes, latents = (out if return_latent else (out, None))
    return MultiViewResult(meshes=meshes, latents=latents, patches=patches, views=views, seconds=seconds,
                           aggregators=aggregators)


# -- files ------------------------------------------------------------------------------------


def _envmap(path: str | os.PathLike[str] | None, device: Any) -> Any:
    from trellis2.renderers import EnvMap

    if path is None:  # neutral, uniform light
        return EnvMap(torch.full((64, 128, 3), 0.8, dtype=torch.float32, device=device))
    import imageio.v3 as iio

    hdr = iio.imread(str(path)).astype("float32")[..., :3]
    return EnvMap(torch.tensor(hdr, dtype=torch.float32, device=device))


def export_glb(mesh: Any, path: str | os.PathLike[str], *, decimation_target: int = 1_000_000,
               texture_size: int = 4096) -> None:
    """Write ``mesh`` as a textured GLB exactly as TRELLIS.2's ``example.py`` does."""
    try:
        import o_voxel
    except ImportError as exc:
        raise TrellisNotInstalled(f"o_voxel (part of TRELLIS.2) is needed to write a GLB: {exc}") from exc
    glb = o_voxel.postprocess.to_glb(
        vertices=mesh.vertices, faces=mesh.faces, attr_volume=mesh.attrs, coords=mesh.coords,
        attr_layout=mesh.layout, voxel_size=mesh.voxel_size, aabb=[[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]],
        decimation_target=decimation_target, texture_size=texture_size, remesh=True, remesh_band=1,
        remesh_project=0, verbose=False,
    )
    glb.export(str(path), extension_webp=True)


def export_video(mesh: Any, path: str | os.PathLike[str], *, envmap: str | os.PathLike[str] | None = None,
                 num_frames: int = 120, fps: int = 15) -> None:
    """A turntable MP4 of ``mesh`` (shaded, normals and PBR channels), as ``example.py`` renders it."""
    import imageio
    from trellis2.utils import render_utils

    env = _envmap(envmap, mesh.vertices.device)
    frames = render_utils.make_pbr_vis_frames(render_utils.render_video(mesh, envmap=env, num_frames=num_frames))
    imageio.mimsave(str(path), frames, fps=fps)


def generate(
    images: Sequence[Any],
    out_dir: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    pipeline: Any = None,
    mode: Any = "multidiffusion",
    stages: Mapping[str, Any] | None = None,
    pipeline_type: str = "1024_cascade",
    seed: int = 42,
    num_samples: int = 1,
    weights: Sequence[float] | None = None,
    max_batch: int | None = None,
    preprocess_image: bool = True,
    max_num_tokens: int = 49152,
    sparse_structure_sampler_params: Mapping[str, Any] | None = None,
    shape_slat_sampler_params: Mapping[str, Any] | None = None,
    tex_slat_sampler_params: Mapping[str, Any] | None = None,
    video: bool = True,
    envmap: str | os.PathLike[str] | None = None,
    decimation_target: int = 1_000_000,
    texture_size: int = 4096,
    device: str | None = None,
) -> dict[str, Any]:
    """Images in, files out: ``sample_K.glb``, ``sample_K.mp4`` per sample and ``summary.json``.

    Every argument is checked (:func:`validate_params`) before the pipeline is loaded. The
    GLB is written with ``o_voxel.postprocess.to_glb`` and the video with TRELLIS.2's
    ``render_utils``, as its ``example.py`` does (``envmap``: an HDR/EXR file; default a
    uniform light).

    :returns: the summary written to ``summary.json``.
    """
    stage_params = dict(sparse_structure_sampler_params=sparse_structure_sampler_params,
                        shape_slat_sampler_params=shape_slat_sampler_params,
                        tex_slat_sampler_params=tex_slat_sampler_params)
    validate_params(images, mode=mode, stages=stages, pipeline_type=pipeline_type, num_samples=num_samples,
                    seed=seed, max_num_tokens=max_num_tokens, preprocess_image=preprocess_image, weights=weights,
                    max_batch=max_batch, **stage_params)
    _import_pipeline_class()
    if pipeline is None:
        pipeline = load_pipeline(model, device=device, pipeline_type=pipeline_type)
    result = run_multi_image(pipeline, images, mode=mode, stages=stages, weights=weights, max_batch=max_batch,
                             pipeline_type=pipeline_type, seed=seed, num_samples=num_samples,
                             preprocess_image=preprocess_image, max_num_tokens=max_num_tokens,
                             return_latent=True, **stage_params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, str]] = []
    for k, mesh in enumerate(result.meshes):
        mesh.simplify(16777216)  # nvdiffrast limit, as example.py
        entry = {}
        if video:
            mp4 = out / f"sample_{k}.mp4"
            export_video(mesh, mp4, envmap=envmap)
            entry["video"] = mp4.name
        glb = out / f"sample_{k}.glb"
        export_glb(mesh, glb, decimation_target=decimation_target, texture_size=texture_size)
        entry["glb"] = glb.name
        files.append(entry)
    for i, view in enumerate(result.views):
        view.save(out / f"view_{i}.png")
    summary = {
        "model": model if isinstance(model, str) else type(pipeline).__name__,
        "backend": "trellis2",
        "images": [C.view_name(images, i) for i in range(len(images))],
        "num_views": len(images),
        "pipeline_type": pipeline_type,
        "resolution": int(result.latents[2]) if result.latents else None,
        "seed": seed,
        "num_samples": num_samples,
        "stages": {s: {"aggregator": a.name, "repr": repr(a)} for s, a in result.aggregators.items()},
        "weights": list(weights) if weights is not None else None,
        "max_batch": max_batch,
        "sampler_params": {k: dict(v or {}) for k, v in stage_params.items()},
        "cost": result.summary(),
        "files": files,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
