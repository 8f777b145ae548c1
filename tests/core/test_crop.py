"""lvmass.core.crop: the heart-centred crop policy, pure: windows, boxes and the two-pass search, with the
model call replaced by a function of the window (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from lvmass.core import contracts
from lvmass.core.crop import (
    CROP_PX,
    FIRST_PASS,
    FULL_FIELD_OF_VIEW,
    GRID,
    SECOND_PASS,
    CropPolicy,
    Window,
    crop_window,
    lv_box,
    lv_hint_box,
    window_around,
)

SLICES = 4
SPACING = np.float32([1.8, 1.8, 10.0])


def heart_labels(centre: tuple[int, int], radius: int = 20) -> np.ndarray:
    """A ring of myocardium around a cavity on the whole grid, in every slice."""
    rows, cols = np.ogrid[: GRID[0], : GRID[1]]
    distance = np.hypot(rows - centre[0], cols - centre[1])
    labels = np.zeros((*GRID, SLICES), np.uint8)
    labels[distance <= radius] = contracts.MYOCARDIUM
    labels[distance <= radius - 6] = contracts.LV_CAVITY
    return labels


def model_of(truth: np.ndarray, margin: int, calls: list[Window]):
    """A stand-in for the model: the truth inside each window, its kept part less ``margin``."""

    def segment(window: Window) -> tuple[Window, np.ndarray]:
        calls.append(window)
        kept = window.inner(margin, GRID)
        return kept, truth[kept.index]

    return segment


class TestWindows:
    def test_crop_windows_are_aligned_and_inside_the_grid(self):
        assert crop_window((128, 128), (128, 128), GRID, 8) == Window(64, 64, 128, 128)
        assert crop_window((3, 250), (128, 128), GRID, 8) == Window(0, 128, 128, 128)

    def test_the_kept_window_leaves_grid_edges_alone(self):
        assert Window(0, 64, 128, 128).inner(32, GRID) == Window(0, 96, 96, 64)
        assert Window(64, 64, 128, 128).shrunk(32) == Window(96, 96, 64, 64)

    def test_a_box_touching_a_cut_edge_is_not_clear(self):
        window = Window(64, 64, 128, 128)
        assert window.clear_of_edges((100, 150, 100, 150), GRID)
        assert not window.clear_of_edges((64, 150, 100, 150), GRID)
        assert window.offset((1, 2, 3, 4)) == (65, 66, 67, 68)

    def test_window_around_grows_in_steps_of_the_alignment(self):
        assert window_around((100, 139, 110, 149), crop_px=128, margin_px=32, grid=GRID, align=8) == Window(
            56, 64, 128, 128)
        assert window_around((80, 169, 110, 149), crop_px=128, margin_px=32, grid=GRID, align=8).rows == 160
        assert window_around((10, 240, 110, 149), crop_px=128, margin_px=32, grid=GRID, align=8) is None


class TestBoxes:
    def test_lv_box_is_the_largest_component_above_a_size(self):
        labels = heart_labels((100, 120))
        labels[5:8, 5:8, 0] = contracts.MYOCARDIUM  # a speck elsewhere
        assert lv_box(labels, min_voxels=10) == (80, 120, 100, 140)
        assert lv_box(labels, min_voxels=10**7) is None
        assert lv_box(np.zeros((8, 8, 1), np.uint8), min_voxels=1) is None

    def test_the_hint_is_the_box_of_inlinevf_labels(self):
        class Participant:
            inlinevf_labels = heart_labels((100, 120))

        assert lv_hint_box(Participant()) == (80, 120, 100, 140)
        assert lv_hint_box(object()) is None


class TestCropPolicy:
    def test_bad_settings_are_refused(self):
        with pytest.raises(ValueError, match=r"need 0 <= 2 \* crop_margin_px < crop_px. Received: 64, 128"):
            CropPolicy(crop_px=128, margin_px=64)

    def test_the_first_crop_is_the_cards_when_the_policy_is_left_at_its_default(self):
        assert CropPolicy().first_crop_px(160) == 160
        assert CropPolicy().first_crop_px(None) == CROP_PX
        assert CropPolicy(crop_px=192).first_crop_px(160) == 192

    def test_a_centred_heart_is_found_in_the_first_crop(self):
        truth, calls = heart_labels((128, 128)), []
        policy = CropPolicy()
        labels, path = policy.segment(model_of(truth, policy.margin_px, calls), n_slices=SLICES,
                                      spacing_mm=SPACING, align_px=8)
        assert path == FIRST_PASS and len(calls) == 1
        np.testing.assert_array_equal(labels, truth)

    def test_an_off_centre_heart_takes_a_second_crop_around_what_the_first_saw(self):
        truth, calls = heart_labels((128, 150)), []  # the first crop keeps columns 96-159 only
        policy = CropPolicy()
        labels, path = policy.segment(model_of(truth, policy.margin_px, calls), n_slices=SLICES,
                                      spacing_mm=SPACING, align_px=8)
        assert path == SECOND_PASS and len(calls) == 2
        np.testing.assert_array_equal(labels, truth)

    def test_the_hint_places_the_first_crop(self):
        truth, calls = heart_labels((128, 180)), []
        policy = CropPolicy()
        labels, path = policy.segment(model_of(truth, policy.margin_px, calls), n_slices=SLICES,
                                      spacing_mm=SPACING, align_px=8, hint=(108, 148, 160, 200))
        assert path == FIRST_PASS and len(calls) == 1
        np.testing.assert_array_equal(labels, truth)

    def test_no_heart_means_the_whole_field_of_view(self):
        calls: list[Window] = []
        labels, path = CropPolicy().segment(model_of(np.zeros((*GRID, SLICES), np.uint8), 32, calls),
                                            n_slices=SLICES, spacing_mm=SPACING, align_px=8)
        assert labels is None and path == FULL_FIELD_OF_VIEW and len(calls) == 1

    def test_min_voxels_follow_the_voxel(self):
        assert CropPolicy(min_lv_ml=20.0).min_voxels([2.0, 2.0, 10.0]) == 500
        assert CropPolicy().min_voxels([0.0, 1.0, 1.0]) == 1
