"""The truth-file contract: what ``lvmass synth`` writes beside a synthetic cohort and the analysis reads.

A synthetic cohort folder holds, besides its participant zips and phenotype table, what the generator
knows and a pipeline can only estimate:

=====================================================  ======================================================
entry                                                  content
=====================================================  ======================================================
``truth.csv`` (:data:`TRUTH_CSV`)                      one row per participant: :data:`TRUTH_REQUIRED_COLUMNS`
                                                       (``eid``, ``true_lv_mass_g``, ``true_lvmi_g_m2``) and
                                                       more (anatomy, InlineVF bias, ...)
``truth.json`` (:data:`TRUTH_JSON`)                    the generator's parameters, seed and versions, its
                                                       disease model (:data:`DISEASE_MODEL_KEY`) and the
                                                       written cohort's summary (:data:`COHORT_KEY`)
``truth_labels/`` (:data:`TRUTH_LABELS_DIRNAME`)       ``{eid}_20209_{instance}_0.npz``, named as the zip
                                                       (``lvmass.core.identity`` parses it): ``labels``,
                                                       uint8 (rows, cols, n_slices) ED truth labels
=====================================================  ======================================================

``truth.json[COHORT_KEY][TRUE_OR_PER_SAMPLE_SD_KEY][disease]`` (the path :data:`TRUE_OR_PATH`) is the true
odds ratio of the disease per 1 SD of true LVMI *in the written cohort* (adjusted for age and sex): what a
per-SD logistic model fitted on that cohort's true LVMI estimates. ``truth.json[DISEASE_MODEL_KEY]`` holds
the generating model itself (ORs per SD of its reference population).

The generator (``lvmass.synth.cohort``) writes these names and the analysis (``analysis.io``,
``analysis.associations``) reads them, both from here. Plain constants: importing this module loads
nothing else.
"""

from __future__ import annotations

from typing import Final

# --- Entries of a cohort folder -----------------------------------------------------------------------
TRUTH_CSV: Final = "truth.csv"
TRUTH_JSON: Final = "truth.json"
TRUTH_LABELS_DIRNAME: Final = "truth_labels"

# --- truth.csv: the columns every reader needs -------------------------------------------------------
TRUTH_EID: Final = "eid"
TRUTH_LV_MASS_G: Final = "true_lv_mass_g"
TRUTH_LVMI_G_M2: Final = "true_lvmi_g_m2"
TRUTH_REQUIRED_COLUMNS: Final = (TRUTH_EID, TRUTH_LV_MASS_G, TRUTH_LVMI_G_M2)

# --- truth.json keys (module docstring) ---------------------------------------------------------------
COHORT_KEY: Final = "cohort"
TRUE_OR_PER_SAMPLE_SD_KEY: Final = "true_odds_ratio_per_sample_sd_lvmi"
TRUE_OR_PATH: Final = (COHORT_KEY, TRUE_OR_PER_SAMPLE_SD_KEY)
DISEASE_MODEL_KEY: Final = "disease_model"
