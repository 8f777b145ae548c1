"""``python -m analysis``: the same as ``lvmass analyze``."""

import sys

from analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
