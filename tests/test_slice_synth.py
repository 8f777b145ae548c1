"""The synthetic short-axis slices of the default models (lvmass.synth.slice_scene, slice_image).

The oracle is geometry: a heart drawn without harmonics is two circles, so its myocardial area is
pi (r_epi^2 - r_endo^2) averaged over the slab's planes, computed here from the scene's own radii; the
targets the renderer carries to the model's grid must hold that area, and the labels must sit where the
renderer says the LV is.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from lvmass.core import contracts
from lvmass.synth import slice_image as si
from lvmass.synth import slice_scene as ss

GRID_MM = 1.5


def _plain_scene(seed: int = 3, z_fraction: float = 0.45) -> ss.SliceScene:
    """A scene whose LV is two concentric circles: no harmonics, ellipticity, regional change, papillary
    muscles or trabeculae, no deformation, no RV reaching it."""
    scene = ss.draw_scene(np.random.default_rng(seed), z_fraction=z_fraction)
    heart = dataclasses.replace(
        scene.heart,
        ellipticity=0.0,
        endo_harmonics=ss.Harmonics(),
        wall_harmonics=ss.Harmonics(),
        thickening=None,
        infarct=None,
        papillaries=(),
        trabeculae=(),
        trabecular_band_mm=0.0,
        rv_end_z_mm=0.0,
        coronaries=(),
    )
    still = ss.Deformation((0.0, 0.0), 50.0, np.zeros((2, 2)), np.zeros((2, 2)))
    return dataclasses.replace(scene, heart=heart, deformation=still, rotation=0.0, mirrored=False)


def _slab_area_mm2(scene: ss.SliceScene, planes: int) -> float:
    heart = scene.heart
    offsets = [((p + 0.5) / planes - 0.5) * scene.slab_mm for p in range(planes)]
    return float(
        np.mean(
            [
                math.pi
                * (
                    heart.epicardial_radius_at(scene.z_mm + o) ** 2
                    - heart.cavity_radius_at(scene.z_mm + o) ** 2
                )
                for o in offsets
            ]
        )
    )


def _render(scene: ss.SliceScene, pixel_mm: float, seed: int = 0):
    ranges = si.AppearanceRanges()
    app = si.draw_appearance(np.random.default_rng(seed), ranges)
    app = dataclasses.replace(
        app,
        pixel_mm=pixel_mm,
        fov_px=(int(300 / pixel_mm), int(340 / pixel_mm)),
        lv_px=(140 / pixel_mm, 180 / pixel_mm),
        wrap=None,
    )
    stored, fractions, origin = si.render(scene, app, np.random.default_rng(seed + 1))
    return app, stored, fractions, origin


class TestScene:
    def test_same_seed_same_scene_and_labels(self):
        a = ss.draw_scene(np.random.default_rng(7))
        b = ss.draw_scene(np.random.default_rng(7))
        yy, xx = np.mgrid[-60:60:1.0, -60:60:1.0]
        la, _ = ss.scene_labels(a, xx, yy)
        lb, _ = ss.scene_labels(b, xx, yy)
        np.testing.assert_array_equal(la[0], lb[0])
        assert la[0].max() < ss.NUM_LABELS

    def test_target_of_every_label(self):
        assert ss.TARGET_OF_LABEL[ss.LV_BLOOD] == contracts.LV_CAVITY
        assert ss.TARGET_OF_LABEL[ss.LV_TRABECULAE] == contracts.LV_CAVITY  # muscle in the cavity is cavity
        assert ss.TARGET_OF_LABEL[ss.LV_MYOCARDIUM] == contracts.MYOCARDIUM
        others = [k for k in range(ss.NUM_LABELS) if k not in ss.LV_LABELS]
        assert not ss.TARGET_OF_LABEL[others].any()

    def test_no_lv_above_the_base_and_beyond_the_apex(self):
        scene = _plain_scene()
        yy, xx = np.mgrid[-80:80:1.0, -80:80:1.0]
        for z in (-10.0, scene.heart.epi_apex_z_mm + 1.0):
            [labels], _ = ss.scene_labels(dataclasses.replace(scene, z_mm=z), xx, yy)
            assert not np.isin(labels, ss.LV_LABELS).any()

    def test_trabecular_band_is_cavity_against_the_wall(self):
        scene = ss.draw_scene(np.random.default_rng(11), z_fraction=0.5)
        heart = dataclasses.replace(
            scene.heart, trabecular_band_mm=6.0, trabecular_fill=0.5, papillaries=(), trabeculae=()
        )
        scene = dataclasses.replace(scene, heart=heart)
        yy, xx = np.mgrid[-70:70:0.5, -70:70:0.5]
        [labels], _ = ss.scene_labels(scene, xx, yy)
        assert (labels == ss.LV_TRABECULAE).sum() > 50
        # every trabecula touches blood or wall: none floats outside the cavity
        from scipy import ndimage

        trabeculae = labels == ss.LV_TRABECULAE
        neighbours = ndimage.binary_dilation(trabeculae) & ~trabeculae
        assert np.isin(labels[neighbours], (ss.LV_BLOOD, ss.LV_MYOCARDIUM, ss.LV_TRABECULAE)).all()

    def test_bad_ranges_are_refused(self):
        with pytest.raises(ValueError, match="cavity_radius_mm must be"):
            ss.SceneRanges(cavity_radius_mm=(30.0, 20.0))
        with pytest.raises(ValueError, match="no_heart_prob must be in"):
            ss.SceneRanges(no_heart_prob=1.5)


class TestTargets:
    @pytest.mark.parametrize("pixel_mm", [1.3, 1.8, 2.2])
    def test_myocardium_fraction_holds_the_true_area(self, pixel_mm):
        """The fractions carried to the model's grid sum to the slab-averaged annulus area (2%: pixel
        fractions of a 2x supersampled circle, three planes across the slab, as rendered)."""
        scene = _plain_scene()
        app, stored, fractions, origin = _render(scene, pixel_mm)
        _, labels, myo, centre = si.grid_sample(stored, fractions, origin, app, GRID_MM, 2)
        truth = _slab_area_mm2(scene, 3)
        assert myo.sum() * GRID_MM**2 == pytest.approx(truth, rel=0.02)
        # the argmax labels hold the same area to a few percent (a ring 3-10 px wide, its edge pixels split)
        assert (labels == contracts.MYOCARDIUM).sum() * GRID_MM**2 == pytest.approx(truth, rel=0.06)
        rows, cols = np.nonzero(labels != contracts.BACKGROUND)
        assert rows.mean() == pytest.approx(centre[0], abs=1.0)
        assert cols.mean() == pytest.approx(centre[1], abs=1.0)

    def test_image_is_normalised_like_the_pipeline(self):
        sample = si.draw_sample((5, 0, 1), grid_mm=GRID_MM)
        acquired = sample.image[sample.image != 0]
        assert sample.image.shape == (256, 256)
        assert abs(float(acquired.mean())) < 0.05
        assert float(acquired.std()) == pytest.approx(1.0, abs=0.05)
        assert sample.labels.dtype == np.uint8 and sample.labels.max() <= contracts.MYOCARDIUM

    def test_same_seed_same_sample(self):
        a = si.draw_sample((2, 0, 9), grid_mm=GRID_MM)
        b = si.draw_sample((2, 0, 9), grid_mm=GRID_MM)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)

    def test_pixel_size_changes_the_image_not_the_anatomy(self):
        """One scene at 1.3, 1.8 and 2.2 mm: the true area is the scene's, whatever the acquisition."""
        areas = [
            si.draw_sample((4, 0, 3), grid_mm=GRID_MM, pixel_mm=p, z_fraction=0.4).myocardium_area_mm2
            for p in (1.3, 1.8, 2.2)
        ]
        assert max(areas) / min(areas) < 1.03


