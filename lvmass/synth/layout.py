"""The generator's own names in a synthetic cohort folder: the zips folder and the phenotype table.

The truth entries (``truth.csv``, ``truth.json``, ``truth_labels/``) and their columns and keys are a
contract with the analysis, defined in :mod:`lvmass.core.truth`; :data:`COHORT_ENTRIES` lists both, so
that ``cohort.py`` knows every entry a cohort of its own may hold.

Importing this module is cheap (no numpy, pydicom or scipy).
"""

from __future__ import annotations

from typing import Final

from lvmass.core.truth import TRUTH_CSV, TRUTH_JSON, TRUTH_LABELS_DIRNAME

ZIPS_DIRNAME: Final = "zips"
PHENOTYPES_CSV: Final = "phenotypes.csv"
COHORT_ENTRIES: Final = (ZIPS_DIRNAME, TRUTH_LABELS_DIRNAME, PHENOTYPES_CSV, TRUTH_CSV, TRUTH_JSON)
