"""lvmass.core.derive: the derived table from measurements and phenotypes, the same whatever their order,
and measurement rows that round-trip."""

from __future__ import annotations

import pytest

from lvmass.core import contracts
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.derive import DerivationSettings, derive_results, measurement_from_row, measurement_row
from lvmass.core.phenotypes import Phenotype, PhenotypeTable
from tests.hand_made import measurement

PHENOTYPES = PhenotypeTable(rows={(eid, None): Phenotype(eid=eid, sex="male" if eid % 2 else "female",
                                                         height_cm=170.0, weight_kg=70.0,
                                                         manual_lv_mass_g=100.0 + eid)
                                  for eid in range(1, 25)})


def test_a_measurement_row_round_trips():
    m = measurement(method=contracts.METHOD_INLINEVF, raw=141.5, eid=7)
    row = measurement_row(m, pipeline_version=PIPELINE_VERSION)
    assert (row["pixel_spacing_row_mm"], row["slice_spacing_mm"], row["tensor_pixel_spacing_mm"]) == (
        1.8, 10.0, 1.8)
    assert measurement_from_row(row) == m


def test_a_row_without_a_column_is_refused_naming_the_input():
    row = measurement_row(measurement(), pipeline_version=PIPELINE_VERSION)
    del row["n_slices"]
    with pytest.raises(ValueError, match=r"gs://b/1_20209_2_0.zip: measurement row lacks \['n_slices'\]"):
        measurement_from_row(row)


def test_the_derived_table_does_not_depend_on_the_order_of_the_measurements():
    methods = (contracts.METHOD_ML4H_SEG, contracts.METHOD_INLINEVF)
    measurements = [measurement(method=method, raw=120.0 + eid, eid=eid)
                    for eid in range(1, 25) for method in methods]
    forward = derive_results(measurements, PHENOTYPES, DerivationSettings())
    backward = derive_results(list(reversed(measurements)), PHENOTYPES, DerivationSettings())
    assert forward == backward
    assert len(forward.records) == 24 * 3  # ML4H_seg, InlineVF and its recalibrated row
    assert set(forward.centering) == {contracts.METHOD_ML4H_SEG, contracts.METHOD_INLINEVF}
    assert forward.errors == ()


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"min_calibration_n must be >= 1\. Received: 0"):
        DerivationSettings(min_calibration_n=0)
