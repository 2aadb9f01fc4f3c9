"""MultiDiffusion over views (Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths
for Controlled Image Generation"), as in TRELLIS v1's multi-image mode.

At every step: the conditional prediction of every view, in one batched forward together
with the negative branch when guidance needs it; their weighted mean (``weights`` of
:func:`trellis_mv.patch_sampler`, uniform by default); then the sampler's guidance
applied once to that mean. Cost per step: N conditional rows plus one negative row
(none where guidance strength is 1), against N + N of a loop that guides each view.
"""

from __future__ import annotations

from typing import Any

from .._spec import hookimpl
from .._step import Step

__all__ = ["MultiDiffusion"]


class MultiDiffusion:
    """Weighted mean of the per-view predictions, guided once with one shared negative."""

    name = "multidiffusion"
    fuses = True
    order_free = True
    weighted = True

    def __call__(self, step: Step) -> Any:
        return step.guide(step.fuse(step.predict()))

    def __repr__(self) -> str:
        return "MultiDiffusion()"


@hookimpl
def register_aggregators() -> list[type]:
    return [MultiDiffusion]
