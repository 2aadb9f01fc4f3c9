"""The only two places where the app touches a model: building the pipeline, and one run on it.

Everything else in the app sees a pipeline as an opaque object with ``stages`` (or
``samplers``) and hands it back to :func:`run`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["default_params", "load_pipeline", "run", "stage_clock", "stage_names"]


def load_pipeline(model: str = "proxy") -> Any:
    """The one pipeline the app shares between requests: the embedded proxy, or TRELLIS.2.

    >>> load_pipeline("proxy").stages
    ('sparse_structure', 'texture')
    """
    if model == "proxy":
        from ..proxy import ProxyPipeline

        return ProxyPipeline()
    from ..integrations import trellis2

    return trellis2.load_pipeline(model)


def stage_names(pipeline: Any) -> tuple[str, ...]:
    """The stages a pipeline samples, in order."""
    names = getattr(pipeline, "stages", None)
    if names:
        return tuple(names)
    from ..integrations import trellis2

    return tuple(trellis2.stage_samplers(pipeline))


def default_params(pipeline: Any) -> dict[str, dict[str, Any]]:
    """Per-stage sampler defaults where the pipeline says them (empty where it does not)."""
    params = getattr(pipeline, "params", None)
    if isinstance(params, Mapping):
        return {s: dict(params.get(s, {})) for s in stage_names(pipeline)}
    found: dict[str, dict[str, Any]] = {}
    for stage, attr in (("sparse_structure", "sparse_structure_sampler_params"), ("shape", "shape_slat_sampler_params"),
                        ("texture", "tex_slat_sampler_params")):
        if isinstance(getattr(pipeline, attr, None), Mapping):
            found[stage] = dict(getattr(pipeline, attr))
    return found


def _samplers(pipeline: Any) -> Mapping[str, Any]:
    samplers = getattr(pipeline, "samplers", None)
    if isinstance(samplers, Mapping):
        return samplers
    from ..integrations import trellis2

    return trellis2.stage_samplers(pipeline)


@contextmanager
def stage_clock(pipeline: Any, on_stage: Callable[[str, bool], None] | None = None) -> Iterator[dict[str, float]]:
    """Seconds spent in each stage's ``sampler.sample`` during the block (a cascade's calls add up).

    ``on_stage(name, finished)`` is called as each stage starts and ends (the page's progress bar). Stages that
    share one sampler instance are timed together under ``"a+b"``. Each sampler is restored
    when the block ends; the app runs one request at a time, so no other run sees the wrapper.
    """
    groups: dict[int, list[str]] = {}
    samplers = _samplers(pipeline)
    for stage, sampler in samplers.items():
        groups.setdefault(id(sampler), []).append(stage)
    seconds: dict[str, float] = {}
    wrapped: list[tuple[Any, bool, Any]] = []
    try:
        for names in groups.values():
            sampler = samplers[names[0]]
            label = "+".join(names)
            own = "sample" in vars(sampler)
            original = sampler.sample

            def timed(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
                if on_stage is not None:
                    on_stage(_label, False)
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    seconds[_label] = seconds.get(_label, 0.0) + time.perf_counter() - start
                    if on_stage is not None:
                        on_stage(_label, True)

            object.__setattr__(sampler, "sample", timed)
            wrapped.append((sampler, own, original))
        yield seconds
    finally:
        for sampler, own, original in wrapped:
            if own:
                object.__setattr__(sampler, "sample", original)
            else:
                object.__delattr__(sampler, "sample")


def _named_copies(images: Sequence[Path], cameras: Sequence[tuple[float, float] | None] | None, folder: Path) -> list[Path]:
    """The photos copied as ``01_<view>.<ext>``, so that the proxy reads each given view from its name."""
    from ..proxy import view_name

    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, src in enumerate(images):
        camera = cameras[i] if cameras else None
        stem = Path(src).stem.replace("_", "-") if camera is None else view_name(camera)
        dst = folder / f"{i + 1:02d}_{stem}{Path(src).suffix.lower() or '.png'}"
        shutil.copyfile(src, dst)
        copies.append(dst)
    return copies


def run(
    pipeline: Any,
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    mode: str = "multidiffusion",
    stages: Mapping[str, str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 42,
    cameras: Sequence[tuple[float, float] | None] | None = None,
) -> dict[str, Any]:
    """One multi-view generation into ``out_dir``; returns its summary (``outputs`` lists the files).

    ``cameras`` holds one ``(azimuth, elevation)`` or None per image.
    """
    out = Path(out_dir)
    from ..proxy import ProxyPipeline, generate

    if isinstance(pipeline, ProxyPipeline):
        inputs = _named_copies([Path(p) for p in images], cameras, out / "inputs")
        return generate(inputs, out, mode=mode, stages=stages, params=params, seed=seed, pipeline=pipeline, verbose=False)
    from ..integrations import trellis2

    p = params or {}
    return trellis2.generate(
        list(images), out, pipeline=pipeline, mode=mode, stages=stages, seed=seed, video=False,
        sparse_structure_sampler_params=p.get("sparse_structure") or None,
        shape_slat_sampler_params=p.get("shape") or None, tex_slat_sampler_params=p.get("texture") or None,
    )
