"""``python -m trellis_mv``: the ``trellis-mv`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
