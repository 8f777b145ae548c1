"""Hand-made studies and measurements with known answers, shared by the tests of the measurement core
(tests/core/test_measure.py) and of the Beam composites (tests/test_transforms.py)."""

from __future__ import annotations

import numpy as np

from lvmass.core import contracts
from lvmass.core.measure import Measurement
from lvmass.core.phenotypes import Phenotype
from lvmass.core.study import DecodedStudy

# float32-exact spacings, so the float32 tensor spacing and the float64 headers agree bit for bit
ROW_MM, COL_MM, SLICE_MM = 1.875, 1.75, 10.0
INTENSITY_PER_LABEL = 100.0


def ring_labels(rows: int, cols: int, *, r_in: float, r_out: float, centre=(100.0, 104.0)) -> np.ndarray:
    """A cavity disk inside a myocardial ring: uint8 labels (0 background, 1 cavity, 2 myocardium)."""
    y, x = np.ogrid[:rows, :cols]
    r = np.hypot(y - centre[0], x - centre[1])
    labels = np.zeros((rows, cols), np.uint8)
    labels[r <= r_out] = contracts.MYOCARDIUM
    labels[r <= r_in] = contracts.LV_CAVITY
    return labels


def label_study(n_slices: int = 9, *, eid: int | None = 1000001, uri: str = "mem://1000001_20209_2_0.zip"):
    """A study whose ED images are its labels x 100 (and InlineVF-free), plus those labels."""
    labels = [ring_labels(200, 208, r_in=12 + k % 3, r_out=20 + k % 4) for k in range(n_slices)]
    study = DecodedStudy(
        eid=eid, instance=2, source_uri=uri,
        images=tuple(lab.astype(np.float32) * INTENSITY_PER_LABEL for lab in labels),
        outlines=(None,) * n_slices,
        pixel_spacing_mm=(ROW_MM, COL_MM), slice_spacing_mm=SLICE_MM, slice_thickness_mm=8.0,
        slice_positions_mm=tuple(float(SLICE_MM * k) for k in range(n_slices)),
    )
    return study, labels


def band_thresholds(image: np.ndarray) -> tuple[float, float]:
    """Thresholds between the normalised background/padding, cavity and myocardium values."""
    values = np.unique(image)
    assert values.size == 4  # background (< 0), padding (0), cavity, myocardium
    background, padding, cavity, myocardium = values
    assert background < padding == 0.0 < cavity < myocardium
    return float((padding + cavity) / 2), float((cavity + myocardium) / 2)


def expected_mass_g(labels) -> float:
    voxels = sum(int(np.sum(lab == contracts.MYOCARDIUM)) for lab in labels)
    return voxels * ROW_MM * COL_MM * SLICE_MM / 1000.0 * contracts.MYOCARDIAL_DENSITY_G_PER_ML


def measurement(method=contracts.METHOD_ML4H_SEG, raw=150.0, eid=1, flags=()) -> Measurement:
    return Measurement(
        source_uri=f"gs://b/{eid}_20209_2_0.zip", participant_id=str(eid), eid=eid, instance=2, method=method,
        lv_mass_raw_g=raw, myocardium_volume_ml=None if raw is None else raw / 1.05,
        lv_cavity_volume_ml=120.0, n_slices=10, acquired_voxel_mm=(1.8, 1.8, 10.0), grid_pixel_mm=1.8,
        in_plane_scale=1.0, qc_flags=tuple(flags), model_version="v1",
    )


MALE = Phenotype(eid=1, sex="male", age=60.0, height_cm=180.0, weight_kg=80.0, manual_lv_mass_g=100.0)