class TestExpertsEndocardium:
    def test_the_lv_stays_and_the_cavity_reaches_the_wall_plateau(self):
        """A blurred disc in a ring: with the convention the cavity grows into the ring by about the blur,
        never past the LV's outline, and cavity + myocardium is unchanged pixel by pixel."""
        yy, xx = np.mgrid[0:80, 0:80]
        r = np.hypot(yy - 40, xx - 40)
        cavity = np.clip(20.5 - r, 0.0, 1.0)  # a disc of radius 20 with a one-pixel soft edge
        lv = np.clip(30.5 - r, 0.0, 1.0)
        fractions = np.stack([cavity, lv - cavity]).astype(np.float32)
        out = si.experts_cavity(fractions, blur_px=2.0, threshold=0.15)
        np.testing.assert_allclose(out.sum(axis=0), fractions.sum(axis=0), atol=1e-6)
        grown = (out[0] >= 0.5).sum() - (fractions[0] >= 0.5).sum()
        ring_width = 2 * np.pi * 21  # pixels of one ring one pixel wide at radius 21
        assert 1.0 * ring_width < grown < 3.5 * ring_width  # 1-3 pixels, about the blur
        assert (out[1] > 0).any() and not (out[0][r > 31] > 0).any()
        assert si.experts_cavity(fractions, 2.0, 1.1)[0].sum() == pytest.approx(fractions[0].sum())

    def test_a_thin_wall_keeps_most_of_its_width(self):
        """A 4-pixel wall under a blur that would reach 3 pixels into it: the cavity takes at most a quarter
        of the wall (one pixel), and a thick wall under the same blur still loses about the blur."""
        yy, xx = np.mgrid[0:80, 0:80]
        r = np.hypot(yy - 40, xx - 40)
        cavity = (r <= 20).astype(np.float32)

        def grown_px(wall_px: int) -> float:
            lv = (r <= 20 + wall_px).astype(np.float32)
            out = si.experts_cavity(np.stack([cavity, lv - cavity]), blur_px=3.0, threshold=0.15)
            return float((out[0] >= 0.5).sum() - cavity.sum()) / (2 * np.pi * 21)

        assert 0.5 < grown_px(4) < 1.5  # at most a quarter of the wall (plus the ring's curvature)
        assert grown_px(16) > 2.5  # the cap does not bind: the blur's reach
        assert si.EXPERTS_MAX_WALL_FRACTION == 0.25


