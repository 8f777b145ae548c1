"""Whole synthetic short-axis stacks from the slice generator: one heart, one chest, one acquisition.

Why: the default models learn from single slices (:mod:`lvmass.synth.slice_image`), but what a user gets is a
participant's mass from a stack. A stack here is the same scene cut at heights ``slice_spacing_mm`` apart
from above the base to beyond the apex, every slice rendered with the same appearance and acquisition (its
own noise), handed over as the decoder would hand it (:class:`lvmass.core.study.DecodedStudy`: standard
view, base to apex, positions along the normal), with the truth of each slice.

Truth: each slice's myocardial area is averaged over its slab (the planes the renderer draws, papillary
muscles and trabeculae as cavity), and the true LV mass is ``sum_k area_k x slice spacing x 1.05 g/mL``, the
paper's rule on a perfect partial-volume segmentation; cavity volume alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lvmass.core import contracts
from lvmass.core.study import DecodedStudy
from lvmass.synth import slice_image as si
from lvmass.synth import slice_scene as ss


@dataclass(frozen=True)
class StackRanges:
    """The stack's geometry: slice spacing and thickness (mm)."""

    slice_spacing_mm: tuple[float, float] = (6.0, 10.0)
    slice_gap_mm: tuple[float, float] = (0.0, 2.0)  # thickness = spacing - gap


@dataclass(frozen=True)
class SyntheticStack:
    """A decoded-like study and its truth."""

    study: DecodedStudy
    myocardium_area_mm2: tuple[float, ...]  # per slice, slab-averaged
    cavity_area_mm2: tuple[float, ...]
    acquired_pixel_mm: float
    seed: tuple[int, ...]

    @property
    def true_lv_mass_g(self) -> float:
        volume_ml = sum(self.myocardium_area_mm2) * self.study.slice_spacing_mm / 1000.0
        return volume_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML

    @property
    def true_cavity_volume_ml(self) -> float:
        return sum(self.cavity_area_mm2) * self.study.slice_spacing_mm / 1000.0


@dataclass(frozen=True)
class StackParticipant:
    """One participant's heart, chest and acquisition, drawn from its seed alone."""

    scene: ss.SliceScene
    appearance: si.Appearance
    appearance_rng: np.random.Generator  # what is left of it draws the stack's slice geometry
    noise_rng: np.random.Generator  # each rendered slice's noise, in slice order


def draw_participant(
    seed: Sequence[int],
    *,
    scene_ranges: ss.SceneRanges | None = None,
    appearance_ranges: si.AppearanceRanges | None = None,
    pixel_mm: float | None = None,
) -> StackParticipant:
    """The participant of :func:`draw_stack` (always with a heart); ``pixel_mm`` fixes the acquired pixel
    size and leaves the rest of the appearance the seed's. Other tools (``benchmarks/experts_wall_cap.py``)
    draw the evaluation cohort's participants through it, so they show the hearts the evaluation scores."""
    scene_rng, app_rng, noise_rng = si.sample_rngs(seed)
    scene = ss.draw_scene(
        scene_rng, dataclasses.replace(scene_ranges or ss.SceneRanges(), no_heart_prob=0.0), z_fraction=0.5
    )
    assert scene.heart is not None
    app = si.draw_appearance(app_rng, appearance_ranges or si.AppearanceRanges())
    if pixel_mm is not None:
        app = si.with_pixel_size(app, pixel_mm)
    return StackParticipant(scene=scene, appearance=app, appearance_rng=app_rng, noise_rng=noise_rng)


def render_slice(
    participant: StackParticipant,
    z_mm: float,
    slab_mm: float,
    ranges: si.AppearanceRanges,
    *,
    experts_endocardium: float | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The participant's slice at height ``z_mm`` (``si.render``'s image, fine fractions and box origin), with
    the targets' convention of ``ranges`` unless ``experts_endocardium`` says another."""
    at = dataclasses.replace(participant.scene, z_mm=z_mm, slab_mm=slab_mm)
    return si.render(
        at,
        participant.appearance,
        participant.noise_rng,
        supersample=ranges.supersample,
        subplanes=ranges.subplanes,
        experts_endocardium=ranges.experts_endocardium
        if experts_endocardium is None
        else experts_endocardium,
    )


def draw_stack(
    seed: Sequence[int],
    *,
    scene_ranges: ss.SceneRanges | None = None,
    appearance_ranges: si.AppearanceRanges | None = None,
    stack_ranges: StackRanges | None = None,
    pixel_mm: float | None = None,
) -> SyntheticStack:
    """One participant's end-diastolic stack from its seed alone; ``pixel_mm`` fixes the acquired pixel
    size (the heart, the chest and the rest of the appearance stay the seed's)."""
    ranges = appearance_ranges or si.AppearanceRanges()
    stack = stack_ranges or StackRanges()
    participant = draw_participant(
        seed, scene_ranges=scene_ranges, appearance_ranges=ranges, pixel_mm=pixel_mm
    )
    scene, app, app_rng = participant.scene, participant.appearance, participant.appearance_rng
    assert scene.heart is not None
    spacing = float(app_rng.uniform(*stack.slice_spacing_mm))
    thickness = spacing - float(app_rng.uniform(*stack.slice_gap_mm))
    apex = scene.heart.epi_apex_z_mm
    first = -float(app_rng.uniform(0.0, 0.8)) * spacing  # the most basal slice: at or above the base
    n = math.floor((apex + 0.5 * spacing - first) / spacing) + 1
    heights = [first + k * spacing for k in range(n)]
    images, myo, cavity = [], [], []
    for z in heights:
        stored, fractions, _ = render_slice(participant, z, thickness, ranges)
        fine_mm2 = (app.pixel_mm / ranges.supersample) ** 2
        images.append(stored)
        cavity.append(float(fractions[0].sum(dtype=np.float64)) * fine_mm2)
        myo.append(float(fractions[1].sum(dtype=np.float64)) * fine_mm2)
    study = DecodedStudy(
        eid=None,
        instance=None,
        source_uri=f"slice_stack:{tuple(seed)}",
        images=tuple(images),
        outlines=(None,) * n,
        pixel_spacing_mm=(app.pixel_mm, app.pixel_mm),
        slice_spacing_mm=spacing,
        slice_thickness_mm=thickness,
        slice_positions_mm=tuple(heights),
    )
    return SyntheticStack(
        study=study,
        myocardium_area_mm2=tuple(myo),
        cavity_area_mm2=tuple(cavity),
        acquired_pixel_mm=app.pixel_mm,
        seed=tuple(seed),
    )
