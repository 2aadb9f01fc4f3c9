"""Synthetic 3D shapes with known ground truth, deterministic by seed.

A shape is a body (box, ellipsoid or cylinder, with width, height and depth drawn
independently and its centre off the middle) whose four sides are painted each in its
own colour (the whole side or a patch on it; top and bottom share a fifth), and up to
five smaller parts, one per side (front, right, back, left, top), each present or not, of
its own kind, size, position and colour. So every side of an object looks different: the
front view cannot tell the colour of the back, a part behind the body is hidden from the
front, and the depth of a part on the side shows only from above or from that side.
Everything lives on a ``16^3`` voxel grid inside the ball of radius 1 centred on the
grid, so every view at any angle sees the whole shape.

Coordinates: voxel ``(i, j, k)`` has its centre at ``((i, j, k) + 0.5) / 8 - 1`` in
``[-1, 1]^3``; ``+y`` is up and the *front* camera looks from ``+z``.

Each component draws from its own random stream (``numpy`` seeded with ``[seed, k]``):
``k = 0`` the body and its paint, ``k = 1..5`` the part on each side. Replacing the stream of
some components and keeping the others (``make_shape(seed, redraw=...)``) gives a shape
that agrees with the original wherever those components do not show, and
``make_shape(seed, repaint=...)`` paints some sides of the body afresh: this is how
:func:`trellis_mv.eval.posterior_draws` samples what the given views cannot see.

>>> a, b = make_shape(7), make_shape(7)
>>> bool((a.occupancy == b.occupancy).all() and (a.colors == b.colors).all())
True
>>> a.occupancy.shape, a.colors.shape, a.labels.shape
((16, 16, 16), (16, 16, 16, 3), (16, 16, 16))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["COMPONENTS", "GRID", "HELD_OUT_SEED", "PALETTE", "SIDES", "Shape", "make_shape", "make_shapes", "palette_index"]

GRID = 16
#: Seeds at or above this value are never used for training; benchmarks and tests use them.
HELD_OUT_SEED = 1_000_000_000

#: Albedo colours (RGB in [0, 1]); saturated and distinct under shading.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.15, 0.15),  # red
    (0.15, 0.75, 0.20),  # green
    (0.20, 0.35, 0.95),  # blue
    (0.95, 0.85, 0.15),  # yellow
    (0.15, 0.85, 0.85),  # cyan
    (0.85, 0.25, 0.85),  # magenta
    (0.95, 0.55, 0.10),  # orange
    (0.92, 0.92, 0.92),  # white
)
_PAL = np.array(PALETTE, dtype=np.float32)
_NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white"]
#: Component ``k`` of a shape (``Shape.labels`` holds ``k`` per voxel, ``-1`` where empty).
COMPONENTS = ("body", "front part", "right part", "back part", "left part", "top part")
# (axis, sign) of each part's side, in the order of COMPONENTS[1:]; the chance it has a part
_PART_SIDES = ((2, 1), (0, 1), (2, -1), (0, -1), (1, 1))
#: The body's four painted sides (``Shape.sides`` holds the index; ``make_shape(repaint=...)`` takes it).
SIDES = ("front", "right", "back", "left")
_PART_CHANCE = (0.45, 0.45, 0.55, 0.45, 0.35)

_CENTRES = (np.arange(GRID, dtype=np.float32) + 0.5) / (GRID / 2) - 1
_X, _Y, _Z = np.meshgrid(_CENTRES, _CENTRES, _CENTRES, indexing="ij")
_P = np.stack([_X, _Y, _Z], -1)
_INSIDE_BALL = (_P**2).sum(-1) <= 0.97**2


@dataclass(frozen=True)
class Shape:
    """A voxel shape with per-voxel colour.

    :param occupancy: ``bool [16, 16, 16]``, indexed ``[x, y, z]``.
    :param colors: ``float32 [16, 16, 16, 3]`` albedo in ``[0, 1]`` (rows of :data:`PALETTE`); zero where empty.
    :param seed: the seed that made it.
    :param parts: a short description of each component, body first.
    :param labels: ``int8 [16, 16, 16]``: the component (index into :data:`COMPONENTS`) of each voxel, ``-1`` where empty.
    :param sides: ``int8 [16, 16, 16]``: the side of the body (index into :data:`SIDES`) whose paint
        (the whole side or a patch) colours each body voxel; ``-1`` where the body shows its top and
        bottom's colour, and off the body.
    """

    occupancy: np.ndarray
    colors: np.ndarray
    seed: int
    parts: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    sides: np.ndarray | None = None

    @property
    def num_voxels(self) -> int:
        return int(self.occupancy.sum())


def palette_index(colors: np.ndarray) -> np.ndarray:
    """Index of the nearest :data:`PALETTE` colour of each RGB row (``[..., 3]`` to ``[...]``).

    >>> palette_index(np.array([[0.8, 0.2, 0.2], [0.9, 0.9, 0.95]])).tolist()
    [0, 7]
    """
    c = np.asarray(colors, dtype=np.float32)
    return ((c[..., None, :] - _PAL) ** 2).sum(-1).argmin(-1)


def _primitive(kind: str, centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    d = (_P - centre) / half
    if kind == "box":
        return (np.abs(d) <= 1).all(-1)
    if kind == "ellipsoid":
        return (d**2).sum(-1) <= 1
    # cylinder along y, elliptical section
    return (d[..., 0] ** 2 + d[..., 2] ** 2 <= 1) & (np.abs(d[..., 1]) <= 1)


def _side_paint(rng: np.random.Generator) -> tuple[bool, list[tuple[float, float]]]:
    """Whether a side is painted whole, else the patch's (offset, half width) along each other axis."""
    full = bool(rng.random() < 0.6)
    return full, [] if full else [(rng.uniform(-0.3, 0.3), rng.uniform(0.35, 0.6)) for _ in range(2)]


