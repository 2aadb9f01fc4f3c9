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
    "normalise_sample_weights",
    "normalise_weights",
    "pad_views",
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
    """The views of one sampler call, as the sampler's model sees them.

    Shared views (every sample of the batch conditioned on the same N views) or per-sample
    views (sample ``b`` on its own views ``cond[b]``; a sample with fewer than N views is padded
    at the end with views of weight 0, which no aggregator evaluates into its result).

    :ivar cond: the views' conditioning stacked on dim 0, ``[N, ...]``, or per sample ``[B, N, ...]``.
    :ivar neg: the negative conditioning, one row shared by all views: ``[1, ...]``, or per
        sample ``[B, ...]``; ``None`` without a negative.
    :ivar weights: N floats summing to 1, or per sample a tuple of N floats summing to 1.
    :ivar cameras: one :class:`Camera` (or None where unknown) per view, or per sample a tuple of N.
    :ivar per_sample: whether each sample has its own views.
    """

    cond: torch.Tensor
    neg: torch.Tensor | None
    weights: tuple[Any, ...]
    cameras: tuple[Any, ...] = ()
    per_sample: bool = False
    weight_tensor: torch.Tensor = field(init=False, repr=False, compare=False)
    counts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    cache: dict[Any, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_tensor", torch.tensor(self.weights, dtype=torch.float64))
        if not self.cameras:
            none = (None,) * self.count
            object.__setattr__(self, "cameras", tuple(none for _ in self.weights) if self.per_sample else none)
        counts = tuple(sum(1 for w in row if w > 0) for row in self.weights) if self.per_sample else ()
        object.__setattr__(self, "counts", counts)

    @property
    def count(self) -> int:
        """N: the views per sample (per-sample views: the most any sample has, padding included)."""
        return int(self.cond.shape[1 if self.per_sample else 0])

    def weights_on(self, device: torch.device) -> torch.Tensor:
        """``weight_tensor`` on ``device``, copied there once per view set (no copy in the per-step path)."""
        out = self.cache.get(device)
        if out is None:
            out = self.cache[device] = self.weight_tensor.to(device)
        return out

    def column(self, view: int, batch: int) -> torch.Tensor:
        """View ``view`` of every sample, ``[batch, ...]`` (shared views: one row expanded, no copy)."""
        if self.per_sample:
            return self.cond[:, view]
        row = self.cond[view : view + 1]
        return row.expand(batch, *row.shape[1:])

    def neg_rows(self, batch: int) -> torch.Tensor | None:
        """The negative of every sample, ``[batch, ...]``, or None."""
        if self.neg is None or self.neg.shape[0] == batch:
            return self.neg
        return self.neg.expand(batch, *self.neg.shape[1:])


def pad_views(
    view_sets: Sequence[Any], weights: Sequence[Sequence[float]] | None = None
) -> tuple[torch.Tensor, list[list[float]]]:
    """Per-sample views for :func:`~trellis_mv.patch_sampler` (``per_sample=True``): ``cond [B, N, ...]`` and weights.

    Each entry of ``view_sets`` holds one sample's views stacked on dim 0 (``[N_b, ...]``, as
    ``pipeline.get_cond`` returns them, or a list of per-view tensors); samples with fewer
    than ``N = max(N_b)`` views are padded at the end with zero conditioning of weight 0.

    :param weights: per sample, one non-negative weight per view (uniform when omitted).
    :returns: ``(cond, weights)``, ``cond`` ``[B, N, ...]`` and ``weights`` ``B`` lists of ``N`` floats.

    >>> cond, weights = pad_views([torch.ones(3, 2, 4), torch.ones(1, 2, 4)], weights=[[2, 1, 1], [1]])
    >>> tuple(cond.shape), weights
    ((2, 3, 2, 4), [[2.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    """
    if isinstance(view_sets, torch.Tensor) or not isinstance(view_sets, Sequence) or not view_sets:
        raise ViewError(
            f"pad_views needs a non-empty list with one sample's views per entry; got {_describe(view_sets)}"
        )
    stacked = [stack_views(v) for v in view_sets]
    shapes = {tuple(s.shape[1:]) for s in stacked}
    if len(shapes) > 1:
        listed = ", ".join(f"sample {b}: {tuple(s.shape[1:])}" for b, s in enumerate(stacked))
        raise ViewError(f"the samples' views have different shapes ({listed}); encode every view at the same resolution")
    if weights is not None and len(weights) != len(stacked):
        raise ViewError(f"weights has {len(weights)} entries but there are {len(stacked)} samples; give one list per sample")
    n = max(int(s.shape[0]) for s in stacked)
    cond = stacked[0].new_zeros(len(stacked), n, *stacked[0].shape[1:])
    rows: list[list[float]] = []
    for b, s in enumerate(stacked):
        k = int(s.shape[0])
        cond[b, :k] = s
        given = [1.0] * k if weights is None else [float(w) for w in weights[b]]
        if len(given) != k:
            raise ViewError(f"weights of sample {b} has {len(given)} entries but the sample has {k} views")
        rows.append(given + [0.0] * (n - k))
    return cond, rows


def normalise_sample_weights(
    weights: Sequence[Sequence[float]] | torch.Tensor | None, samples: int, count: int
) -> tuple[tuple[float, ...], ...]:
    """Per-sample weights ``[B, N]``, each row normalised; a sample's views of positive weight come first.

    Uniform over all N views for every sample when ``weights`` is None.

    >>> normalise_sample_weights([[2, 1, 1], [1, 0, 0]], 2, 3)
    ((0.5, 0.25, 0.25), (1.0, 0.0, 0.0))
    """
    if weights is None:
        return tuple(tuple(1.0 / count for _ in range(count)) for _ in range(samples))
    rows = weights.detach().tolist() if isinstance(weights, torch.Tensor) else weights
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or any(
        isinstance(r, (str, bytes)) or not isinstance(r, Sequence) for r in rows
    ):
        raise ViewError(
            f"with per_sample=True, weights must be one list of N weights per sample ([B, N], 0 for a sample's "
            f"padding views); got weights={weights!r}"
        )
    if len(rows) != samples:
        raise ViewError(f"weights has {len(rows)} rows but the conditioning holds {samples} samples; give one row per sample")
    out = []
    for b, row in enumerate(rows):
        try:
            normed = normalise_weights(row, count)
        except ViewError as exc:
            raise ViewError(f"sample {b}: {exc}") from None
        assert normed is not None
        k = sum(1 for w in normed if w > 0)
        if any(w <= 0 for w in normed[:k]):
            raise ViewError(
                f"sample {b} has weights {list(normed)}: a sample's views (positive weights) come first, its padding "
                "(weight 0) last; move its views to the front of cond[b]"
            )
        out.append(normed)
    return tuple(out)


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
    cond: Any,
    neg_cond: Any = None,
    weights: Sequence[Any] | torch.Tensor | None = None,
    cameras: Sequence[Any] | None = None,
    *,
    per_sample: bool = False,
) -> Views:
    """Validate the conditioning a patched sampler receives.

    Shared views: the negative conditioning may have batch 1 or N (TRELLIS.2's ``get_cond``
    returns ``zeros_like(cond)``, one row per view); N rows must be identical, since one
    negative pass serves all views.

    Per-sample views (``cond [B, N, ...]``): the negative is ``[1, ...]`` or ``[B, ...]`` (one
    row per sample), or ``[B or 1, N or 1, ...]`` identical over each sample's views;
    ``weights`` is ``[B, N]`` and ``cameras`` one list (of at most N) per sample.
    """
    if per_sample:
        return _prepare_per_sample(cond, neg_cond, weights, cameras)
    stacked = stack_views(cond)
    n = int(stacked.shape[0])
    neg = None
    if neg_cond is not None:
        _check_neg_shape(neg_cond, stacked.shape[1:])
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
    _check_finite(stacked, [(i,) for i in range(n)])
    normed = normalise_weights(weights, n) if weights is not None else None
    if normed is None:
        normed = tuple(1.0 / n for _ in range(n))
    return Views(cond=stacked, neg=neg, weights=normed, cameras=normalise_cameras(cameras, n) or ())


