"""``python -m lvmass.synth``."""

import sys

from lvmass.synth.cli import main

sys.exit(main())
