"""Adapters of the real pipelines: :mod:`.trellis2` (TRELLIS.2) and :mod:`.trellis` (TRELLIS v1).

Both import their pipeline lazily, so ``import trellis_mv.integrations.trellis2`` works
without TRELLIS.2 installed; loading a pipeline then says how to install it.
"""

__all__ = ["trellis", "trellis2"]
