"""Aggregators that fuse the views by their consistency.

* :class:`~trellis_mv_consistency.concat.Concat` (``concat``): the views' image tokens in one
  conditioning sequence, as TRELLIS.2's multi-image trainer and Hunyuan3D-2mv feed them;
* :class:`~trellis_mv_consistency.consensus.Consensus` (``consensus``): per latent element,
  views whose x0 prediction disagrees with the others count less.

Each module is its own ``trellis_mv`` entry point.
"""

from .concat import Concat
from .consensus import Consensus

__all__ = ["Concat", "Consensus"]
