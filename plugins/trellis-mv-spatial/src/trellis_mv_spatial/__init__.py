"""Aggregators that weight the views per latent element, their diagnostics, and per-object selection.

* :class:`~trellis_mv_spatial.visibility.Visibility` (``visibility``): from where each camera
  looks (needs cameras), with exact occlusion on voxels;
* :class:`~trellis_mv_spatial.attention.Attention` (``attention``): from how sharply each
  view's cross-attention focuses (MV-SAM3D style);
* :class:`~trellis_mv_spatial.robust.Robust` (``robust``): median, trimmed mean or Huber
  across views, so one wrong photo does not drag the result;
* :func:`trellis_mv.diagnostics.save_diagnostics` (in the core, for any per-element aggregator): which view drove
  each voxel and how much the views disagreed;
* :func:`auto_generate`: runs candidate aggregators and keeps the one whose result agrees
  best with the given views.

Each aggregator module is its own ``trellis_mv`` entry point.
"""

from .attention import Attention, find_cross_attention
from .auto import AutoResult, auto_generate, render_agreement
from .robust import Robust, robust_weights
from .visibility import Visibility, directional_gain, voxel_visibility

__all__ = [
    "Attention",
    "AutoResult",
    "Robust",
    "Visibility",
    "auto_generate",
    "directional_gain",
    "find_cross_attention",
    "render_agreement",
    "robust_weights",
    "voxel_visibility",
]