def test_the_wall_cap_figure_shows_a_thin_wall_kept_and_a_thick_one_unchanged(tmp_path):
    """``benchmarks/experts_wall_cap.py`` on its two evaluation participants: the cap gives the 3.5 mm wall
    back most of what the fixed reach took, leaves the 10 mm wall as the fixed reach made it, and the figure
    is written."""
    from tests.benchmark_scripts import load_benchmark

    script = load_benchmark("experts_wall_cap")
    thin, thick = (script.equator_slice(i) for i in script.PARTICIPANTS)
    assert thin["wall_mm"] < 4.0 < 10.0 < thick["wall_mm"]
    drawn, no_cap, cap = (float(thin[k][1].sum()) for k in ("drawn", "no_cap", "cap"))
    assert no_cap < 0.6 * drawn and 0.7 * drawn < cap < drawn
    np.testing.assert_array_equal(thick["cap"], thick["no_cap"])
    assert float(thick["cap"][1].sum()) < float(thick["drawn"][1].sum())
    script.draw([thin, thick], tmp_path / "cap.png")
    assert (tmp_path / "cap.png").stat().st_size > 10_000


def test_a_stack_is_its_participant_rendered_slice_by_slice():
    """``draw_stack``'s first slice is ``render_slice`` of ``draw_participant`` of the same seed, at the
    stack's first height and thickness: one definition of a stack's participant, which the wall-cap figure
    uses to show the evaluation cohort's own hearts."""
    from lvmass.synth.slice_stack import draw_participant, draw_stack, render_slice

    seed = (2026, 3, 1)
    stack = draw_stack(seed, pixel_mm=2.0)
    participant = draw_participant(seed, pixel_mm=2.0)
    assert participant.appearance.pixel_mm == stack.acquired_pixel_mm == 2.0
    image, fractions, _ = render_slice(
        participant, stack.study.slice_positions_mm[0], stack.study.slice_thickness_mm, si.AppearanceRanges()
    )
    np.testing.assert_array_equal(image, stack.study.images[0])
    fine_mm2 = (2.0 / si.AppearanceRanges().supersample) ** 2
    assert float(fractions[1].sum(dtype=np.float64)) * fine_mm2 == stack.myocardium_area_mm2[0]