def _body(rng: np.random.Generator, repaint: Mapping[int, np.random.Generator]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], list[str]]:
    kind = str(rng.choice(["box", "ellipsoid", "cylinder"]))
    half = np.array([rng.uniform(0.3, 0.62), rng.uniform(0.22, 0.5), rng.uniform(0.3, 0.62)], dtype=np.float32)
    centre = np.array([rng.uniform(-0.12, 0.12), rng.uniform(-0.25, 0.05), rng.uniform(-0.12, 0.12)], dtype=np.float32)
    body = _primitive(kind, centre, half)
    colours = [int(c) for c in rng.permutation(len(_PAL))[:5]]  # top/bottom, then front, right, back, left
    paints = [_side_paint(rng) for _ in range(4)]
    for n in sorted(repaint):  # a colour no other side has, and a paint of its own
        taken = {colours[0]} | {colours[1 + m] for m in range(4) if m not in repaint or m < n}
        colours[1 + n] = int(repaint[n].choice([c for c in range(len(_PAL)) if c not in taken]))
        paints[n] = _side_paint(repaint[n])
    col = np.zeros((GRID,) * 3 + (3,), dtype=np.float32)
    sides = np.full((GRID,) * 3, -1, dtype=np.int8)
    d = (_P - centre) / half
    region = np.abs(d).argmax(-1)  # the side each body voxel is nearest to, in units of the half extents
    col[body] = _PAL[colours[0]]
    desc = [f"{kind} body {_NAMES[colours[0]]}"]
    for n, ((axis, sign), (full, patch)) in enumerate(zip(_PART_SIDES[:4], paints)):
        paint = body & (region == axis) & (sign * d[..., axis] > 0)
        for other, (offset, width) in zip([o for o in (0, 1, 2) if o != axis], patch):  # a patch in the middle
            paint &= np.abs(d[..., other] - offset) < width
        col[paint] = _PAL[colours[1 + n]]
        sides[paint] = n
        desc.append(f"{'side' if full else 'patch'} {COMPONENTS[1 + n].split()[0]} {_NAMES[colours[1 + n]]}")
    side_colours = [_PAL[colours[i]] for i in (1, 2, 3, 4, 0)]  # in the order of _PART_SIDES
    return body, col, sides, centre, half, side_colours, desc


