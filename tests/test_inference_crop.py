"""ML4H_seg's heart-centred crop (beam_pipeline.inference) and the export that makes it possible.

Three kinds of check, each with an oracle that is not the code under test:

* the crop policy on a band segmenter with a crop signature (labels are a pure function of each voxel's
  intensity, so any crop must give exactly the full field of view's labels): which calls are made, and that
  the labels kept are the full field of view's;
* the bundled ML4H_seg on the real study and on fresh synthetic participants: labels from the crop against
  labels from the whole field of view (``serving_default``, as before the crop) and against the counts the
  model gave before its re-export and before oneDNN (recorded below);
* the export: the analytic receptive field against one measured with an impulse, ``serving_crop`` against
  ``serving_default`` and Keras, and ``add_crop_signature`` keeping weights and ``serving_default``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline.inference import SavedModelHandler
from lvmass.core import contracts
from lvmass.core.crop import CROP_MARGIN_PX, CROP_PX, CropPolicy, Window, crop_window, lv_box, window_around
from lvmass.core.model_card import ModelCard
from tests.crop_policy import GRID, HIGH, LOW, REAL_STUDY, heart_image, participant_tensor, segment
from tests.savedmodel_factory import band_labels, save_band_segmenter_with_crops

# ML4H_seg on the real study before this change (the SavedModel without serving_crop, Eigen convolutions,
# the whole field of view; /tmp/inf/L_eigen_real in the work that made it): voxels of each label.
REAL_BEFORE_VOXELS = {"myocardium": 7464, "lv_cavity": 5087}
# of which, "myocardium" in 2 components 190 mm from the LV (rows 201-218, columns 63-73)
REAL_BEFORE_FAR_MYOCARDIUM = 39
NEAR_TIE = 0.01  # top-two class probabilities this close: the label is a coin toss either way


# --- pure helpers ---------------------------------------------------------------------------------------


class TestWindows:
    def test_crop_window_is_aligned_and_inside_the_grid(self):
        assert crop_window((128, 128), (128, 128), GRID, 8) == Window(64, 64, 128, 128)
        assert crop_window((131.9, 123.9), (128, 128), GRID, 8) == Window(64, 56, 128, 128)
        assert crop_window((5, 250), (128, 160), GRID, 8) == Window(0, 96, 128, 160)

    def test_inner_keeps_grid_edges(self):
        assert Window(64, 64, 128, 128).inner(32, GRID) == Window(96, 96, 64, 64)
        assert Window(0, 128, 128, 128).inner(32, GRID) == Window(0, 160, 96, 96)

    def test_holds_is_inclusive(self):
        inner = Window(96, 96, 64, 64)
        assert inner.holds((96, 159, 96, 159))
        assert not inner.holds((95, 159, 96, 159)) and not inner.holds((96, 160, 96, 159))

    def test_window_around_grows_in_aligned_steps_and_gives_up_at_the_grid(self):
        assert window_around((100, 139, 110, 149), crop_px=128, margin_px=32, grid=GRID, align=8) == Window(
            56, 64, 128, 128)
        # a 90-row box needs 90 + 64 = 154 rows: 160
        assert window_around((80, 169, 110, 149), crop_px=128, margin_px=32, grid=GRID, align=8).rows == 160
        assert window_around((10, 240, 110, 149), crop_px=128, margin_px=32, grid=GRID, align=8) is None

    def test_lv_box_is_the_largest_component(self):
        labels = np.zeros((256, 256, 13), np.uint8)
        labels[100:120, 90:130, 3:8] = 2
        labels[105:115, 100:120, 3:8] = 1
        labels[10:12, 10:12, 0] = 2  # a speck elsewhere
        assert lv_box(labels, min_voxels=10) == (100, 119, 90, 129)
        assert lv_box(labels, min_voxels=20 * 40 * 5 + 1) is None
        assert lv_box(np.zeros_like(labels), min_voxels=1) is None


# --- the policy, on a band segmenter with a crop signature ----------------------------------------------


@pytest.fixture(scope="module")
def band_dir(tmp_path_factory):
    return save_band_segmenter_with_crops(tmp_path_factory.mktemp("band") / "model", low=LOW, high=HIGH)


class TestCropPolicy:
    def test_a_centred_heart_takes_one_crop(self, band_dir):
        image = heart_image((130, 126))
        labels, calls = segment(band_dir, image)
        assert calls == [("crop", (CROP_PX, CROP_PX))]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))

    def test_an_off_centre_heart_is_recentred(self, band_dir):
        image = heart_image((90, 170))  # in the first crop, but too near its edges
        labels, calls = segment(band_dir, image)
        assert calls == [("crop", (128, 128)), ("crop", (128, 128))]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))

    def test_no_heart_in_the_centre_falls_back_to_the_whole_field_of_view(self, band_dir):
        image = heart_image((30, 30))
        labels, calls = segment(band_dir, image)
        assert calls == [("crop", (128, 128)), ("full", GRID)]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))

    def test_a_heart_too_large_for_a_crop_falls_back(self, band_dir):
        image = heart_image((128, 128), radius=100)
        labels, calls = segment(band_dir, image)
        assert [name for name, _ in calls] == ["crop", "crop", "full"]
        # the kept window (64 px) saw LV from edge to edge: the second crop grew 16 px each way beyond it
        # (96 + 2 x 32 margin = 160), still saw LV at its edges, and gave up
        assert calls[1][1] == (160, 160)
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))

    def test_labels_near_the_crop_edge_or_outside_it_are_dropped(self, band_dir):
        image = heart_image((128, 128))
        image[70:74, 70:74, 4, 0] = 2.0  # inside the crop but within the margin of its edge
        image[220:224, 220:224, 4, 0] = 2.0  # outside the crop
        labels, calls = segment(band_dir, image)
        assert calls == [("crop", (128, 128))]
        expected = band_labels(image, low=LOW, high=HIGH)
        kept = Window(64, 64, 128, 128).inner(CROP_MARGIN_PX, GRID)
        mask = np.zeros(GRID, bool)
        mask[kept.index] = True
        np.testing.assert_array_equal(labels[mask], expected[mask])
        assert not labels[~mask].any()
        assert expected[~mask].sum() == 2 * 16 * 2  # the two specks, which the crop does not count

    def test_probabilities_and_no_crop_use_the_whole_field_of_view(self, band_dir):
        image = heart_image((128, 128))
        _, calls = segment(band_dir, image, argmax=False)
        assert calls == [("full", GRID)]
        labels, calls = segment(band_dir, image, crop_policy=None)
        assert calls == [("full", GRID)]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))

    def test_bad_crop_settings_are_refused(self, band_dir, tmp_path):
        with pytest.raises(ValueError, match=r"need 0 <= 2 \* crop_margin_px < crop_px"):
            CropPolicy(crop_px=64, margin_px=32)
        with pytest.raises(ValueError, match="crop_px must be a multiple of the model's align_px 8"):
            SavedModelHandler(str(band_dir), kind=contracts.MODEL_KIND_SEG,
                              crop_policy=CropPolicy(crop_px=100)).load_model()
        card = json.loads((band_dir / contracts.MODEL_CARD_FILENAME).read_text())
        card["crop_inference"]["signature"] = "serving_tile"
        import shutil

        other = tmp_path / "model"
        shutil.copytree(band_dir, other)
        (other / contracts.MODEL_CARD_FILENAME).write_text(json.dumps(card))
        with pytest.raises(ValueError, match="names signature 'serving_tile', which the SavedModel lacks"):
            SavedModelHandler(str(other), kind=contracts.MODEL_KIND_SEG).load_model()


# --- the bundled ML4H_seg: crop against the whole field of view -----------------------------------------


@pytest.fixture(scope="module")
def bundled():
    from lvmass.storage.models import bundled_model_dir

    model_dir = bundled_model_dir(contracts.MODEL_KIND_SEG, "paper")
    crop = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG)
    whole = SavedModelHandler(model_dir, kind=contracts.MODEL_KIND_SEG, argmax=False)
    return crop, crop.load_model(), whole, whole.load_model()


def _compare(bundled, participant):
    """(crop labels, whole-field labels, top-two probability gap of the whole field, LV box)."""
    crop, crop_model, whole, whole_model = bundled
    [cropped] = crop.run_inference([participant], crop_model)
    [probabilities] = whole.run_inference([participant], whole_model)
    ranked = np.sort(probabilities.inference, axis=-1)
    labels = np.argmax(probabilities.inference, axis=-1).astype(np.uint8)
    return cropped.inference, labels, ranked[..., -1] - ranked[..., -2]


def _check_crop_equals_whole(cropped, whole, gap, *, spacing_mm):
    """Every voxel whose label the crop changed is either a coin toss of the whole field (its two most
    likely classes within NEAR_TIE; at most 3 voxels, 0.036 g each) or one the crop left as background at
    least CROP_MARGIN_PX (60 mm) from the LV. Returns the mass (g) of those dropped far labels."""
    from lvmass.core.mass import measure_label_volume

    differ = cropped != whole
    tie = gap < NEAR_TIE
    box = lv_box(whole, min_voxels=1)
    rows, cols = np.ogrid[:256, :256]
    near_lv = ((rows >= box[0] - CROP_MARGIN_PX) & (rows <= box[1] + CROP_MARGIN_PX)
               & (cols >= box[2] - CROP_MARGIN_PX) & (cols <= box[3] + CROP_MARGIN_PX))[..., None]
    dropped_far = ~near_lv & (cropped == contracts.LABEL_MAP["background"])
    unexplained = differ & ~tie & ~dropped_far
    assert not unexplained.any(), np.argwhere(unexplained)[:5]
    assert (differ & tie).sum() <= 3
    dropped = np.where(differ & ~tie, whole, 0).astype(np.uint8)
    return measure_label_volume(dropped, spacing_mm).lv_mass_raw_g


def test_real_study_crop_keeps_the_lv_and_the_before_counts(bundled):
    participant = participant_tensor(REAL_STUDY, with_inlinevf=False)
    cropped, whole, gap = _compare(bundled, participant)
    # serving_default after the re-export, with oneDNN, gives the counts of the model before it
    assert int((whole == 2).sum()) == REAL_BEFORE_VOXELS["myocardium"]
    assert int((whole == 1).sum()) == REAL_BEFORE_VOXELS["lv_cavity"]
    dropped_g = _check_crop_equals_whole(cropped, whole, gap, spacing_mm=participant.spacing_mm)
    voxel_g = float(np.prod(participant.spacing_mm)) / 1000 * contracts.MYOCARDIAL_DENSITY_G_PER_ML
    assert dropped_g == pytest.approx(REAL_BEFORE_FAR_MYOCARDIUM * voxel_g)
    # the crop's LV: the whole field's LV voxel for voxel, bar at most one coin toss
    lv_myocardium = REAL_BEFORE_VOXELS["myocardium"] - REAL_BEFORE_FAR_MYOCARDIUM
    assert abs(int((cropped == 2).sum()) - lv_myocardium) <= 1
    assert int((cropped == 1).sum()) == REAL_BEFORE_VOXELS["lv_cavity"]


def test_synthetic_participants_crop_equals_the_whole_field(bundled, tmp_path):
    from lvmass.synth.cohort import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", participants=3, seed=4243, fidelity="lite")
    zips = sorted(cohort.zips_dir.glob("*.zip"))
    assert len(zips) == 3
    for path in zips:
        participant = participant_tensor(path, with_inlinevf=False)
        cropped, whole, gap = _compare(bundled, participant)
        assert _check_crop_equals_whole(cropped, whole, gap, spacing_mm=participant.spacing_mm) == 0.0
        assert abs(int((cropped == 2).sum()) - int((whole == 2).sum())) <= 3


# --- the export -----------------------------------------------------------------------------------------


TINY_SEG = dict(stem_filters=2, dense_blocks=(2, 4, 4), convs_per_block=1)


@pytest.fixture(scope="module")
def tiny_seg():
    import keras

    from trainer import models

    keras.utils.set_random_seed(3)
    return models.build_ml4h_seg(models.seg_config("cpu", **TINY_SEG))


def test_receptive_field_matches_an_impulse(tiny_seg):
    """The analytic radius bounds, tightly, the furthest output an input impulse changes."""
    from trainer.export import in_plane_alignment_px, receptive_field_px, size_agnostic_twin

    twin = size_agnostic_twin(tiny_seg)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 96, 96, 13, 1)).astype(np.float32)
    base = twin({"image": image}, training=False).numpy()
    reach = 0
    for row, col in ((48, 48), (49, 51), (50, 47)):
        poked = image.copy()
        poked[0, row, col, 6, 0] += 25.0
        changed = np.abs(twin({"image": poked}, training=False).numpy() - base).max(axis=(3, 4))[0] > 0
        rows, cols = np.nonzero(changed)
        reach = max(reach, np.abs(rows - row).max(), np.abs(cols - col).max())
    assert in_plane_alignment_px(tiny_seg) == 4
    assert reach <= receptive_field_px(tiny_seg) <= reach + 2


def _old_style_export(model, export_dir: Path) -> None:
    """An export as trainer/export.py wrote it before serving_crop: serving_default only, no crop card."""
    import keras
    import tensorflow as tf

    from trainer.export import KERAS_FILENAME, serving_input_signature

    def serve(image, spacing_mm):
        return {contracts.SIGNATURE_OUTPUT_PROBABILITIES: tf.cast(model({"image": image}, training=False),
                                                                   tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=contracts.SERVING_SIGNATURE, fn=serve,
                         input_signature=serving_input_signature())
    archive.write_out(str(export_dir), verbose=False)
    model.save(export_dir / KERAS_FILENAME)
    card = ModelCard(kind=contracts.MODEL_KIND_SEG, version="old-1", notes="before serving_crop")
    (export_dir / contracts.MODEL_CARD_FILENAME).write_text(card.to_json())


def test_export_has_a_crop_signature_equal_to_keras(tiny_seg, tmp_path):
    import tensorflow as tf

    from trainer.export import export_model, load_card, receptive_field_px

    export_model(tiny_seg, kind=contracts.MODEL_KIND_SEG, export_dir=str(tmp_path / "m"),
                 card=ModelCard(kind=contracts.MODEL_KIND_SEG, version="t-1"))
    assert load_card(str(tmp_path / "m")).crop_inference.to_dict() == {
        "signature": "serving_crop", "align_px": 4, "receptive_field_px": receptive_field_px(tiny_seg),
        "window_signature": "serving_window", "window_margin_px": contracts.SEG_WINDOW_MARGIN_PX}
    module = tf.saved_model.load(str(tmp_path / "m"))
    image = np.random.default_rng(1).standard_normal((1, *contracts.TENSOR_SHAPE)).astype(np.float32)
    spacing = np.float32([[1.8, 1.8, 10.0]])
    whole = module.signatures["serving_default"](image=image, spacing_mm=spacing)["probabilities"].numpy()
    same = module.signatures["serving_crop"](image=image, spacing_mm=spacing)["probabilities"].numpy()
    np.testing.assert_array_equal(same, whole)
    np.testing.assert_allclose(whole, tiny_seg.predict({"image": image}, verbose=0), rtol=1e-5, atol=1e-6)
    crop = module.signatures["serving_crop"](image=image[:, 64:128, 32:112], spacing_mm=spacing)
    assert crop["probabilities"].shape == (1, 64, 80, 13, 3)
    # serving_window: the same crop, its inner window only (32 px less on each side), the same values
    window = module.signatures["serving_window"](image=image[:, 40:152, 32:144], spacing_mm=spacing)
    inner = module.signatures["serving_crop"](image=image[:, 40:152, 32:144], spacing_mm=spacing)
    assert window["probabilities"].shape == (1, 48, 48, 13, 3)
    np.testing.assert_allclose(window["probabilities"].numpy(),
                               inner["probabilities"].numpy()[:, 32:-32, 32:-32], rtol=0, atol=1e-6)


def test_add_crop_signature_keeps_weights_and_serving_default(tiny_seg, tmp_path):
    import tensorflow as tf

    from trainer.export import KERAS_FILENAME, add_crop_signature, load_card

    folder = tmp_path / "old"
    _old_style_export(tiny_seg, folder)
    keras_bytes = (folder / KERAS_FILENAME).read_bytes()
    old = tf.saved_model.load(str(folder))
    image = np.random.default_rng(7).standard_normal((1, *contracts.TENSOR_SHAPE)).astype(np.float32)
    spacing = np.float32([[2.0, 2.0, 8.0]])
    before = old.signatures["serving_default"](image=image, spacing_mm=spacing)["probabilities"].numpy()
    old_weights = sorted((v.numpy() for v in old.variables), key=lambda a: (a.shape, a.tobytes()))
    assert "serving_crop" not in old.signatures

    report = add_crop_signature(str(folder))
    new = tf.saved_model.load(str(folder))
    assert "serving_crop" in new.signatures
    after = new.signatures["serving_default"](image=image, spacing_mm=spacing)["probabilities"].numpy()
    np.testing.assert_array_equal(after, before)
    new_weights = sorted((v.numpy() for v in new.variables), key=lambda a: (a.shape, a.tobytes()))
    assert len(new_weights) == len(old_weights)
    for a, b in zip(old_weights, new_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (folder / KERAS_FILENAME).read_bytes() == keras_bytes
    card = load_card(str(folder))
    assert card.crop_inference.to_dict() == report["crop_inference"] and card.notes == "before serving_crop"
    with pytest.raises(ValueError, match="serving_crop is for ml4h_seg"):
        reg_folder = tmp_path / "reg"
        reg_folder.mkdir()
        (reg_folder / contracts.MODEL_CARD_FILENAME).write_text(
            ModelCard(kind=contracts.MODEL_KIND_REG, version="r").to_json())
        add_crop_signature(str(reg_folder))
