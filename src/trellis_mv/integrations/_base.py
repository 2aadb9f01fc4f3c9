"""What the TRELLIS.2 and TRELLIS adapters share: loading, per-view preprocessing, and ``get_cond`` for N views.

Both pipelines have the same shape: ``preprocess_image``, ``get_cond`` returning one row per
image, one sampler per stage, and a ``run`` that strings the stages together for *one*
image. A multi-view run is that same ``run`` with ``get_cond`` answering the N views'
conditioning (one negative row), while the core patches every stage sampler. Nothing of
the pipeline's own logic (the cascade, its token-budget fallback, the decoders) is copied.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from .._errors import ImageError, ModelNotAvailable, ParameterError

__all__ = ["PipelineAdapter", "check_model_files", "importable", "pipeline_config", "pipeline_name"]


def importable(package: str) -> bool:
    """Whether ``package`` can be imported here (without importing it)."""
    import importlib.util
    import sys

    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def pipeline_config(model: str) -> dict[str, Any]:
    """``pipeline.json`` of a local model folder or a hub id, read without loading any weights."""
    local = Path(model).expanduser() / "pipeline.json"
    if local.is_file():
        path = local
    elif Path(model).expanduser().exists():
        raise ParameterError(f"{model} has no pipeline.json; expected a TRELLIS.2 or TRELLIS model folder or a hub id")
    else:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:
            raise ModelNotAvailable(f"huggingface_hub is needed to fetch {model!r}: pip install huggingface_hub") from exc
        try:
            path = Path(hf_hub_download(model, "pipeline.json"))
        except Exception as exc:  # network, unknown repository, gated model, ...
            raise ParameterError(f"cannot read {model!r}/pipeline.json from the hub ({type(exc).__name__}: {exc}); "
                                 "give a local model folder, or --model proxy") from exc
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ParameterError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("args", {}), dict):
        raise ParameterError(f"{path} holds a {type(config).__name__}, not a pipeline config "
                             '{"name": ..., "args": {"models": ...}}; give a TRELLIS.2 or TRELLIS model folder')
    return config


def check_model_files(model: str) -> None:
    """Refuse, naming the file, a local model folder whose weights are broken (TRELLIS would report a hub error)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return
    models = pipeline_config(model).get("args", {}).get("models", {})
    for name, ref in (models.items() if isinstance(models, dict) else []):
        config, weights = folder / f"{ref}.json", folder / f"{ref}.safetensors"
        if not (config.exists() or weights.exists()):
            continue  # a model of another repository, fetched from the hub
        try:
            json.loads(config.read_text())
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as exc:  # a missing, truncated or foreign file
            raise ParameterError(f"model {name!r} of {model}: {config.name} / {weights.name} cannot be read "
                                 f"({type(exc).__name__}: {exc}); download the model folder again") from exc


def pipeline_name(model: str) -> str:
    """The pipeline class a model folder or hub id declares (``pipeline.json``'s ``name``)."""
    config = pipeline_config(model)
    if not isinstance(config, dict):
        raise ParameterError(f"{model}'s pipeline.json holds a {type(config).__name__}, not an object with a 'name'; "
                             "is this a TRELLIS.2 or TRELLIS model folder?")
    return str(config.get("name", ""))


