"""InlineVF overlays: LSB-first unpacking read back with pydicom, and ml4h's outline -> labels."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from lvmass.core import contracts
from lvmass.core.overlay import inlinevf_labels, outline_to_labels, overlay_outline, unit_disk
from lvmass.core.study import DecodedStudy
from tests.dicom_factory import circle_outline, plain_frame, ring_outline


def dataset_with_overlay(outline: np.ndarray | None, rows: int = 30, cols: int = 28) -> pydicom.Dataset:
    description = "CINE_segmented_SAX_InlineVF"
    data = plain_frame(rows=rows, cols=cols, series_description=description, outline=outline)
    return pydicom.dcmread(io.BytesIO(data))


class TestOverlayOutline:
    def test_round_trip_lsb_first_matches_pydicom(self):
        rng = np.random.default_rng(0)
        outline = rng.random((30, 28)) < 0.2  # 840 bits: not a multiple of 16, exercises padding
        ds = dataset_with_overlay(outline)
        got = overlay_outline(ds)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, outline)
        np.testing.assert_array_equal(got, ds.overlay_array(0x6000).astype(bool))

    def test_bit_order_single_pixel(self):
        outline = np.zeros((30, 28), dtype=bool)
        outline[0, 1] = True  # bit 1 of byte 0 when packed LSB first
        ds = dataset_with_overlay(outline)
        assert bytes(ds[0x6000, 0x3000].value)[0] == 0b10
        np.testing.assert_array_equal(overlay_outline(ds), outline)

    def test_absent_overlay(self):
        assert overlay_outline(dataset_with_overlay(None)) is None

    def test_empty_overlay(self):
        assert overlay_outline(dataset_with_overlay(np.zeros((30, 28), dtype=bool))) is None

    def test_origin_shifts_into_image(self):
        outline = np.zeros((30, 28), dtype=bool)
        outline[5, 6] = True
        ds = dataset_with_overlay(outline)
        ds[0x6000, 0x0050].value = [3, 2]  # 1-based: two rows down, one column right
        expected = np.zeros((30, 28), dtype=bool)
        expected[7, 7] = True
        np.testing.assert_array_equal(overlay_outline(ds), expected)

    def test_not_mutated(self):
        ds = dataset_with_overlay(ring_outline(30, 28, 10, 5))
        before = bytes(ds[0x6000, 0x3000].value)
        overlay_outline(ds)
        assert bytes(ds[0x6000, 0x3000].value) == before

    def test_bits_allocated_other_than_one(self):
        ds = dataset_with_overlay(ring_outline(30, 28, 10, 5))
        ds[0x6000, 0x0100].value = 8
        with pytest.raises(ValueError, match=r"m.dcm: overlay 0x6000 OverlayBitsAllocated is 8; only 1"):
            overlay_outline(ds, source="m.dcm")

    def test_multi_frame_overlay(self):
        ds = dataset_with_overlay(ring_outline(30, 28, 10, 5))
        ds[0x6000, 0x0015].value = 2
        with pytest.raises(ValueError, match=r"m.dcm: overlay 0x6000 has 2 frames; one expected"):
            overlay_outline(ds, source="m.dcm")

    def test_bit_position(self):
        ds = dataset_with_overlay(ring_outline(30, 28, 10, 5))
        ds[0x6000, 0x0102].value = 3
        with pytest.raises(ValueError, match="OverlayBitPosition is 3; only 0"):
            overlay_outline(ds, source="m.dcm")

    def test_short_data(self):
        ds = dataset_with_overlay(ring_outline(30, 28, 10, 5))
        ds[0x6000, 0x3000].value = b"\xff\xff"
        with pytest.raises(
            ValueError, match=r"m.dcm: overlay 0x6000 holds 16 bits, fewer than 30 x 28 = 840"
        ):
            overlay_outline(ds, source="m.dcm")

    def test_bad_group(self):
        with pytest.raises(ValueError, match="overlay group must be an even group"):
            overlay_outline(dataset_with_overlay(None), 0x6001)


class TestUnitDisk:
    def test_integer_radius(self):
        disk = unit_disk(2)
        # x^2 + y^2 <= 4 on the integer grid -2..2: the 5 x 5 square less its 4 corners (8) and the
        # 4 points (+/-2, +/-1), (+/-1, +/-2) beside each corner (8): 25 - 12 = 13
        expected = np.array(
            [[0, 0, 1, 0, 0],
             [0, 1, 1, 1, 0],
             [1, 1, 1, 1, 1],
             [0, 1, 1, 1, 0],
             [0, 0, 1, 0, 0]]
        )
        np.testing.assert_array_equal(disk, expected)
        assert disk.sum() == 13

    @pytest.mark.parametrize("radius", [2, 2.5, 3, 3.4, 5.7, 11.02, 23.85])
    def test_is_ml4hs_disk(self, radius):
        """Bug caught: a disk centred on a pixel for fractional radii (``ogrid[-ceil(r):ceil(r)+1]``), or
        ``<`` for ``<=``, changes every InlineVF label; ml4h's own definition is the oracle."""
        np.testing.assert_array_equal(unit_disk(radius), ml4h_unit_disk(radius))

    def test_fractional_radius_grid_starts_at_minus_r(self):
        # ml4h: ogrid[-2.5:3.5] = -2.5, -1.5, ..., 2.5 (six values, not centred on a pixel)
        assert unit_disk(2.5).shape == (6, 6)

    def test_nonpositive(self):
        with pytest.raises(ValueError, match="disk radius must be positive"):
            unit_disk(0)


