"""The synthetic-anatomy (SynthSeg-style) ML4H_seg: label maps, appearance randomisation, the tensor
contract of its (image, labels) pairs, a tiny fit exported for the pipeline, and the real-study Dice.

Kept small on purpose (2 CPU cores): coarse acquisitions, few slices, a tiny network, two steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import contracts
from beam_pipeline.tensor import build_image_tensor, resample_slice
from lvmass.synth import labelmaps as lm
from lvmass.synth.anatomy import planes_areas_mm2
from trainer import synthseg as ss

ROOT = Path(__file__).resolve().parent.parent
FAST = ss.SampleConfig(
    geometry=lm.GeometryRanges(n_slices=(6, 7)),
    appearance=ss.AppearanceRanges(pixel_mm=(1.9, 2.2)),
    supersample=1,
    subplanes=1,
)


def cavity_volume_ml(anatomy) -> float:
    """The LV cavity's volume integrated continuously along its axis (independent of any rasterising)."""
    z = np.arange(0.0, anatomy.epi_apex_z_mm, 1.0) + 0.5
    return float(planes_areas_mm2(anatomy, z)[1].sum()) * 1.0 / 1000.0


class TestLabelMaps:
    @pytest.fixture(scope="class")
    def scenes(self):
        return [lm.draw_label_scene(np.random.default_rng(seed)) for seed in range(200)]

    def test_every_structure_is_labelled(self):
        stack = lm.rasterise_scene(
            lm.draw_label_scene(np.random.default_rng(0)), 2.2, supersample=1, subplanes=1
        )
        seen: set[int] = set()
        for sl in stack.slices:
            seen |= set(np.unique(sl.coarse).tolist()) | set(np.unique(sl.fine).tolist())
        assert seen == set(range(lm.NUM_LABELS)), [
            lm.LABEL_NAMES[k] for k in set(range(lm.NUM_LABELS)) - seen
        ]

    def test_geometry_spans_the_ranges(self, scenes):
        ranges = lm.GeometryRanges()
        edv = [cavity_volume_ml(s.heart.anatomy) for s in scenes]
        wall = [s.heart.anatomy.epi.radius_mm - s.heart.anatomy.endo.radius_mm for s in scenes]
        counts = [s.plan.n_slices for s in scenes]
        spacing = [s.plan.slice_spacing_mm for s in scenes]
        tilt = [math.degrees(math.acos(s.plan.plane_n[2])) for s in scenes]
        # small to dilated hearts: the drawn volume is a half ellipsoid's, the true one a truncated shell's
        assert min(edv) < 70.0 and 300.0 < max(edv) < 420.0
        assert min(wall) < 5.0 and max(wall) > 16.0  # thin (and infarcted) walls to severe hypertrophy
        assert any(s.heart.infarct is not None for s in scenes) and any(
            s.heart.infarct is None for s in scenes
        )
        assert min(counts) == ranges.n_slices[0] and max(counts) == ranges.n_slices[1]
        assert ranges.slice_spacing_mm[0] <= min(spacing) and max(spacing) <= ranges.slice_spacing_mm[1]
        assert all(s.plan.slice_thickness_mm <= s.plan.slice_spacing_mm for s in scenes)
        assert max(tilt) > 20.0 and max(tilt) <= ranges.tilt_deg[1] + 1e-6
        # the LV lands left and right, above and below the field of view's centre
        offsets = np.array([s.plan.centre_offset_mm for s in scenes])
        assert (offsets[:, 0] > 0).any() and (offsets[:, 0] < 0).any()
        assert (offsets[:, 1] > 0).any() and (offsets[:, 1] < 0).any()

    def test_papillary_muscles_are_cavity_in_the_target(self):
        assert lm.TARGET_OF_LABEL[lm.LV_PAPILLARY] == contracts.LV_CAVITY
        assert lm.TARGET_OF_LABEL[lm.LV_BLOOD] == contracts.LV_CAVITY
        assert lm.TARGET_OF_LABEL[lm.LV_MYOCARDIUM] == contracts.MYOCARDIUM
        others = set(range(lm.NUM_LABELS)) - {lm.LV_PAPILLARY, lm.LV_BLOOD, lm.LV_MYOCARDIUM}
        assert all(lm.TARGET_OF_LABEL[k] == contracts.BACKGROUND for k in others)

    def test_truth_does_not_depend_on_the_acquired_pixel(self):
        scene = lm.draw_label_scene(np.random.default_rng(4))
        masses = [
            lm.rasterise_scene(scene, p, supersample=1, subplanes=2).true_lv_mass_g() for p in (1.3, 2.2)
        ]
        assert masses[0] == pytest.approx(masses[1], rel=0.02)  # one geometry, two pixel grids
        assert 20.0 < masses[0] < 500.0


