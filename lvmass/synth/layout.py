"""The names of a synthetic cohort's files and of the truth.json entries readers rely on: defined once here,
imported by the generator (``cohort.py``) and by its readers (``analysis.io``, ``analysis.associations``).

Importing this module is cheap (no numpy, pydicom or scipy): readers use it without loading the generator.
"""

from __future__ import annotations

from typing import Final

ZIPS_DIRNAME: Final = "zips"
LABELS_DIRNAME: Final = "truth_labels"
PHENOTYPES_CSV: Final = "phenotypes.csv"
TRUTH_CSV: Final = "truth.csv"
TRUTH_JSON: Final = "truth.json"
COHORT_ENTRIES: Final = (ZIPS_DIRNAME, LABELS_DIRNAME, PHENOTYPES_CSV, TRUTH_CSV, TRUTH_JSON)

# truth.csv columns every reader needs
TRUTH_EID: Final = "eid"
TRUTH_LV_MASS_G: Final = "true_lv_mass_g"
TRUTH_LVMI_G_M2: Final = "true_lvmi_g_m2"

# truth.json: ``truth[COHORT_KEY][TRUE_OR_PER_SAMPLE_SD_KEY][disease]`` is the true odds ratio of the
# disease per 1 SD of true LVMI *in the written cohort* (adjusted for age and sex): what a per-SD logistic
# model fitted on that cohort's true LVMI estimates. ``truth[DISEASE_MODEL_KEY]`` holds the generating
# model itself (ORs per SD of its reference population).
COHORT_KEY: Final = "cohort"
TRUE_OR_PER_SAMPLE_SD_KEY: Final = "true_odds_ratio_per_sample_sd_lvmi"
TRUE_OR_PATH: Final = (COHORT_KEY, TRUE_OR_PER_SAMPLE_SD_KEY)
DISEASE_MODEL_KEY: Final = "disease_model"
