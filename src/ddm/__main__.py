"""``python -m ddm`` is the ``ddm`` command (and what ``torchrun -m ddm`` starts per rank)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
