"""``python -m ddm.cli`` is the ``ddm`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