class PipelineAdapter:
    """An adapter around a TRELLIS-family pipeline object; subclasses name the stages and the run.

    :param pipeline: the loaded pipeline.
    :param preprocess: run the pipeline's own ``preprocess_image`` (background removal,
        crop) on every view; without it, views are taken as already cropped and matted.
    """

    name: ClassVar[str]
    dialect: ClassVar[str]
    #: stage name -> the pipeline attribute holding that stage's sampler
    sampler_attributes: ClassVar[dict[str, str]]
    #: stage name -> the pipeline attribute holding that stage's default sampler parameters
    params_attributes: ClassVar[dict[str, str]]
    stage_aliases: ClassVar[dict[str, str]] = {}
    install_hint: ClassVar[str]
    #: the importable package and the ``pipeline.json`` name of the models this adapter runs
    package: ClassVar[str]
    pipeline_json_name: ClassVar[str]

    def __init__(self, pipeline: Any, *, preprocess: bool = True) -> None:
        self.pipeline = pipeline
        self.preprocess = preprocess

    @classmethod
    def pipeline_class(cls) -> type:
        """The pipeline class, imported lazily; :class:`ModelNotAvailable` says how to install it."""
        raise NotImplementedError

    @classmethod
    def runs(cls, model: str) -> bool:
        """Whether ``model`` is one of this adapter's: a local folder whose ``pipeline.json`` names its pipeline,
        or a hub id whose does, asked only when the package is importable (so that nothing is downloaded in vain)."""
        if not Path(model).expanduser().exists() and not importable(cls.package):
            return False
        return pipeline_name(model) == cls.pipeline_json_name

    @classmethod
    def _import(cls, module: str, name: str) -> type:
        try:
            return getattr(__import__(module, fromlist=[name]), name)
        except ImportError as exc:
            raise ModelNotAvailable(f"{cls.install_hint} ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def load(cls, model: str, *, device: str | torch.device | None = None, **options: Any) -> PipelineAdapter:
        """``from_pretrained(model)`` (hub id or local folder), moved to ``device`` (default: CUDA if present)."""
        check_model_files(model)
        pipeline = cls.pipeline_class().from_pretrained(model)  # type: ignore[attr-defined]  # imported lazily
        pipeline.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        return cls(pipeline, **options)

    @property
    def samplers(self) -> dict[str, Any]:
        """``{stage: sampler}`` of the pipeline."""
        return {stage: getattr(self.pipeline, attr) for stage, attr in self.sampler_attributes.items()}

    @property
    def default_params(self) -> dict[str, dict[str, Any]]:
        """The pipeline's own sampler parameters per stage (its ``pipeline.json``)."""
        return {stage: dict(getattr(self.pipeline, attr, {}) or {}) for stage, attr in self.params_attributes.items()}

    def prepare(self, images: Sequence[Any]) -> list[Any]:
        """The pipeline's ``preprocess_image`` per view (unless ``preprocess=False``); errors name the view."""
        views = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                views.append(self.encoded_view(im, i))
            elif not self.preprocess:
                views.append(im)
            else:
                try:
                    views.append(self.pipeline.preprocess_image(im))
                except ValueError as exc:  # numpy's min() of an empty bounding box
                    raise ImageError(f"view {i}: no foreground found after background removal ({exc}); "
                                     "give an image with a clearly visible object") from exc
        if any(isinstance(v, Image.Image) for v in views) and not all(isinstance(v, Image.Image) for v in views):
            raise ImageError("give every view as an image, or every view already encoded; not a mix")
        return views

    def encoded_view(self, view: Any, index: int) -> Any:
        """A view given already encoded (the adapter says which form it accepts)."""
        raise ImageError(f"view {index} is a {type(view).__name__}; expected an image")

    @contextlib.contextmanager
    def views_cond(self, make: Callable[..., Mapping[str, torch.Tensor]]) -> Iterator[None]:
        """Make ``pipeline.get_cond`` answer ``make(*args, **kwargs)`` with one negative row, then restore it."""
        pipeline = self.pipeline
        had = "get_cond" in vars(pipeline)
        saved = vars(pipeline).get("get_cond")

        def get_cond(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            out = dict(make(*args, **kwargs))
            if out.get("neg_cond") is not None:
                out["neg_cond"] = out["neg_cond"][:1]
            return out

        pipeline.get_cond = get_cond
        try:
            yield
        finally:
            if had:
                pipeline.get_cond = saved
            else:
                del pipeline.get_cond

    @staticmethod
    def save_views(result: Any, folder: Path) -> list[str]:
        """The views as the model saw them (after preprocessing), ``view_I.png``."""
        files = []
        for i, view in enumerate(result.views):
            if isinstance(view, Image.Image):
                view.save(folder / f"view_{i}.png")
                files.append(f"view_{i}.png")
        return files

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.pipeline).__name__})"
