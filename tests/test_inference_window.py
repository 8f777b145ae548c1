"""ML4H_seg's ``serving_window`` (trainer/windowed.py) and the handler's use of it (beam_pipeline.inference).

Oracles that are not the code under test:

* the network: ``serving_window`` against ``serving_crop``'s inner window, on the bundled ML4H_seg with the
  real study and a synthetic participant, and on random networks;
* the policy: a band segmenter (labels are a pure function of each voxel's intensity) with a window
  signature that returns the inner window only, so any kept window must hold exactly the band labels;
  which signature calls are made, and where;
* the InlineVF hint: the first crop goes where the outlines put the LV, and the labels do not depend on it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from beam_pipeline.inference import SavedModelHandler
from lvmass.core import contracts
from lvmass.core.crop import CROP_PX, CropPolicy, Window, lv_hint_box
from lvmass.core.model_input import ModelInput
from tests.crop_policy import (
    GRID,
    HIGH,
    LOW,
    REAL_STUDY,
    count_calls,
    heart_image,
    participant_tensor,
    segment,
)
from tests.savedmodel_factory import band_labels, save_band_segmenter_with_crops

MARGIN = contracts.SEG_WINDOW_MARGIN_PX


# --- pure helpers ---------------------------------------------------------------------------------------


class TestWindowEdges:
    def test_clear_of_edges_allows_only_the_grid_edge(self):
        kept = Window(96, 96, 64, 64)
        assert kept.clear_of_edges((97, 158, 97, 158), GRID)
        assert not kept.clear_of_edges((96, 150, 100, 150), GRID)  # touches the top
        assert not kept.clear_of_edges((100, 159, 100, 150), GRID)  # touches the bottom
        at_grid = Window(0, 96, 64, 64)
        assert at_grid.clear_of_edges((0, 40, 100, 150), GRID)  # the top is the grid's own edge

    def test_extend_clipped_takes_the_lv_as_round(self):
        kept = Window(96, 96, 64, 64)
        # cut at the top, 40 columns wide, 30 rows seen: max(40, 30 + 16) = 46 rows, ending where seen
        assert kept.extend_clipped((96, 125, 100, 139), GRID) == (80, 125, 100, 139)
        # 50 columns wide: 50 rows
        assert kept.extend_clipped((96, 125, 100, 149), GRID) == (76, 125, 100, 149)
        # cut at the right, 20 rows tall: at least 16 px more than the 24 columns seen
        assert kept.extend_clipped((110, 129, 136, 159), GRID) == (110, 129, 136, 175)
        # cut top and bottom: 16 px each way
        assert kept.extend_clipped((96, 159, 110, 140), GRID) == (80, 175, 110, 140)
        # nothing cut: unchanged
        assert kept.extend_clipped((100, 140, 100, 140), GRID) == (100, 140, 100, 140)

    def test_lv_hint_box_is_the_inlinevf_labels_box(self):
        labels = np.zeros(contracts.LABEL_VOLUME_SHAPE, np.uint8)
        labels[90:131, 120:161, 2:9] = 2
        example = dataclasses.make_dataclass("E", ["image", "spacing_mm", "inlinevf_labels"])(
            None, None, labels)
        assert lv_hint_box(example) == (90, 130, 120, 160)
        example.inlinevf_labels = np.zeros_like(labels)
        assert lv_hint_box(example) is None
        assert lv_hint_box(ModelInput(np.zeros(contracts.TENSOR_SHAPE, np.float32), np.ones(3))) is None


# --- the policy, on a band segmenter with crop and window signatures -----------------------------------


@pytest.fixture(scope="module")
def band_dir(tmp_path_factory):
    return save_band_segmenter_with_crops(tmp_path_factory.mktemp("band_window") / "model", low=LOW,
                                          high=HIGH, window_margin_px=MARGIN, version="band-window-1")


class TestWindowPolicy:
    def test_the_window_signature_is_used_when_its_margin_is_the_handlers(self, band_dir):
        image = heart_image((128, 128))
        labels, calls = segment(band_dir, image)
        assert calls == [("window", (CROP_PX, CROP_PX))]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))
        # another margin: the window signature does not fit, serving_crop is used
        labels, calls = segment(band_dir, image, crop_policy=CropPolicy(margin_px=24))
        assert calls == [("crop", (CROP_PX, CROP_PX))]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))

    def test_an_off_centre_heart_is_found_from_what_the_window_saw(self, band_dir):
        # the LV crosses the kept window's top-right corner: the second crop is placed from the part seen
        image = heart_image((92, 168))
        labels, calls = segment(band_dir, image)
        assert calls == [("window", (128, 128)), ("window", (128, 128))]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))

    def test_the_inlinevf_hint_places_the_first_crop(self, band_dir):
        image = heart_image((92, 168))
        outline = band_labels(image, low=LOW, high=HIGH)
        labels, calls = segment(band_dir, image, inlinevf_labels=outline)
        assert calls == [("window", (128, 128))]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))
        # a wrong hint costs crops, never a label: no LV there, so the centred crop next, which sees the LV
        # at its edge, so the whole field of view
        wrong = np.zeros_like(outline)
        wrong[180:200, 60:80, 3:6] = 2
        labels, calls = segment(band_dir, image, inlinevf_labels=wrong)
        assert calls == [("window", (128, 128)), ("window", (128, 128)), ("full", GRID)]
        np.testing.assert_array_equal(labels, band_labels(image, low=LOW, high=HIGH))
        # a wrong hint for a centred heart: the centred crop finds it
        labels, calls = segment(band_dir, heart_image((128, 128)), inlinevf_labels=wrong)
        assert calls == [("window", (128, 128)), ("window", (128, 128))]

    def test_labels_outside_the_kept_window_are_dropped_even_at_the_grid_edge(self, band_dir):
        image = heart_image((128, 128))
        image[70:74, 70:74, 4, 0] = 2.0  # inside the crop, within its margin
        labels, calls = segment(band_dir, image)
        assert calls == [("window", (128, 128))]
        expected = band_labels(image, low=LOW, high=HIGH)
        kept = Window(64 + MARGIN, 64 + MARGIN, 128 - 2 * MARGIN, 128 - 2 * MARGIN)
        mask = np.zeros(GRID, bool)
        mask[kept.index] = True
        np.testing.assert_array_equal(labels[mask], expected[mask])
        assert not labels[~mask].any()


# --- the network: serving_window against serving_crop --------------------------------------------------


@pytest.fixture(scope="module")
def bundled_module():
    import tensorflow as tf

    from lvmass.storage.models import bundled_model_dir, resolve_model_dir

    return tf.saved_model.load(resolve_model_dir(bundled_model_dir(contracts.MODEL_KIND_SEG, "paper")))


def _window_against_crop(module, image: np.ndarray, row0: int, col0: int) -> tuple[float, int]:
    crop = np.ascontiguousarray(image[None, row0:row0 + 128, col0:col0 + 128])
    spacing = np.float32([[1.86, 1.86, 10.0]])
    whole = module.signatures["serving_crop"](image=crop, spacing_mm=spacing)["probabilities"].numpy()
    window = module.signatures["serving_window"](image=crop, spacing_mm=spacing)["probabilities"].numpy()
    inner = whole[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
    assert window.shape == inner.shape == (1, 64, 64, 13, 3)
    return float(np.abs(window - inner).max()), int((window.argmax(-1) != inner.argmax(-1)).sum())


def test_bundled_window_equals_the_crop_on_the_real_study(bundled_module):
    participant = participant_tensor(REAL_STUDY, with_inlinevf=True)
    for row0, col0 in ((64, 64), (48, 72)):
        gap, labels_differing = _window_against_crop(bundled_module, participant.image, row0, col0)
        assert gap <= 1e-5 and labels_differing == 0


def test_bundled_handler_takes_one_window_on_synthetic_participants(tmp_path):
    """With the InlineVF hint every participant takes one window, and its labels are those of the whole
    field of view inside the kept window (bar coin tosses)."""
    from lvmass.storage.models import bundled_model_dir
    from lvmass.synth.cohort import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", participants=2, seed=4244, fidelity="lite")
    handler = SavedModelHandler(bundled_model_dir(contracts.MODEL_KIND_SEG, "paper"),
                                kind=contracts.MODEL_KIND_SEG)
    model, calls = count_calls(handler.load_model())
    assert model.serve_window is not None
    for path in sorted(cohort.zips_dir.glob("*.zip")):
        participant = participant_tensor(path, with_inlinevf=True)
        assert lv_hint_box(participant) is not None
        calls.clear()
        [result] = handler.run_inference([participant], model)
        assert [name for name, _ in calls] == ["window"]
        whole = model.serve(image=participant.image[None], spacing_mm=np.float32([participant.spacing_mm]))
        whole_labels = np.argmax(whole["probabilities"].numpy()[0], axis=-1)
        kept = result.inference.any(axis=2)
        assert kept.any()
        rows, cols = np.nonzero(kept)
        window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        assert int((result.inference[window] != whole_labels[window]).sum()) <= 3


# --- trainer.windowed on random networks ---------------------------------------------------------------


@pytest.mark.parametrize("levels", [(2, 4), (2, 4, 4)])
def test_windowed_forward_equals_the_crop_on_random_unets(levels):
    import keras

    from trainer import models
    from trainer.export import size_agnostic_twin
    from trainer.windowed import windowed_forward

    keras.utils.set_random_seed(len(levels))
    network = size_agnostic_twin(models.build_ml4h_seg(models.seg_config(
        "cpu", stem_filters=2, dense_blocks=levels, convs_per_block=1)))
    image = np.random.default_rng(5).standard_normal((1, 96, 112, 13, 1)).astype(np.float32)
    whole = network({"image": image}, training=False).numpy()
    for margin in (0, 5, 32):
        window = np.asarray(windowed_forward(network, image, margin))
        inner = whole[:, margin:whole.shape[1] - margin, margin:whole.shape[2] - margin]
        assert window.shape == inner.shape
        np.testing.assert_allclose(window, inner, rtol=0, atol=1e-6)


def test_windowed_refuses_what_it_cannot_window():
    import keras

    from trainer.windowed import window_demands

    image = keras.Input((None, None, 13, 1), name="image")
    strided = keras.layers.Conv3D(2, 3, strides=(2, 2, 1), padding="same", name="strided")(image)
    with pytest.raises(ValueError, match="strided: windowed inference needs stride-1 'same' convolutions"):
        window_demands(keras.Model({"image": image}, strided), 8)
    pointwise = keras.layers.Conv3D(2, 1, name="pointwise")(image)
    pooled = keras.layers.GlobalAveragePooling3D(name="pooled")(pointwise)
    with pytest.raises(ValueError, match=r"pooled \(GlobalAveragePooling3D\) is not supported"):
        window_demands(keras.Model({"image": image}, pooled), 8)


# --- the pipeline: --seg_field_of_view -----------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_crop_and_whole_field_of_view_give_the_same_masses(tmp_path):
    """The default crop and ``--seg_field_of_view=whole`` (the paper's way) write the same ML4H_seg
    masses; the summary's counters say which path each participant took."""
    import pyarrow.parquet as pq

    from beam_pipeline.pipeline import run
    from lvmass.synth.cohort import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", participants=2, seed=4245, fidelity="lite")
    masses, counters = {}, {}
    for view in ("crop", "whole"):
        out = tmp_path / view
        summary = run([f"--input={cohort.zips_dir}/*.zip", f"--phenotypes={cohort.phenotypes_csv}",
                       f"--output={out}", "--methods=ml4h_seg,inlinevf", f"--seg_field_of_view={view}",
                       "--model_seg=bundled:ml4h_seg_paper", "--runner=FnApiRunner"])
        table = pq.read_table(next((out / "lvmass" / "method=ml4h_seg").glob("*.parquet"))).to_pydict()
        masses[view] = dict(zip(table["participant_id"], table["lv_mass_raw_g"], strict=True))
        counters[view] = {k: v for k, v in summary["counters"].items() if k.startswith("ml4h_seg_")}
    assert len(masses["crop"]) == 2
    assert masses["crop"] == pytest.approx(masses["whole"], abs=0.05)  # at most one coin-toss voxel
    assert counters["crop"] == {"ml4h_seg_segmented_crop_first_pass": 2}
    assert counters["whole"] == {}
