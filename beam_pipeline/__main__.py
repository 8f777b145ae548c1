"""``python -m beam_pipeline``: the pipeline's command (same as ``lvmass run``)."""

import sys

from beam_pipeline.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
