"""Test-wide settings: quiet TensorFlow, no cloud metadata probes, a non-interactive matplotlib."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
