"""Synthetic participants with every defect the generator writes, shared by the decoder's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def synth():
    return pytest.importorskip("lvmass.synth")


# Five phases per slice: bK runs and InlineVF blocks of five frames, so the trusted layout leaves frames
# unread (the default lite cohort's two-frame runs are read whole).
FIVE_PHASES = (0, 1, 2, 3, 4)  # contiguous InstanceNumbers, as in a full UK Biobank series


@pytest.fixture(scope="package")
def synth_zips(synth):
    """(label, zip name, zip bytes) of synthetic participants with every defect the generator writes."""
    base = synth.SynthConfig(lite_phases=FIVE_PHASES)
    configs = {
        "all_extras": base.with_(duplicate_slice_fraction=1.0, lax_extras_fraction=1.0,
                                 vf_results_fraction=1.0, modality_column_fraction=1.0,
                                 spacing_between_slices_fraction=0.0),
        "inlinevf_failure": base.with_(inlinevf_failure_rate=1.0, spacing_between_slices_fraction=1.0,
                                       modality_column_fraction=0.0),
        "two_phases": synth.SynthConfig(duplicate_slice_fraction=1.0, lax_extras_fraction=1.0),
        "other_vendor": base.with_(layout="single_series"),
    }
    out = []
    for k, (label, cfg) in enumerate(configs.items()):
        data = synth.render_participant(3100001 + k, 17, cfg)
        out.append((label, data.zip_name, data.zip_bytes))
    return out