def _check_neg_shape(neg_cond: Any, view_shape: Sequence[int], lead: int = 1) -> None:
    if not isinstance(neg_cond, torch.Tensor):
        raise ViewError(f"neg_cond is {_describe(neg_cond)}; expected a tensor shaped like one view of cond")
    if neg_cond.ndim < lead or tuple(neg_cond.shape[lead:]) != tuple(view_shape):
        raise ViewError(
            f"neg_cond has shape {tuple(neg_cond.shape)} but each view of cond has shape "
            f"{tuple(view_shape)}; the negative must match one view (e.g. torch.zeros_like(cond[:1]))"
        )


def _check_finite(cond: torch.Tensor, where: list[tuple[int, ...]]) -> None:
    if cond.is_floating_point() and not bool(torch.isfinite(cond).all()):
        bad = [w if len(w) > 1 else w[0] for w in where if not bool(torch.isfinite(cond[w]).all())]
        what = "view(s)" if len(where[0]) == 1 else "(sample, view) pair(s)"
        raise ViewError(f"the conditioning of {what} {bad} holds NaN or Inf; check those images or their encoder")


def _prepare_per_sample(cond: Any, neg_cond: Any, weights: Any, cameras: Sequence[Any] | None) -> Views:
    if not isinstance(cond, torch.Tensor) or cond.ndim < 3:
        raise ViewError(
            f"with per_sample=True, cond must be a tensor [B, N, ...] holding sample b's views in cond[b] "
            f"(trellis_mv.pad_views builds it from per-sample view sets); got {_describe(cond)}"
        )
    b, n = int(cond.shape[0]), int(cond.shape[1])
    if b == 0 or n == 0:
        raise ViewError(f"cond of shape {tuple(cond.shape)} holds no samples or no views; give at least one of each")
    normed = normalise_sample_weights(weights, b, n)
    neg = None
    if neg_cond is not None:
        view_shape = cond.shape[2:]
        if isinstance(neg_cond, torch.Tensor) and neg_cond.ndim == cond.ndim:  # [B|1, N|1, ...]
            _check_neg_shape(neg_cond, view_shape, lead=2)
            if neg_cond.shape[0] not in (1, b) or neg_cond.shape[1] not in (1, n):
                raise ViewError(f"neg_cond has shape {tuple(neg_cond.shape)}; with cond {tuple(cond.shape)} its first "
                                f"two dims must be 1 or {b} (samples) and 1 or {n} (views)")
            if neg_cond.shape[1] > 1 and not bool((neg_cond == neg_cond[:, :1]).all()):
                raise ViewError("neg_cond differs between the views of a sample; trellis-mv shares one negative pass "
                                "across a sample's views, so pass one row per sample (neg_cond[:, 0])")
            neg_cond = neg_cond[:, 0]
        _check_neg_shape(neg_cond, view_shape)
        if neg_cond.shape[0] not in (1, b):
            raise ViewError(f"neg_cond has batch {neg_cond.shape[0]}, which matches neither 1 nor the {b} samples of cond")
        neg = neg_cond
    _check_finite(cond, [(i, j) for i in range(b) for j in range(n)])
    per_cams: tuple[Any, ...] = ()
    if cameras is not None:
        if isinstance(cameras, (str, bytes)) or not isinstance(cameras, Sequence) or len(cameras) != b or any(
            isinstance(c, (str, bytes)) or not isinstance(c, Sequence) for c in cameras
        ):
            raise ViewError(f"with per_sample=True, cameras must be one list per sample ({b} lists, each one camera or "
                            f"None per view); got cameras={cameras!r}")
        rows = []
        for i, cams in enumerate(cameras):
            if len(cams) > n:
                raise ViewError(f"cameras of sample {i} has {len(cams)} entries but cond holds {n} views per sample")
            parsed = normalise_cameras(list(cams)) or ()
            rows.append(tuple(parsed) + (None,) * (n - len(parsed)))
        per_cams = tuple(rows)
    return Views(cond=cond, neg=neg, weights=normed, cameras=per_cams, per_sample=True)
