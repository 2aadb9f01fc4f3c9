"""The only two places where the app touches a model: building the pipeline, and one run on it.

Everything else in the app sees the model as an adapter (:class:`trellis_mv.Adapter`) and
hands it back to :func:`run`, which is :func:`trellis_mv.generate`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._patch import StepCallback
from ..run import generate, load_adapter

__all__ = ["StepClock", "default_params", "load_pipeline", "run", "stage_names", "stage_steps"]


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


def stage_steps(pipeline: Any, params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, int | None]:
    """The denoising steps each stage will take: ``params`` where given, else the adapter's default (None: unknown).

    >>> stage_steps(load_pipeline("proxy"), {"texture": {"steps": 3}})
    {'sparse_structure': 12, 'texture': 3}
    """
    defaults = default_params(pipeline)
    steps = {}
    for s in stage_names(pipeline):
        value = (params or {}).get(s, {}).get("steps", defaults[s].get("steps"))
        steps[s] = value if isinstance(value, int) else None
    return steps


class StepClock:
    """Per-step progress of one request (one run, or the runs of a comparison), fed by the core's ``on_step``.

    ``steps`` is the step count of each stage of one run (None where unknown); ``report(fraction,
    text)`` receives the share done (None while unknown) and a line such as ``texture: step 3/12 ·
    about 4 s left``. :attr:`seconds` holds, per stage of the current run, the time from the end of
    the previous stage's last step (the run's start for the first) to the end of its own, so that
    a stage includes what the model does before it (encoding the photos, decoding the previous
    stage).

    >>> lines = []
    >>> clock = StepClock({"a": 2, "b": 2}, report=lambda f, text: lines.append((f, text)))
    >>> clock.begin()
    >>> for stage, step in [("a", 0), ("a", 1), ("b", 0), ("b", 1)]:
    ...     clock(stage, step, 2)
    >>> [f for f, _ in lines], lines[0][1].split(" · ")[0], sorted(clock.seconds)
    ([0.25, 0.5, 0.75, 1.0], 'a: step 1/2', ['a', 'b'])
    """

    def __init__(self, steps: Mapping[str, int | None], *, runs: int = 1,
                 report: Callable[[float | None, str], None] | None = None) -> None:
        known = list(steps.values())
        self.total = sum(n for n in known if n is not None) * runs if known and all(isinstance(n, int) for n in known) else None
        self.report = report
        self.done = 0
        self.seconds: dict[str, float] = {}
        self._start = self._mark = time.perf_counter()

    def begin(self) -> None:
        """A new run starts: its stages are timed from now."""
        self.seconds = {}
        self._mark = time.perf_counter()

    def __call__(self, stage: str | None, step: int, num_steps: int | None) -> None:
        now = time.perf_counter()
        label = stage or "?"
        self.seconds[label] = self.seconds.get(label, 0.0) + now - self._mark
        self._mark = now
        self.done += 1
        if self.report is None:
            return
        text = f"{label}: step {step + 1}/{num_steps}" if num_steps else f"{label}: step {step + 1}"
        fraction = None
        if self.total:
            fraction = min(1.0, self.done / self.total)
            left = (now - self._start) / self.done * max(0, self.total - self.done)
            text += f" · about {left:.0f} s left" if left >= 1 else " · under a second left"
        self.report(fraction, text)


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
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """One multi-view generation into ``out_dir``; returns its summary (``outputs`` lists the files).

    ``cameras`` holds one ``(azimuth, elevation)`` or None per image; ``on_step`` is the core's
    progress hook (:class:`StepClock`).
    """
    return generate(pipeline, list(images), out_dir, mode=mode, stages=stages, params=params, seed=seed,
                    cameras=cameras, overwrite=True, on_step=on_step)
