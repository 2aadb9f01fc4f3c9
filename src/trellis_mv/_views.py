"""The view set: stacked conditioning, one shared negative, normalised weights, and their checks."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ._errors import ViewError

__all__ = [
    "CAMERA_NAMES",
    "Camera",
    "Views",
    "camera_directions",
    "camera_name",
    "normalise_cameras",
    "normalise_weights",
    "parse_camera",
    "prepare_views",
]


class Camera(NamedTuple):
    """Where a view was taken from, in degrees, in the adapter's object frame.

    ``azimuth`` turns about the up axis: 0 is the front, 90 the object's right side, 180 the
    back, 270 the left; ``elevation`` is the angle above the horizontal (90 looks straight
    down). Each adapter documents how this frame sits in its latent grid.
    """

    azimuth: float
    elevation: float = 0.0


#: Named cameras: ``front``, ``right``, ``back``, ``left`` (level) and ``top``.
CAMERA_NAMES: dict[str, Camera] = {
    "front": Camera(0.0, 0.0),
    "right": Camera(90.0, 0.0),
    "back": Camera(180.0, 0.0),
    "left": Camera(270.0, 0.0),
    "top": Camera(0.0, 90.0),
}
_AZ_EL = re.compile(r"^az(-?\d+(?:\.\d+)?)(?:el(-?\d+(?:\.\d+)?))?$")


def camera_directions(
    cameras: Sequence[Camera | None], frame: Sequence[Sequence[float]] | torch.Tensor | None = None
) -> torch.Tensor:
    """Unit vectors from the object towards each camera, ``[N, 3]`` (NaN rows where unknown).

    In the object frame ``x`` is the object's right, ``y`` up and ``z`` towards the front
    camera; ``frame`` (3x3) maps that frame onto the latent's axes (the adapter's
    ``latent_frame``; identity by default).

    >>> camera_directions([Camera(90.0, 0.0), None]).round(decimals=3)
    tensor([[1., 0., 0.],
            [nan, nan, nan]], dtype=torch.float64)
    """
    rows = []
    for cam in cameras:
        if cam is None:
            rows.append([math.nan] * 3)
            continue
        az, el = math.radians(cam.azimuth), math.radians(cam.elevation)
        rows.append([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    out = torch.tensor(rows, dtype=torch.float64).reshape(-1, 3)
    if frame is not None:
        out = out @ torch.as_tensor(frame, dtype=torch.float64).T
    return out


def _named(names: Mapping[str, Any] | None) -> dict[str, Camera]:
    return {**CAMERA_NAMES, **{k.lower(): Camera(*map(float, v)) for k, v in (names or {}).items()}}


def parse_camera(value: Any, names: Mapping[str, Any] | None = None) -> Camera | None:
    """A :class:`Camera` from a name, ``"AZ"``, ``"AZ,EL"``, ``"azAZ[elEL]"``, a pair, a Camera, or None.

    ``names`` adds or overrides named cameras (an adapter's ``named_cameras``: the proxy's
    ``front`` is raised 25 degrees, as its views are rendered); :data:`CAMERA_NAMES` otherwise.
    :func:`camera_name` prints a camera back in this vocabulary.

    >>> parse_camera("back"), parse_camera("30,20"), parse_camera("az30el20"), parse_camera((45, 10)), parse_camera(None)
    (Camera(azimuth=180.0, elevation=0.0), Camera(azimuth=30.0, elevation=20.0), Camera(azimuth=30.0, elevation=20.0), \
Camera(azimuth=45.0, elevation=10.0), None)
    >>> parse_camera("front", names={"front": (0, 25)})
    Camera(azimuth=0.0, elevation=25.0)
    """
    if value is None or isinstance(value, Camera):
        return value
    given = value
    if isinstance(value, str):
        key = value.strip().lower()
        named = _named(names)
        if key in named:
            return named[key]
        spelled = _AZ_EL.match(key)
        value = spelled.groups("0") if spelled else [part for part in key.replace(" ", "").split(",") if part]
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        numbers = []
    if not 1 <= len(numbers) <= 2 or not all(math.isfinite(v) for v in numbers):
        raise ViewError(
            f"camera {given!r} is not a camera; expected one of {', '.join(_named(names))}, "
            "'AZIMUTH' or 'AZIMUTH,ELEVATION' in degrees (e.g. '90' or '90,20'; also 'az90el20')"
        )
    azimuth, elevation = numbers[0] % 360.0, numbers[1] if len(numbers) == 2 else 0.0
    if not -90.0 <= elevation <= 90.0:
        raise ViewError(f"camera {given!r}: elevation must be between -90 and 90 degrees; got {elevation:g}")
    return Camera(azimuth, elevation)


def camera_name(camera: Any, names: Mapping[str, Any] | None = None) -> str:
    """How a camera is written: its name where it has one (``names`` as for :func:`parse_camera`), else ``AZ[,EL]``.

    What it prints, :func:`parse_camera` reads back as the same camera (with the same ``names``).

    >>> camera_name((180, 0)), camera_name("az30el20"), camera_name((45.0, 0.0))
    ('back', '30,20', '45')
    >>> proxy_names = {"front": (0, 25)}
    >>> camera_name((0, 25), proxy_names), camera_name((0, 0), proxy_names), camera_name("front", proxy_names)
    ('front', '0', 'front')
    """
    cam = parse_camera(camera, names)
    if cam is None:
        raise ViewError("camera_name got None; there is no camera to name (callers print unknown views themselves)")
    for name, known in _named(names).items():
        if abs((known.azimuth - cam.azimuth + 180) % 360 - 180) < 1e-6 and abs(known.elevation - cam.elevation) < 1e-6:
            return name
    number = lambda x: f"{x:.6f}".rstrip("0").rstrip(".")
    return number(cam.azimuth) + (f",{number(cam.elevation)}" if cam.elevation else "")


def normalise_cameras(
    cameras: Sequence[Any] | None, count: int | None = None, names: Mapping[str, Any] | None = None
) -> tuple[Camera | None, ...] | None:
    """Check one camera (or None) per view.

    >>> normalise_cameras(["front", None, "90,20"])
    (Camera(azimuth=0.0, elevation=0.0), None, Camera(azimuth=90.0, elevation=20.0))
    """
    if cameras is None:
        return None
    if isinstance(cameras, (str, bytes)) or not isinstance(cameras, Sequence):
        raise ViewError(f"cameras must be a list with one camera (or None) per view; got cameras={cameras!r}")
    parsed = tuple(parse_camera(c, names) for c in cameras)
    if count is not None and len(parsed) != count:
        raise ViewError(f"cameras has {len(parsed)} entries but there are {count} views; give one camera (or None) per view")
    return parsed


@dataclass(frozen=True)
class Views:
    """N views of one object, as the sampler's model sees them.

    :ivar cond: the views' conditioning stacked on dim 0, ``[N, ...]``.
    :ivar neg: the one negative conditioning row ``[1, ...]`` shared by all views, or ``None``.
    :ivar weights: N floats summing to 1.
    :ivar cameras: one :class:`Camera` (or None where unknown) per view.
    """

    cond: torch.Tensor
    neg: torch.Tensor | None
    weights: tuple[float, ...]
    cameras: tuple[Camera | None, ...] = ()
    weight_tensor: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_tensor", torch.tensor(self.weights, dtype=torch.float64))
        if not self.cameras:
            object.__setattr__(self, "cameras", (None,) * self.count)

    @property
    def count(self) -> int:
        return int(self.cond.shape[0])


def normalise_weights(weights: Sequence[float] | torch.Tensor | None, count: int | None = None) -> tuple[float, ...] | None:
    """Check user weights and scale them to sum to 1.

    >>> normalise_weights([2, 1, 1])
    (0.5, 0.25, 0.25)
    """
    if weights is None:
        return None
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().flatten().tolist()
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError) as exc:
        raise ViewError(f"weights must be a sequence of numbers, one per view; got weights={weights!r}") from exc
    if count is not None and len(values) != count:
        raise ViewError(
            f"weights has {len(values)} entries but the conditioning holds {count} views; give one weight per view"
        )
    if not values:
        raise ViewError("weights is empty; give one weight per view")
    bad = [w for w in values if not math.isfinite(w) or w < 0]
    if bad:
        raise ViewError(f"weights must be finite and non-negative; got weights={values!r}")
    total = sum(values)
    if total <= 0:
        raise ViewError(f"weights are all zero ({values!r}); at least one view needs a positive weight")
    return tuple(w / total for w in values)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__}"


def stack_views(cond: Any) -> torch.Tensor:
    """Accept ``[N, ...]`` or a list of per-view tensors ``[1, ...]`` / ``[...]``; return ``[N, ...]``."""
    if isinstance(cond, torch.Tensor):
        if cond.ndim == 0:
            raise ViewError("cond is a scalar; expected the views' conditioning stacked on dim 0, e.g. [N, 1029, 1024]")
        if cond.shape[0] == 0:
            raise ViewError("cond holds no views (its dim 0 is 0); give at least one view")
        return cond
    if isinstance(cond, (list, tuple)):
        if not cond:
            raise ViewError("no views: cond is an empty list; give at least one view's conditioning")
        rows = []
        for i, c in enumerate(cond):
            if not isinstance(c, torch.Tensor):
                raise ViewError(f"view {i} of cond is {_describe(c)}; expected a tensor")
            rows.append(c if c.ndim and c.shape[0] == 1 else c.unsqueeze(0))
        shapes = {tuple(r.shape[1:]) for r in rows}
        if len(shapes) > 1:
            listed = ", ".join(f"view {i}: {tuple(r.shape[1:])}" for i, r in enumerate(rows))
            raise ViewError(
                f"the views' conditioning shapes differ ({listed}); encode every view at the same resolution"
            )
        return torch.cat(rows)
    raise ViewError(
        f"cond is {_describe(cond)}; expected a tensor with the views stacked on dim 0 "
        "(as pipeline.get_cond([img1, ..., imgN], res) returns) or a list of per-view tensors"
    )


def prepare_views(
    cond: Any, neg_cond: Any = None, weights: Sequence[float] | None = None, cameras: Sequence[Any] | None = None
) -> Views:
    """Validate the conditioning a patched sampler receives.

    The negative conditioning may have batch 1 or N (TRELLIS.2's ``get_cond`` returns
    ``zeros_like(cond)``, one row per view); N rows must be identical, since one negative
    pass serves all views.
    """
    stacked = stack_views(cond)
    n = int(stacked.shape[0])
    neg = None
    if neg_cond is not None:
        if not isinstance(neg_cond, torch.Tensor):
            raise ViewError(f"neg_cond is {_describe(neg_cond)}; expected a tensor shaped like one view of cond")
        if tuple(neg_cond.shape[1:]) != tuple(stacked.shape[1:]):
            raise ViewError(
                f"neg_cond has shape {tuple(neg_cond.shape)} but each view of cond has shape "
                f"{tuple(stacked.shape[1:])}; the negative must match one view (e.g. torch.zeros_like(cond[:1]))"
            )
        if neg_cond.shape[0] == n or neg_cond.shape[0] == 1:
            if neg_cond.shape[0] > 1 and not bool((neg_cond == neg_cond[:1]).all()):
                raise ViewError(
                    f"neg_cond holds {n} different rows; trellis-mv shares one negative pass across views, "
                    "so pass a single row (neg_cond[:1]) or identical rows"
                )
            neg = neg_cond[:1]
        else:
            raise ViewError(
                f"neg_cond has batch {neg_cond.shape[0]}, which matches neither 1 nor the {n} views of cond"
            )
    if stacked.is_floating_point() and not bool(torch.isfinite(stacked).all()):
        bad = [i for i in range(n) if not bool(torch.isfinite(stacked[i]).all())]
        raise ViewError(f"the conditioning of view(s) {bad} holds NaN or Inf; check those images or their encoder")
    normed = normalise_weights(weights, n) if weights is not None else tuple(1.0 / n for _ in range(n))
    return Views(cond=stacked, neg=neg, weights=normed, cameras=normalise_cameras(cameras, n) or ())
