"""Synthetic 3D shapes with known ground truth, deterministic by seed.

A shape is a coloured body (box, sphere or cylinder) with one to three smaller parts
attached to some of its sides and, sometimes, a painted patch on one face. A part on the
back is hidden from the front, so a single view is genuinely ambiguous and more views
carry more information. Everything lives on a ``16^3`` voxel grid inside the ball of
radius 1 centred on the grid, so every view at any angle sees the whole shape.

Coordinates: voxel ``(i, j, k)`` has its centre at ``((i, j, k) + 0.5) / 8 - 1`` in
``[-1, 1]^3``; ``+y`` is up and the *front* camera looks from ``+z``.

>>> a, b = make_shape(7), make_shape(7)
>>> bool((a.occupancy == b.occupancy).all() and (a.colors == b.colors).all())
True
>>> a.occupancy.shape, a.colors.shape
((16, 16, 16), (16, 16, 16, 3))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["GRID", "HELD_OUT_SEED", "PALETTE", "Shape", "make_shape", "make_shapes"]

GRID = 16
#: Seeds at or above this value are never used for training; benchmarks and tests use them.
HELD_OUT_SEED = 1_000_000_000

#: Albedo colours of the parts (RGB in [0, 1]); saturated and distinct under shading.
PALETTE = np.array(
    [
        [0.90, 0.15, 0.15],  # red
        [0.15, 0.75, 0.20],  # green
        [0.20, 0.35, 0.95],  # blue
        [0.95, 0.85, 0.15],  # yellow
        [0.15, 0.85, 0.85],  # cyan
        [0.85, 0.25, 0.85],  # magenta
        [0.95, 0.55, 0.10],  # orange
        [0.92, 0.92, 0.92],  # white
    ],
    dtype=np.float32,
)

_CENTRES = (np.arange(GRID, dtype=np.float32) + 0.5) / (GRID / 2) - 1
_X, _Y, _Z = np.meshgrid(_CENTRES, _CENTRES, _CENTRES, indexing="ij")
_P = np.stack([_X, _Y, _Z], -1)
_INSIDE_BALL = (_P**2).sum(-1) <= 0.97**2
# sides a part can be attached to: (axis, sign); no part below the body (it would float under it)
_SIDES = [(0, 1), (0, -1), (2, 1), (2, -1), (1, 1)]
_SIDE_NAMES = {(0, 1): "right", (0, -1): "left", (2, 1): "front", (2, -1): "back", (1, 1): "top"}


@dataclass(frozen=True)
class Shape:
    """A voxel shape with per-voxel colour.

    :param occupancy: ``bool [16, 16, 16]``, indexed ``[x, y, z]``.
    :param colors: ``float32 [16, 16, 16, 3]`` albedo in ``[0, 1]``; zero where empty.
    :param seed: the seed that made it.
    :param parts: a short description of each primitive, body first.
    """

    occupancy: np.ndarray
    colors: np.ndarray
    seed: int
    parts: list[str] = field(default_factory=list)

    @property
    def num_voxels(self) -> int:
        return int(self.occupancy.sum())


def _primitive(kind: str, centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    d = (_P - centre) / half
    if kind == "box":
        return (np.abs(d) <= 1).all(-1)
    if kind == "sphere":
        return (d**2).sum(-1) <= 1
    # cylinder along y
    return (d[..., 0] ** 2 + d[..., 2] ** 2 <= 1) & (np.abs(d[..., 1]) <= 1)


def make_shape(seed: int) -> Shape:
    """The synthetic shape of ``seed`` (same seed, same shape, on every platform).

    :param seed: any non-negative integer; seeds ``>= HELD_OUT_SEED`` are held out of training.

    >>> s = make_shape(HELD_OUT_SEED)
    >>> 60 < s.num_voxels < 2000, s.parts[0].split()[0] in {"box", "sphere", "cylinder"}
    (True, True)
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got seed={seed!r}")
    rng = np.random.default_rng(seed)
    colours = rng.permutation(len(PALETTE))
    occ = np.zeros((GRID,) * 3, dtype=bool)
    col = np.zeros((GRID,) * 3 + (3,), dtype=np.float32)

    kind = str(rng.choice(["box", "sphere", "cylinder"]))
    half = rng.uniform(0.3, 0.55, size=3).astype(np.float32)
    if kind == "sphere":
        half[:] = half.mean()
    centre = np.array([0.0, rng.uniform(-0.25, 0.0), 0.0], dtype=np.float32)
    body = _primitive(kind, centre, half)
    occ |= body
    col[body] = PALETTE[colours[0]]
    parts = [f"{kind} body {_name(colours[0])}"]

    n_parts = int(rng.integers(1, 4))
    sides = rng.choice(len(_SIDES), size=n_parts, replace=False)
    for n, s in enumerate(sides):
        axis, sign = _SIDES[int(s)]
        pkind = str(rng.choice(["box", "sphere"]))
        phalf = rng.uniform(0.12, 0.3, size=3).astype(np.float32)
        if pkind == "sphere":
            phalf[:] = phalf.mean()
        pc = centre.copy()
        for other in range(3):
            if other != axis:
                pc[other] += rng.uniform(-0.6, 0.6) * half[other]
        pc[axis] = centre[axis] + sign * (half[axis] + 0.6 * phalf[axis])
        part = _primitive(pkind, pc, phalf)
        occ |= part
        col[part] = PALETTE[colours[1 + n]]
        parts.append(f"{pkind} on {_SIDE_NAMES[(axis, sign)]} {_name(colours[1 + n])}")

    if rng.random() < 0.5:  # a painted patch on one face of the body: visible from that side only
        axis, sign = _SIDES[int(rng.integers(0, 4))]
        k = 4
        patch = body & (sign * (_P[..., axis] - centre[axis]) > half[axis] - 0.3)
        for other in range(3):
            if other != axis:
                patch &= np.abs(_P[..., other] - centre[other]) < 0.5 * half[other] + 0.05
        col[patch & ~_overwritten(col, colours, k)] = PALETTE[colours[k]]
        parts.append(f"patch on {_SIDE_NAMES[(axis, sign)]} {_name(colours[k])}")

    occ &= _INSIDE_BALL
    col[~occ] = 0
    return Shape(occupancy=occ, colors=col, seed=seed, parts=parts)


def _overwritten(col: np.ndarray, colours: np.ndarray, k: int) -> np.ndarray:
    # voxels that already carry a part colour (not the body's): a patch never paints over parts
    body = PALETTE[colours[0]]
    return (np.abs(col - body).sum(-1) > 1e-6) & (col.sum(-1) > 0)


_NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "white"]


def _name(i: int) -> str:
    return _NAMES[int(i)]


def make_shapes(seeds: range | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked occupancy ``bool [S, 16, 16, 16]`` and colours ``float32 [S, 16, 16, 16, 3]``.

    >>> occ, col = make_shapes(range(3))
    >>> occ.shape, col.shape
    ((3, 16, 16, 16), (3, 16, 16, 16, 3))
    """
    shapes = [make_shape(int(s)) for s in seeds]
    return np.stack([s.occupancy for s in shapes]), np.stack([s.colors for s in shapes])
