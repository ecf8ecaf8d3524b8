"""``python -m tiered.cli``: the same as the ``tiered`` command."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
