"""lvmass.core.truth: the truth-file names the generator writes and the analysis reads."""

from __future__ import annotations

from lvmass.core import truth


def test_the_required_columns_and_the_odds_ratio_path():
    assert truth.TRUTH_REQUIRED_COLUMNS == ("eid", "true_lv_mass_g", "true_lvmi_g_m2")
    assert truth.TRUE_OR_PATH == (truth.COHORT_KEY, truth.TRUE_OR_PER_SAMPLE_SD_KEY)
    assert {truth.TRUTH_CSV, truth.TRUTH_JSON, truth.TRUTH_LABELS_DIRNAME} == {
        "truth.csv", "truth.json", "truth_labels"}
