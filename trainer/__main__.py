"""``python -m trainer``: the same as ``python -m trainer.task`` and ``lvmass train``."""

import sys

from trainer.task import main

if __name__ == "__main__":
    sys.exit(main())