class TestAppearance:
    def test_a_seed_gives_one_sample(self):
        a, b = (ss.make_sample(ss.sample_seed(7, ss.PURPOSE_TRAIN, 3), FAST) for _ in range(2))
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.true_lv_mass_g == b.true_lv_mass_g

    def test_every_sample_draws_its_own_appearance(self):
        ranges = ss.AppearanceRanges()
        draws = [ss.draw_appearance(np.random.default_rng(seed), ranges) for seed in range(60)]
        assert len({d.means for d in draws}) == len(draws)
        assert {d.bssfp for d in draws} == {True, False}
        assert {d.fov_mask for d in draws} == {"none", "circle", "crop"}
        assert any(d.ghost for d in draws) and any(d.coil for d in draws)
        assert (
            ranges.gamma[0] <= min(d.gamma for d in draws) and max(d.gamma for d in draws) <= ranges.gamma[1]
        )
        a = ss.make_sample(ss.sample_seed(7, ss.PURPOSE_TRAIN, 0), FAST)
        b = ss.make_sample(ss.sample_seed(7, ss.PURPOSE_TRAIN, 1), FAST)
        assert not np.array_equal(a.labels, b.labels) and a.acquired_pixel_mm != b.acquired_pixel_mm


def revealing_appearance() -> ss.Appearance:
    """LV cavity (and papillary muscles) 1, everything else 0: no noise, blur, bias, ghost or mask."""
    means = tuple(1.0 if k in (lm.LV_BLOOD, lm.LV_PAPILLARY) else 0.0 for k in range(lm.NUM_LABELS))
    return ss.Appearance(
        means=means,
        sds=(0.0,) * lm.NUM_LABELS,
        bssfp=False,
        texture_amplitude=0.0,
        blur_sigma_px=(0.0, 0.0),
        bias_sd=0.0,
        coil=None,
        slice_gain_sd=0.0,
        gamma=1.0,
        snr=1e9,
        ghost=None,
        fov_mask="none",
        fov_mask_params=(),
        signal_max=1000.0,
    )


