"""What the page sends, checked before any model work: photos, view angles, aggregators, numbers.

Every check raises :class:`InputError` with one line that names the field, what came and
what is expected; the page shows that line. Nothing here imports Gradio.

>>> parse_cameras("front; 90,10; ; left", 4)
[(0.0, 0.0), (90.0, 10.0), None, (270.0, 0.0)]
>>> parse_cameras("front; az90el10", 2, names={"front": (0, 25)})   # the model's own named cameras
[(0.0, 25.0), (90.0, 10.0)]
>>> stage_spec("stochastic", "order=random, seed=3")
'stochastic:order=random, seed=3'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import TrellisMVError
from .._images import load_image
from .._registry import AggregatorInfo, Registry, get_registry, resolve
from .._views import parse_camera

__all__ = [
    "MAX_PHOTOS",
    "MAX_STEPS",
    "InputError",
    "RunOptions",
    "aggregator_table",
    "check_cameras",
    "check_photos",
    "describe",
    "parse_cameras",
    "parse_number",
    "run_options",
    "stage_spec",
]

MAX_PHOTOS = 8
MAX_STEPS = 100
_UNKNOWN = {"", "?", "-", "none", "auto"}


class InputError(TrellisMVError, ValueError):
    """Something typed or uploaded in the page cannot be used; the message says what to change."""


Camera = tuple[float, float] | None


@dataclass(frozen=True)
class RunOptions:
    """One checked request: what :func:`trellis_mv.app._run.run` is called with."""

    photos: list[Path]
    cameras: list[Camera] | None
    mode: str
    stages: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 42


def _name(path: Path) -> str:
    return path.name


def check_photos(files: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    """The uploaded files as paths, after checking there are 1 to 8 and each opens as an image.

    >>> check_photos([])
    Traceback (most recent call last):
    ...
    trellis_mv.app._options.InputError: no photo: upload 1 to 8 photos of one object (PNG or JPEG)
    """
    paths = [Path(f) for f in (files or [])]
    if not paths:
        raise InputError(f"no photo: upload 1 to {MAX_PHOTOS} photos of one object (PNG or JPEG)")
    if len(paths) > MAX_PHOTOS:
        raise InputError(f"{len(paths)} photos uploaded; at most {MAX_PHOTOS} are used at once: remove {len(paths) - MAX_PHOTOS}")
    for i, p in enumerate(paths, 1):
        try:
            load_image(p, i - 1)
        except TrellisMVError as exc:
            reason = "" if "not a readable image" in str(exc) else f" ({str(exc).split(': ', 1)[-1]})"
            raise InputError(f"photo {i} ({_name(p)!r}) is not an image{reason}; upload PNG or JPEG files") from None
    return paths


def _camera(text: str, index: int, names: Mapping[str, Any] | None) -> Camera:
    key = text.strip().lower()
    if key in _UNKNOWN:
        return None
    try:
        camera = parse_camera(key.replace(" ", ",") if "," not in key else key, names)
    except TrellisMVError as exc:
        raise InputError(f"view {index}: {exc}") from None
    return (camera.azimuth, camera.elevation) if camera else None


def parse_cameras(text: str | None, count: int, names: Mapping[str, Any] | None = None) -> list[Camera] | None:
    """One ``(azimuth, elevation)`` or None per photo, from ``;``- or line-separated entries.

    Empty text means no view is known (None). Otherwise there must be one entry per photo;
    an entry may be empty (that view's angle is unknown). Entries are read by
    :func:`trellis_mv.parse_camera` with ``names``, the model's ``named_cameras``.

    >>> parse_cameras("", 3) is None
    True
    >>> parse_cameras("back\\n45", 2)
    [(180.0, 0.0), (45.0, 0.0)]
    """
    if text is None or not text.strip():
        return None
    entries = [e for e in re.split(r"[;\n]", text.strip())]
    if len(entries) != count:
        raise InputError(
            f"{len(entries)} view angles for {count} photos; give one per photo, separated by ';' "
            "(an empty entry for an unknown view), or clear the field"
        )
    cameras = [_camera(e, i, names) for i, e in enumerate(entries, 1)]
    return None if all(c is None for c in cameras) else cameras


def stage_spec(name: str | None, options: str | None, registry: Registry | None = None, *, where: str = "aggregator") -> str:
    """``name:option=value,...`` after checking the aggregator exists and takes these options.

    >>> stage_spec("multidiffusion", "")
    'multidiffusion'
    >>> stage_spec("stochastic", "colour=red")
    Traceback (most recent call last):
    ...
    trellis_mv.app._options.InputError: aggregator: aggregator 'stochastic' has no option 'colour'; its options are: order, seed
    """
    reg = registry or get_registry()
    name = (name or "").strip()
    if not name:
        raise InputError(f"{where}: choose an aggregator ({', '.join(i.name for i in reg.list())})")
    text = f"{name}:{options.strip()}" if options and options.strip() else name
    try:
        resolve(text, registry=reg)  # unknown names and options fail here, with the known ones listed
    except TrellisMVError as exc:
        raise InputError(f"{where}: {exc}") from None
    except (ValueError, TypeError) as exc:
        given = (options or "").strip()
        raise InputError(f"{where}: {name} options {given!r} are not valid ({exc}); write option=value, ...") from None
    return text


def check_cameras(spec: str, count: int, cameras: Sequence[Camera] | None, registry: Registry | None = None, *,
                  where: str = "aggregator") -> None:
    """Let the aggregator ``spec`` refuse these photos' view angles now; a missing angle is named as the field to fill.

    >>> check_cameras("multidiffusion", 2, None)
    """
    from .._patch import check_views

    agg = resolve(spec, registry=registry or get_registry())
    try:
        check_views(agg, count, cameras or ())
    except TrellisMVError as exc:
        given = [c for c in (cameras or []) if c is not None]
        try:  # would it run with an angle for every photo?
            check_views(agg, count, [(360.0 * i / count, 0.0) for i in range(count)])
        except TrellisMVError:
            raise InputError(f"{where}: {exc}") from None
        missing = "no photo has one" if not given else f"only {len(given)} of {count} photos have one"
        raise InputError(
            f"{where}: {agg.name} needs a view angle for each photo and {missing}: fill 'View angles' with one "
            f"entry per photo, e.g. '{'; '.join(['front', 'right', 'back', 'left'][:count] or ['front'])}', "
            "or choose another aggregator"
        ) from None


def parse_number(value: Any, what: str, *, integer: bool = False, low: float | None = None, high: float | None = None
                 ) -> float | int | None:
    """A number typed in the page, or None when the field is empty.

    >>> parse_number("12", "steps", integer=True, low=1), parse_number(None, "guidance")
    (12, None)
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number; got {value!r}") from None
    if number != number or abs(number) == float("inf"):
        raise InputError(f"{what} must be a finite number; got {value!r}")
    if integer:
        if number != int(number):
            raise InputError(f"{what} must be a whole number; got {value!r}")
        number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else (
            f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise InputError(f"{what} must be {bounds}; got {value!r}")
    return number


def run_options(
    files: Sequence[str | os.PathLike[str]] | None,
    views: str | None,
    stage_names: Sequence[str],
    choices: Mapping[str, tuple[str | None, str | None]],
    *,
    seed: Any = 42,
    steps: Any = None,
    guidance: Any = None,
    registry: Registry | None = None,
    names: Mapping[str, Any] | None = None,
) -> RunOptions:
    """Check a whole request; the first problem raises :class:`InputError`.

    ``choices`` maps each stage to ``(aggregator, options text)``; ``steps`` and ``guidance``
    (empty: the model's per-stage defaults) apply to every stage; ``names`` are the model's
    named cameras (its ``named_cameras``), so that ``front`` means what it means to the model.
    """
    photos = check_photos(files)
    cameras = parse_cameras(views, len(photos), names)
    unknown = sorted(set(choices) - set(stage_names))
    if unknown:
        raise InputError(f"unknown stage {unknown[0]!r}; this model's stages are: {', '.join(stage_names)}")
    stages = {s: stage_spec(*choices[s], registry, where=f"stage {s}") for s in stage_names if s in choices}
    for s, spec in stages.items():
        check_cameras(spec, len(photos), cameras, registry, where=f"stage {s}")
    seed_value = parse_number(seed, "seed", integer=True, low=0, high=2**32 - 1)
    step_value = parse_number(steps, "steps", integer=True, low=1, high=MAX_STEPS)
    guidance_value = parse_number(guidance, "guidance strength", low=0, high=100)
    params: dict[str, dict[str, Any]] = {s: {} for s in stage_names}
    for s in stage_names:
        if step_value is not None:
            params[s]["steps"] = step_value
        if guidance_value is not None:
            params[s]["guidance_strength"] = float(guidance_value)
    return RunOptions(photos, cameras, "multidiffusion", stages, params, 42 if seed_value is None else int(seed_value))


def describe(info: AggregatorInfo) -> str:
    """One line for the page: the summary, the options with defaults, and where it comes from.

    >>> from trellis_mv import get_registry
    >>> describe(get_registry().info("stochastic"))  # doctest: +ELLIPSIS
    'One view per denoising step, ... Options: order=cycle, seed=0. (trellis-mv)'
    """
    options = ", ".join(f"{k}={v}" for k, v in info.options().items()) or "none"
    return f"{info.summary} Options: {options}. ({info.distribution or 'unknown distribution'})"


def aggregator_table(registry: Registry | None = None) -> str:
    """Every registered aggregator as a Markdown table (name, summary, options, distribution)."""
    rows = ["| aggregator | what it does per step | options (defaults) | from |", "|---|---|---|---|"]
    for info in (registry or get_registry()).list():
        options = ", ".join(f"`{k}={v}`" for k, v in info.options().items()) or "none"
        rows.append(f"| `{info.name}` | {info.summary} | {options} | {info.distribution or '?'} {info.version or ''} |")
    return "\n".join(rows)