def expected_ring_labels(n: int, outer: float, inner: float) -> tuple[np.ndarray, np.ndarray]:
    """The labels of a centred ``ring_outline(n, n, outer, inner)`` from its geometry: the cavity is the
    inner disk less its drawn curve, the myocardium the rest of the outer disk (both curves)."""
    y, x = np.indices((n, n))
    c = (n - 1) / 2
    d2 = (y - c) ** 2 + (x - c) ** 2
    cavity = (d2 <= inner**2) & ~circle_outline(n, n, inner)
    myocardium = (d2 <= outer**2) & ~cavity
    return cavity, myocardium


class TestOutlineToLabels:
    @pytest.mark.parametrize("n", [40, 96])  # 40: the big closing would cross the border without padding
    def test_two_concentric_circles(self, n):
        outline = ring_outline(n, n, 12, 7)
        labels = outline_to_labels(outline)
        cavity, myocardium = expected_ring_labels(n, 12, 7)
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels == contracts.LV_CAVITY, cavity)
        np.testing.assert_array_equal(labels == contracts.MYOCARDIUM, myocardium)
        # both drawn curves count as myocardium
        assert np.all(labels[outline] == contracts.MYOCARDIUM)
        assert set(np.unique(labels).tolist()) == {0, 1, 2}

    def test_tiny_ventricle_rescue(self):
        # Outer radius 5, inner 2: the 4-pixel cavity is filled by the small closing (disk r=2), so no
        # cavity is left and 64 > 20 pixels are myocardium; the erosion of m1 by disk(3) is returned to
        # the cavity: a 4 x 4 block in the centre.
        outline = ring_outline(40, 40, 5, 2)
        labels = outline_to_labels(outline)
        cavity = labels == contracts.LV_CAVITY
        assert cavity.sum() == 16
        rows, cols = np.nonzero(cavity)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (18, 21, 18, 21)
        assert (labels == contracts.MYOCARDIUM).sum() == 64
        # the rescue gives the inner curve back to the cavity; the outer curve stays myocardium
        assert np.all(labels[circle_outline(40, 40, 2)] == contracts.LV_CAVITY)
        assert np.all(labels[circle_outline(40, 40, 5)] == contracts.MYOCARDIUM)

    def test_empty_outline(self):
        labels = outline_to_labels(np.zeros((8, 9), dtype=bool))
        assert labels.shape == (8, 9) and not labels.any()

    def test_not_mutated(self):
        outline = ring_outline(40, 40, 12, 7)
        before = outline.copy()
        outline_to_labels(outline)
        np.testing.assert_array_equal(outline, before)

    def test_rejects_3d(self):
        with pytest.raises(ValueError, match=r"outline must be 2-D \(rows, cols\), got shape \(2, 3, 4\)"):
            outline_to_labels(np.zeros((2, 3, 4)))