class TestTensorContract:
    @pytest.fixture(scope="class")
    def scene(self):
        return lm.draw_label_scene(np.random.default_rng(11), lm.GeometryRanges(n_slices=(6, 7)))

    def test_pairs_are_in_the_contract_layout(self):
        sample = ss.make_sample(ss.sample_seed(3, ss.PURPOSE_TRAIN, 0), FAST)
        assert sample.image.shape == contracts.TENSOR_SHAPE[:3] and sample.image.dtype == np.float32
        assert sample.labels.shape == contracts.LABEL_VOLUME_SHAPE and sample.labels.dtype == np.uint8
        assert set(np.unique(sample.labels)) <= set(contracts.LABEL_MAP.values())
        assert sample.spacing_mm[:2] == pytest.approx((ss.DEFAULT_GRID_MM, ss.DEFAULT_GRID_MM))
        n = sample.n_slices_used
        assert not sample.image[:, :, n:].any() and not sample.labels[:, :, n:].any()  # slice padding
        acquired = sample.image[:, :, :n] != 0
        assert not (sample.labels[:, :, :n][~acquired]).any()  # labels only where the image was acquired
        assert sample.labels[:, :, :n].any()

    @pytest.mark.parametrize("pixel_mm", [1.3, 2.2])
    def test_labels_move_with_the_image(self, scene, pixel_mm):
        """A cavity-only appearance, through the pipeline's tensor function: where the image is bright is
        where the labels say cavity, at any acquired pixel size (one grid)."""
        stack = lm.rasterise_scene(scene, pixel_mm, supersample=2, subplanes=1)
        sample = ss.sample_from_stack(
            stack, revealing_appearance(), np.random.default_rng(0), grid_mm=ss.DEFAULT_GRID_MM
        )
        n = sample.n_slices_used
        image = sample.image[:, :, :n]
        bright = image > (image.max() + image.min()) / 2
        cavity = sample.labels[:, :, :n] == contracts.LV_CAVITY
        overlap = 2 * np.logical_and(bright, cavity).sum() / (bright.sum() + cavity.sum())
        assert overlap > 0.9  # one grid pixel of edge disagreement at most

    def test_the_label_grid_is_the_pipelines_image_grid(self, scene):
        """grid_labels carries the fine fractions exactly as beam_pipeline.tensor.resample_slice carries a
        whole fine image: the same output size and the same values (up to the border's filter mode)."""
        pixel_mm, k = 1.6, 2
        stack = lm.rasterise_scene(scene, pixel_mm, supersample=k, subplanes=1)
        sl = next(s for s in stack.slices if s.roi[2] > s.roi[0])
        r0, c0, r1, c1 = sl.roi
        cavity, _ = sl.target_fractions()
        whole = np.zeros((stack.shape[0] * k, stack.shape[1] * k), dtype=np.float32)
        whole[r0 * k : r1 * k, c0 * k : c1 * k] = cavity
        fine_mm = pixel_mm / k
        by_pipeline = resample_slice(whole, (fine_mm, fine_mm), (ss.DEFAULT_GRID_MM, ss.DEFAULT_GRID_MM))
        labels = ss.grid_labels(sl, stack.shape, pixel_mm, k, ss.DEFAULT_GRID_MM)
        assert labels.shape == by_pipeline.shape
        images = [
            np.random.default_rng(k).random(stack.shape, dtype=np.float32) for k in range(stack.n_slices)
        ]
        tensor = build_image_tensor(ss.decoded_study(stack, images, "t"), grid_pixel_mm=ss.DEFAULT_GRID_MM)
        assert tensor.in_plane_scale == pytest.approx((pixel_mm / ss.DEFAULT_GRID_MM,) * 2)
        # the image occupies exactly the placed label grid's window
        rows, cols = labels.shape
        assert int((tensor.image[:, :, 0, 0] != 0).sum()) == rows * cols
        pipeline_cavity = by_pipeline > 0.5
        ours = labels == contracts.LV_CAVITY
        assert 2 * np.logical_and(pipeline_cavity, ours).sum() / (pipeline_cavity.sum() + ours.sum()) > 0.97

    def test_target_labels_measure_the_true_mass(self):
        samples = [ss.make_sample(ss.sample_seed(5, ss.PURPOSE_TRAIN, i), FAST) for i in range(3)]
        for sample in samples:
            measured = ss.measured_mass_g(sample.labels, sample.spacing_mm)
            assert measured == pytest.approx(sample.true_lv_mass_g, rel=0.08, abs=3.0)


