"""Checks of a run's numbers and sampler parameters, in both guidance dialects, before any model work."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from ._errors import ParameterError

__all__ = ["DIALECTS", "SAMPLER_PARAMS", "check_int", "check_sampler_params", "check_seed"]

#: The sampler parameters each guidance dialect takes: TRELLIS.2's samplers and TRELLIS v1's.
DIALECTS: dict[str, tuple[str, ...]] = {
    "trellis2": ("steps", "guidance_strength", "guidance_rescale", "rescale_t", "guidance_interval"),
    "trellis": ("steps", "cfg_strength", "cfg_interval", "rescale_t"),
}
#: Every sampler parameter of either dialect (the command lines take them all; the adapter's dialect checks them).
SAMPLER_PARAMS: tuple[str, ...] = tuple(dict.fromkeys(name for names in DIALECTS.values() for name in names))
_HINTS = {
    "trellis2": {
        "cfg_strength": "that is TRELLIS v1's name; TRELLIS.2 uses guidance_strength g = cfg_strength + 1",
        "cfg_interval": "that is TRELLIS v1's name; TRELLIS.2 uses guidance_interval",
    },
    "trellis": {
        "guidance_strength": "that is TRELLIS.2's name; TRELLIS v1 uses cfg_strength s = guidance_strength - 1",
        "guidance_interval": "that is TRELLIS.2's name; TRELLIS v1 uses cfg_interval",
        "guidance_rescale": "TRELLIS v1's samplers have no guidance rescale",
    },
}
_SEED_MAX = 2**63 - 1


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An integer in range, or a :class:`ParameterError` that names it.

    >>> check_int("steps", 12, 1)
    12
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum or (
        maximum is not None and int(value) > maximum
    ):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ParameterError(f"{name} must be an integer >= {minimum}{upper}; got {name}={value!r}")
    return int(value)


def check_seed(seed: Any) -> int:
    """A seed in ``[0, 2**63 - 1]``."""
    return check_int("seed", seed, 0, _SEED_MAX)


def check_sampler_params(stage: str, params: Any, dialect: str) -> dict[str, Any]:
    """Names and ranges of one stage's sampler parameters; unknown names are refused with the known ones.

    >>> check_sampler_params("shape", {"steps": 8, "guidance_interval": [0.6, 1.0]}, "trellis2")
    {'steps': 8, 'guidance_interval': (0.6, 1.0)}
    """
    if not isinstance(params, Mapping):
        raise ParameterError(f"the {stage} sampler parameters must be a dict of name: value; got {params!r}")
    allowed = DIALECTS[dialect]
    out: dict[str, Any] = {}
    for key, value in params.items():
        where = f"{stage} sampler parameter {key}"
        if key not in allowed:
            hint = f" ({_HINTS[dialect][key]})" if key in _HINTS[dialect] else ""
            raise ParameterError(f"unknown {stage} sampler parameter {key!r}{hint}; expected one of {', '.join(allowed)}")
        if key == "steps":
            value = check_int(where, value, 1)
        elif key == "guidance_rescale":
            if not _is_number(value) or not 0 <= float(value) <= 1:
                raise ParameterError(f"{where} must be in [0, 1]; got {key}={value!r}")
        elif key == "rescale_t":
            if not _is_number(value) or float(value) <= 0:
                raise ParameterError(f"{where} must be a finite number > 0; got {key}={value!r}")
        elif key in ("guidance_strength", "cfg_strength"):
            if not _is_number(value) or float(value) < 0:
                raise ParameterError(f"{where} must be a finite number >= 0; got {key}={value!r}")
        elif key in ("guidance_interval", "cfg_interval"):
            ok = (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                  and 0 <= float(value[0]) <= float(value[1]) <= 1)
            if not ok:
                raise ParameterError(f"{where} must be a pair (lo, hi) with 0 <= lo <= hi <= 1; got {key}={value!r}")
            value = (float(value[0]), float(value[1]))
        out[key] = value
    return out
