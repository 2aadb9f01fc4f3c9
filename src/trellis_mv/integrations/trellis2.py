"""TRELLIS.2's ``Trellis2ImageTo3DPipeline`` as a :class:`~trellis_mv.Adapter`.

A run is the pipeline's own ``run`` with ``get_cond`` answering the N views and each stage
sampler (sparse structure, shape, texture) patched with its aggregator. Everything else is
TRELLIS.2's: the pipeline types, the cascade's two shape passes and its token-budget
fallback, the sampler defaults from ``pipeline.json``, the decoders. The views travel
through the shape and texture models as one batch of sparse tensors (the patch repeats
the latent per view and per sample), the texture stage's ``concat_cond`` included.

Object frame: TRELLIS.2 generates in its own canonical frame (z up); ``latent_frame``
maps trellis-mv's object frame (x right, y up, z towards the front camera) onto the
latent grid's axes as TRELLIS.2's renderers place the front camera (on ``-y``).

>>> import trellis_mv
>>> adapter = trellis_mv.load_adapter("microsoft/TRELLIS.2-4B")              # doctest: +SKIP
>>> trellis_mv.generate(adapter, ["front.png", "back.png"], "out/",
...                     stages={"texture": "single:view=0"}, seed=42)         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._errors import ImageError, ModelNotAvailable, ParameterError
from .._spec import hookimpl
from ._base import PipelineAdapter, pipeline_config

__all__ = ["DEFAULT_MODEL", "PIPELINE_TYPES", "Trellis2Adapter", "export_glb", "export_video", "required_models"]

DEFAULT_MODEL = "microsoft/TRELLIS.2-4B"

#: Pipeline type -> the flow models it needs (besides the sparse-structure ones), as TRELLIS.2's run() asserts.
PIPELINE_TYPES: dict[str, tuple[str, ...]] = {
    "512": ("shape_slat_flow_model_512", "tex_slat_flow_model_512"),
    "1024": ("shape_slat_flow_model_1024", "tex_slat_flow_model_1024"),
    "1024_cascade": ("shape_slat_flow_model_512", "shape_slat_flow_model_1024", "tex_slat_flow_model_1024"),
    "1536_cascade": ("shape_slat_flow_model_512", "shape_slat_flow_model_1024", "tex_slat_flow_model_1024"),
}
_COMMON_MODELS = ("sparse_structure_flow_model", "sparse_structure_decoder")


def required_models(pipeline_type: str) -> tuple[str, ...]:
    """The model names a pipeline type needs to sample (its flow models and the structure decoder)."""
    if pipeline_type not in PIPELINE_TYPES:
        raise ParameterError(f"unknown pipeline_type {pipeline_type!r}; expected one of {', '.join(PIPELINE_TYPES)}")
    return (*_COMMON_MODELS, *PIPELINE_TYPES[pipeline_type])


class Trellis2Adapter(PipelineAdapter):
    """TRELLIS.2 (a hub id such as microsoft/TRELLIS.2-4B, or a model folder): sparse_structure, shape, texture.

    :param pipeline: the loaded pipeline.
    :param pipeline_type: ``512``, ``1024``, ``1024_cascade`` or ``1536_cascade`` (default:
        the pipeline's own).
    :param max_num_tokens: the cascade's token budget.
    :param preprocess: background removal and crop by the pipeline (views given as images).
    :param video: also write a turntable MP4 per sample. :param envmap: HDR/EXR light for it.
    :param decimation_target, texture_size: of the GLB, as TRELLIS.2's ``example.py``.

    A view may also be given already encoded: a dict ``{512: [L, C], 1024: [L, C]}`` of
    DINOv3 tokens per resolution the pipeline type needs.
    """

    name = "trellis2"
    dialect = "trellis2"
    sampler_attributes: ClassVar[dict[str, str]] = {
        "sparse_structure": "sparse_structure_sampler", "shape": "shape_slat_sampler", "texture": "tex_slat_sampler",
    }
    stage_names: ClassVar[tuple[str, ...]] = tuple(sampler_attributes)
    params_attributes: ClassVar[dict[str, str]] = {
        "sparse_structure": "sparse_structure_sampler_params", "shape": "shape_slat_sampler_params",
        "texture": "tex_slat_sampler_params",
    }
    stage_aliases: ClassVar[dict[str, str]] = {
        "ss": "sparse_structure", "structure": "sparse_structure", "sparse": "sparse_structure",
        "shape_slat": "shape", "tex": "texture", "tex_slat": "texture",
    }
    #: object frame (x right, y up, z front) -> TRELLIS.2's grid (x right, z up, front camera on -y)
    latent_frame = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))
    package = "trellis2"
    pipeline_json_name = "Trellis2ImageTo3DPipeline"
    install_hint = (
        "TRELLIS.2 is not importable. Install it from https://github.com/microsoft/TRELLIS.2 (its setup.sh builds "
        "the CUDA extensions: o_voxel, cumesh, flex_gemm, nvdiffrast), or put its source folder on PYTHONPATH. "
        "To try trellis-mv without it, run with `--model proxy` (the embedded CPU model)."
    )

    def __init__(self, pipeline: Any, *, pipeline_type: str | None = None, max_num_tokens: int = 49152,
                 preprocess: bool = True, video: bool = True, envmap: str | os.PathLike[str] | None = None,
                 decimation_target: int = 1_000_000, texture_size: int = 4096) -> None:
        super().__init__(pipeline, preprocess=preprocess)
        self.pipeline_type: str = pipeline_type or getattr(pipeline, "default_pipeline_type", None) or "1024_cascade"
        needed = required_models(self.pipeline_type)
        models = getattr(pipeline, "models", None)
        if models is not None:
            missing = [m for m in needed if m not in models]
            if missing:
                raise ParameterError(f"pipeline_type {self.pipeline_type!r} needs the models {', '.join(missing)}, which "
                                     f"this pipeline does not have (it has: {', '.join(sorted(models))})")
        if isinstance(max_num_tokens, bool) or not isinstance(max_num_tokens, int) or max_num_tokens < 1:
            raise ParameterError(f"max_num_tokens must be an integer >= 1; got max_num_tokens={max_num_tokens!r}")
        self.max_num_tokens = max_num_tokens
        self.video, self.envmap = video, envmap
        self.decimation_target, self.texture_size = decimation_target, texture_size

    @classmethod
    def pipeline_class(cls) -> type:
        return cls._import("trellis2.pipelines", "Trellis2ImageTo3DPipeline")

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, *, device: str | torch.device | None = None, **options: Any) -> Trellis2Adapter:
        """Load a model folder or hub id; a pipeline type whose models are missing is refused before any weights load."""
        cls.pipeline_class()
        if options.get("pipeline_type") is not None:
            models = pipeline_config(model).get("args", {}).get("models", {})
            missing = [m for m in required_models(options["pipeline_type"]) if m not in models]
            if missing:
                raise ParameterError(f"pipeline_type {options['pipeline_type']!r} needs the models {', '.join(missing)}, "
                                     f"which {model} does not have")
        return super().load(model, device=device, **options)  # type: ignore[return-value]

    def encoded_view(self, view: Any, index: int) -> Mapping[int, torch.Tensor]:
        if isinstance(view, Mapping) and view and all(isinstance(v, torch.Tensor) for v in view.values()):
            return {int(k): v for k, v in view.items()}
        raise ImageError(f"view {index} is a {type(view).__name__}; expected an image or a dict {{resolution: tokens}}")

    def sample(self, views: Sequence[Any], *, seed: int, num_samples: int,
               params: Mapping[str, Mapping[str, Any]]) -> tuple[Any, Any]:
        """The pipeline's ``run`` on all views; returns ``(meshes, (shape_slat, tex_slat, resolution))``."""
        pipeline = self.pipeline
        if all(isinstance(v, Mapping) for v in views):
            def make(image: Any, resolution: int, include_neg_cond: bool = True) -> dict[str, torch.Tensor]:
                if any(resolution not in v for v in views):
                    raise ParameterError(f"an encoded view has no {resolution}-px tokens, which pipeline_type "
                                         f"{self.pipeline_type!r} needs")
                cond = torch.stack([v[resolution] for v in views]).to(pipeline.device)
                return {"cond": cond, "neg_cond": torch.zeros_like(cond[:1])} if include_neg_cond else {"cond": cond}
        else:
            original = pipeline.get_cond

            def make(image: Any, resolution: int, include_neg_cond: bool = True) -> dict[str, torch.Tensor]:
                return original(list(views), resolution, include_neg_cond)

        with self.views_cond(make):
            meshes, latents = pipeline.run(
                views[0], num_samples=num_samples, seed=seed,
                sparse_structure_sampler_params=dict(params.get("sparse_structure", {})),
                shape_slat_sampler_params=dict(params.get("shape", {})),
                tex_slat_sampler_params=dict(params.get("texture", {})),
                preprocess_image=False, return_latent=True, pipeline_type=self.pipeline_type,
                max_num_tokens=self.max_num_tokens,
            )
        return meshes, latents

    def export(self, result: Any, folder: Path) -> list[str]:
        """``sample_K.glb`` (and ``sample_K.mp4``) per sample, as TRELLIS.2's ``example.py`` writes them, and the views."""
        meshes, _ = result.output
        files: list[str] = []
        for k, mesh in enumerate(meshes):
            mesh.simplify(16777216)  # nvdiffrast's limit, as example.py
            if self.video:
                export_video(mesh, folder / f"sample_{k}.mp4", envmap=self.envmap)
                files.append(f"sample_{k}.mp4")
            export_glb(mesh, folder / f"sample_{k}.glb", decimation_target=self.decimation_target,
                       texture_size=self.texture_size)
            files.append(f"sample_{k}.glb")
        return files + self.save_views(result, folder)


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
        raise ModelNotAvailable(f"o_voxel (part of TRELLIS.2) is needed to write a GLB: {exc}") from exc
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


@hookimpl
def register_adapters() -> list[type]:
    return [Trellis2Adapter]


@hookimpl
def adapter_for(model: str) -> type | None:
    return Trellis2Adapter if model != "proxy" and Trellis2Adapter.runs(model) else None
