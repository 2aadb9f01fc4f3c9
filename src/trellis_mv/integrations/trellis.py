"""TRELLIS (v1)'s ``TrellisImageTo3DPipeline`` as a :class:`~trellis_mv.Adapter`.

TRELLIS v1 ships its own ``run_multi_image`` with two modes; this adapter runs any
registered aggregator per stage instead, through the same door as TRELLIS.2: the
pipeline's own ``run`` with ``get_cond`` answering the N views and each stage sampler
patched. v1's samplers speak their own guidance dialect (``cfg_strength``,
``cfg_interval``, ``(1 + s) * pos - s * neg``), which the patch honours as it is.

Stages: ``sparse_structure`` and ``slat``. A view may be given already encoded as its
``[L, C]`` DINOv2 tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._errors import ImageError, ModelNotAvailable
from .._spec import hookimpl
from ._base import PipelineAdapter

__all__ = ["DEFAULT_MODEL", "TrellisAdapter"]

DEFAULT_MODEL = "microsoft/TRELLIS-image-large"


class TrellisAdapter(PipelineAdapter):
    """TRELLIS (a hub id such as microsoft/TRELLIS-image-large, or a model folder): sparse_structure, slat.

    :param pipeline: the loaded pipeline.
    :param formats: what ``decode_slat`` makes (``mesh``, ``gaussian``, ``radiance_field``).
    :param preprocess: background removal and crop by the pipeline.
    """

    name = "trellis"
    dialect = "trellis"
    sampler_attributes: ClassVar[dict[str, str]] = {"sparse_structure": "sparse_structure_sampler", "slat": "slat_sampler"}
    stage_names: ClassVar[tuple[str, ...]] = tuple(sampler_attributes)
    params_attributes: ClassVar[dict[str, str]] = {
        "sparse_structure": "sparse_structure_sampler_params", "slat": "slat_sampler_params",
    }
    stage_aliases: ClassVar[dict[str, str]] = {
        "ss": "sparse_structure", "structure": "sparse_structure", "sparse": "sparse_structure",
        "shape": "slat", "structured_latent": "slat",
    }
    latent_frame = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))
    package = "trellis"
    pipeline_json_name = "TrellisImageTo3DPipeline"
    install_hint = (
        "TRELLIS is not importable. Install it from https://github.com/microsoft/TRELLIS (its setup.sh), or put its "
        "source folder on PYTHONPATH. To try trellis-mv without it, run with `--model proxy`."
    )

    def __init__(self, pipeline: Any, *, formats: Sequence[str] = ("mesh", "gaussian", "radiance_field"),
                 preprocess: bool = True) -> None:
        super().__init__(pipeline, preprocess=preprocess)
        self.formats = list(formats)

    @classmethod
    def pipeline_class(cls) -> type:
        return cls._import("trellis.pipelines", "TrellisImageTo3DPipeline")

    def encoded_view(self, view: Any, index: int) -> torch.Tensor:
        if isinstance(view, torch.Tensor) and view.ndim == 2:
            return view
        raise ImageError(f"view {index} is a {type(view).__name__}; expected an image or its [L, C] tokens")

    def sample(self, views: Sequence[Any], *, seed: int, num_samples: int,
               params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The pipeline's ``run`` on all views; returns what ``decode_slat`` returns for ``formats``."""
        pipeline = self.pipeline
        if all(isinstance(v, torch.Tensor) for v in views):
            def make(image: Any) -> dict[str, torch.Tensor]:
                cond = torch.stack(list(views)).to(pipeline.device)
                return {"cond": cond, "neg_cond": torch.zeros_like(cond[:1])}
        else:
            original = pipeline.get_cond

            def make(image: Any) -> dict[str, torch.Tensor]:
                return original(list(views))

        with self.views_cond(make):
            return pipeline.run(views[0], num_samples=num_samples, seed=seed,
                                sparse_structure_sampler_params=dict(params.get("sparse_structure", {})),
                                slat_sampler_params=dict(params.get("slat", {})), formats=self.formats,
                                preprocess_image=False)

    def export(self, result: Any, folder: Path) -> list[str]:
        """``sample_K.glb`` per sample (TRELLIS's ``postprocessing_utils.to_glb``), and the views."""
        try:
            from trellis.utils import postprocessing_utils
        except ImportError as exc:
            raise ModelNotAvailable(f"TRELLIS's postprocessing (and its extensions) is needed to write a GLB: {exc}") from exc
        out = result.output
        files = []
        for k, (gaussian, mesh) in enumerate(zip(out["gaussian"], out["mesh"])):
            postprocessing_utils.to_glb(gaussian, mesh, verbose=False).export(str(folder / f"sample_{k}.glb"))
            files.append(f"sample_{k}.glb")
        return files + self.save_views(result, folder)


@hookimpl
def register_adapters() -> list[type]:
    return [TrellisAdapter]


@hookimpl
def adapter_for(model: str) -> type | None:
    return TrellisAdapter if model != "proxy" and TrellisAdapter.runs(model) else None
