"""Deprecated name of :mod:`trellis_mv.run` (the one run path); importing from here still works and warns."""

import warnings

from .run import *  # noqa: F403
from .run import __all__  # noqa: F401

warnings.warn("trellis_mv.pipeline is now trellis_mv.run; import from there (or from trellis_mv)",
              DeprecationWarning, stacklevel=2)
