"""``python -m trellis_mv.eval`` (and ``torchrun ... -m trellis_mv.eval``): the ``trellis-mv eval`` command."""

import sys

from trellis_mv.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