class TestSampleStream:
    def test_in_process_batches_are_reproducible(self):
        batches = []
        for _ in range(2):
            stream = ss.SampleStream(FAST, seed=3, batch_size=2, crop_px=32, workers=0)
            batches.append(stream.batch())
        (image_a, labels_a), (image_b, labels_b) = batches
        assert image_a.shape == (2, 32, 32, contracts.TENSOR_SLICES, 1) and image_a.dtype == np.float32
        assert labels_a.shape == (2, 32, 32, contracts.TENSOR_SLICES) and labels_a.dtype == np.int32
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(labels_a, labels_b)

    def test_forked_workers_draw_on_the_fly(self):
        stream = ss.SampleStream(FAST, seed=3, batch_size=2, crop_px=32, workers=1, max_uses=2).start()
        try:
            batches = [stream.batch() for _ in range(3)]
        finally:
            stream.close()
        assert all(images.shape == (2, 32, 32, contracts.TENSOR_SLICES, 1) for images, _ in batches)
        assert all(set(np.unique(labels)) <= {0, 1, 2} for _, labels in batches)
        assert stream.samples_made >= 3  # each sample gives at most two crops: six crops need three samples


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthseg")
    run_dir, export_dir = root / "run", root / "export"
    code = ss.main(
        [
            "fit",
            "--out",
            str(run_dir),
            "--steps",
            "2",
            "--preset",
            "tiny",
            "--batch_size",
            "1",
            "--crop_px",
            "32",
            "--workers",
            "0",
            "--validation_samples",
            "0",
            "--steps_per_epoch",
            "1",
            "--max_slices",
            "6",
            "--min_pixel_mm",
            "1.9",
            "--max_pixel_mm",
            "2.2",
            "--supersample",
            "1",
            "--subplanes",
            "1",
            "--seed",
            "5",
        ]
    )
    assert code == 0
    assert ss.main(["export", "--run_dir", str(run_dir), "--export_dir", str(export_dir)]) == 0
    return run_dir, export_dir


@pytest.mark.slow
class TestTinyFit:
    def test_fit_runs_end_to_end(self, exported):
        import json

        run_dir, _ = exported
        summary = json.loads((run_dir / ss.FIT_FILENAME).read_text())
        assert summary["hyperparameters"]["steps_run"] == 2
        assert len(summary["history"]["loss"]) == 2 and all(
            math.isfinite(v) for v in summary["history"]["loss"]
        )
        assert (
            summary["training_data"]["samples_made"] >= 2
        )  # Keras may draw one batch ahead to see its shapes

    def test_scoring_against_the_truth(self):
        """What fit's validation and ``evaluate`` compute, with a predictor that returns the targets."""
        samples = [ss.make_sample(ss.sample_seed(6, ss.PURPOSE_VALIDATION, i), FAST) for i in range(3)]
        scores = ss.score_samples(samples, lambda sample: sample.labels)
        assert (
            scores["n"] == 3 and scores["cavity_dice_mean"] == 1.0 and scores["myocardium_dice_mean"] == 1.0
        )
        assert scores["mass_vs_truth"] == scores["target_labels_vs_truth"]
        assert scores["mass_vs_truth"]["mae_g"] < 5.0

    def test_card_says_true_anatomy_and_the_grid(self, exported):
        from beam_pipeline.inference import read_model_card

        _, export_dir = exported
        card = read_model_card(str(export_dir), expected_kind=contracts.MODEL_KIND_SEG)
        assert card.label_source == "true_anatomy" and card.trained_on_synthetic_data
        assert card.pixel_spacing_mm == pytest.approx(ss.DEFAULT_GRID_MM)
        assert card.training_pixel_spacing_mm == pytest.approx([1.9, 2.2])  # the run's acquired range
        assert card.calibration == {}

    def test_the_pipelines_handler_serves_it(self, exported):
        from beam_pipeline.inference import ModelInput, SavedModelHandler

        _, export_dir = exported
        handler = SavedModelHandler(str(export_dir), kind=contracts.MODEL_KIND_SEG)
        model = handler.load_model()
        sample = ss.make_sample(ss.sample_seed(9, ss.PURPOSE_EVALUATION, 0), FAST)
        example = ModelInput(sample.image[..., None], np.asarray(sample.spacing_mm, dtype=np.float32))
        [result] = handler.run_inference([example], model)
        assert result.inference.shape == contracts.LABEL_VOLUME_SHAPE and result.inference.dtype == np.uint8