class TestInlinevfLabels:
    def test_zeros_where_no_outline(self):
        images = (np.ones((40, 40), np.float32), np.ones((40, 40), np.float32))
        study = DecodedStudy(
            eid=1,
            instance=2,
            source_uri="x",
            images=images,
            outlines=(None, ring_outline(40, 40, 12, 7)),
            pixel_spacing_mm=(1.8, 1.8),
            slice_spacing_mm=10.0,
            slice_thickness_mm=8.0,
            slice_positions_mm=(0.0, 10.0),
        )
        labels = inlinevf_labels(study)
        assert not labels[0].any() and labels[0].shape == (40, 40)
        # the ring's geometry, not outline_to_labels, is the oracle (as in TestOutlineToLabels): a slice
        # given another slice's outline, or none, fails
        cavity, myocardium = expected_ring_labels(40, 12, 7)
        expected = np.zeros((40, 40), np.uint8)
        expected[cavity], expected[myocardium] = contracts.LV_CAVITY, contracts.MYOCARDIUM
        np.testing.assert_array_equal(labels[1], expected)


def ml4h_unit_disk(r: float) -> np.ndarray:
    """ml4h's ``_unit_disk`` (ml4h/tensorize/tensor_writer_ukbb.py) verbatim, ``np.int`` aside: written
    here, not imported from ``lvmass.core.overlay``, so the reference below shares no code with ours."""
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x**2 + y**2 <= r**2).astype(int)


def ml4h_reference_labels(outline: np.ndarray) -> np.ndarray:
    """ml4h's _get_overlay_from_dicom morphology verbatim (scipy.ndimage on the full image, ml4h's own
    disk): nothing of ``lvmass.core.overlay`` enters it."""
    from scipy.ndimage import binary_closing, binary_erosion

    idx = np.where(outline == 1)
    short_side = min(idx[0].max() - idx[0].min(), idx[1].max() - idx[1].min())
    small_radius = max(2, short_side * 0.19)
    big_radius = max(3, short_side * 0.9)
    m1 = binary_closing(outline, ml4h_unit_disk(small_radius)).astype(int)
    m2 = binary_closing(outline, ml4h_unit_disk(big_radius)).astype(int)
    mask = m1 + m2
    if np.count_nonzero(mask == 1) == 0 and np.count_nonzero(mask == 2) > 20:
        mask = mask - binary_erosion(m1, ml4h_unit_disk(small_radius * 1.5)).astype(int)
    return mask


class TestAgainstMl4hReference:
    """The FFT morphology on a padded box equals ml4h's scipy morphology where ml4h's fits the image.

    The reference builds its own disks, so a wrong structuring element, an FFT offset or a wrong radius
    factor in ``outline_to_labels`` each fail here instead of being shared by both sides.
    """

    @pytest.mark.parametrize(
        ("outer", "inner", "centre"),
        [(15, 9, (50.0, 60.0)), (11.5, 8.2, (40.3, 70.7)), (6, 2, (60.0, 45.0)), (9, 3.5, (55.5, 62.5))],
    )
    def test_rings(self, outer, inner, centre):
        outline = circle_outline(110, 120, outer, centre) | circle_outline(110, 120, inner, centre)
        np.testing.assert_array_equal(
            outline_to_labels(outline), ml4h_reference_labels(outline.astype(np.uint8))
        )

    def test_mistrace_with_a_third_curve(self):
        outline = circle_outline(110, 120, 14, (55.0, 60.0)) | circle_outline(110, 120, 8, (56.0, 61.0))
        outline |= circle_outline(110, 120, 3, (35.0, 66.0))
        np.testing.assert_array_equal(
            outline_to_labels(outline), ml4h_reference_labels(outline.astype(np.uint8))
        )
