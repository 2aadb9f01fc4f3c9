"""The only two places where the app touches a model: building the pipeline, and one run on it.

Everything else in the app sees the model as an adapter (:class:`trellis_mv.Adapter`) and
hands it back to :func:`run`, which is :func:`trellis_mv.generate`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..run import generate, load_adapter

__all__ = ["default_params", "load_pipeline", "run", "stage_clock", "stage_names"]


def load_pipeline(model: str = "proxy") -> Any:
    """The one model adapter the app shares between requests: the embedded proxy, TRELLIS.2 or TRELLIS.

    >>> tuple(load_pipeline("proxy").samplers)
    ('sparse_structure', 'texture')
    """
    return load_adapter(model)


def stage_names(pipeline: Any) -> tuple[str, ...]:
    """The stages an adapter samples, in order."""
    return tuple(pipeline.samplers)


def default_params(pipeline: Any) -> dict[str, dict[str, Any]]:
    """Per-stage sampler defaults where the adapter says them (empty where it does not)."""
    params = getattr(pipeline, "default_params", None) or {}
    return {s: dict(params.get(s, {})) for s in stage_names(pipeline)}


@contextmanager
def stage_clock(pipeline: Any, on_stage: Callable[[str, bool], None] | None = None) -> Iterator[dict[str, float]]:
    """Seconds spent in each stage's ``sampler.sample`` during the block (a cascade's calls add up).

    ``on_stage(name, finished)`` is called as each stage starts and ends (the page's progress bar). Stages that
    share one sampler instance are timed together under ``"a+b"``. Each sampler is restored
    when the block ends; the app runs one request at a time, so no other run sees the wrapper.
    """
    groups: dict[int, list[str]] = {}
    samplers = pipeline.samplers
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
    return generate(pipeline, list(images), out_dir, mode=mode, stages=stages, params=params, seed=seed,
                    cameras=cameras, overwrite=True)
