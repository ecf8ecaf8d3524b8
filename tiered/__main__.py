"""``python -m tiered``: the same as the ``tiered`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