def _part(
    rng: np.random.Generator, side: int, body: np.ndarray, centre: np.ndarray, half: np.ndarray, side_colour: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray, str]:
    axis, sign = _PART_SIDES[side]
    if rng.random() >= _PART_CHANCE[side]:
        return None, _PAL[0], ""
    kind = str(rng.choice(["box", "ellipsoid", "cylinder"]))
    phalf = rng.uniform(0.12, 0.3, size=3).astype(np.float32)
    pc = centre.copy()
    for other in range(3):
        if other != axis:
            pc[other] += rng.uniform(-0.7, 0.7) * half[other]
    pc[axis] = centre[axis] + sign * (half[axis] + 0.5 * phalf[axis])
    choices = [i for i in range(len(_PAL)) if not np.allclose(_PAL[i], side_colour)]
    colour = int(rng.choice(choices))
    part = _primitive(kind, pc, phalf)
    for _ in range(12):  # slide it in until it touches the body (ellipsoids and cylinders curve away)
        grown = body | np.roll(body, sign, axis)
        if (part & grown).any():
            break
        pc[axis] -= sign * 0.0625
        part = _primitive(kind, pc, phalf)
    return part, _PAL[colour], f"{kind} on {COMPONENTS[1 + side].split()[0]} {_NAMES[colour]}"


def make_shape(seed: int, redraw: Mapping[int, int] | None = None, repaint: Mapping[int, int] | None = None) -> Shape:
    """The synthetic shape of ``seed`` (same seed, same shape, on every platform).

    :param seed: any non-negative integer; seeds ``>= HELD_OUT_SEED`` are held out of training.
    :param redraw: ``{component: stream}`` replaces the random stream of those components
        (indices into :data:`COMPONENTS`) by ``[stream, component]``; the others keep the
        draws of ``seed``.
    :param repaint: ``{side: stream}`` paints those sides of the body (``0..3``: :data:`SIDES`)
        afresh from the stream ``[stream, 6 + side]``: a colour that the top and the other
        sides do not have, and a whole side or a patch, as the generator draws them; the
        body's shape and every other paint are unchanged.

    >>> s = make_shape(HELD_OUT_SEED)
    >>> 60 < s.num_voxels < 2500, s.parts[0].split()[0] in {"box", "ellipsoid", "cylinder"}
    (True, True)
    >>> t = make_shape(HELD_OUT_SEED, redraw={3: 5})  # another back part (or none), all else equal
    >>> bool((t.labels == 0).sum() >= (s.labels == 0).sum() - 40)
    True
    >>> u = make_shape(HELD_OUT_SEED, repaint={2: 5})  # the back painted afresh, all else equal
    >>> bool((u.occupancy == s.occupancy).all() and (u.colors[s.sides == 0] == s.colors[s.sides == 0]).all())
    True
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got seed={seed!r}")
    redraw = dict(redraw or {})
    for k in redraw:
        if not 0 <= k < len(COMPONENTS):
            raise ValueError(f"redraw names component {k!r}; components are 0..{len(COMPONENTS) - 1} ({', '.join(COMPONENTS)})")
    repaint = dict(repaint or {})
    for k in repaint:
        if not 0 <= k < len(SIDES):
            raise ValueError(f"repaint names side {k!r}; sides are 0..{len(SIDES) - 1} ({', '.join(SIDES)})")
    stream = lambda k: np.random.default_rng([redraw.get(k, seed), k])
    body, col, sides, centre, half, side_colours, desc = _body(
        stream(0), {n: np.random.default_rng([r, 6 + n]) for n, r in repaint.items()})
    occ = body.copy()
    labels = np.where(body, 0, -1).astype(np.int8)
    for side in range(5):  # a part never takes the colour of the side it sits on
        part, colour, text = _part(stream(1 + side), side, body, centre, half, side_colours[side])
        if part is None:
            continue
        new = part & ~occ
        occ |= part
        col[new] = colour
        labels[new] = 1 + side
        desc.append(text)
    occ &= _INSIDE_BALL
    col[~occ] = 0
    labels[~occ] = -1
    sides[labels != 0] = -1
    return Shape(occupancy=occ, colors=col, seed=seed, parts=desc, labels=labels, sides=sides)


def make_shapes(seeds: range | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked occupancy ``bool [S, 16, 16, 16]`` and colours ``float32 [S, 16, 16, 16, 3]``.

    >>> occ, col = make_shapes(range(3))
    >>> occ.shape, col.shape
    ((3, 16, 16, 16), (3, 16, 16, 16, 3))
    """
    shapes = [make_shape(int(s)) for s in seeds]
    return np.stack([s.occupancy for s in shapes]), np.stack([s.colors for s in shapes])
