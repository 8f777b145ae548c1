"""One synthetic participant, end to end, in memory: demographics, anatomy, images, InlineVF contours,
DICOMs, the zip, and the ground truth. Nothing here touches the disk.

Every participant's randomness derives from ``(seed, eid)`` alone, so a cohort is the same whatever
the number of workers, and a test can rebuild any participant on its own.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from lvmass.core.contracts import MYOCARDIAL_DENSITY_G_PER_ML, SAX_FIELD_ID
from lvmass.core.mass import bsa_dubois_m2
from lvmass.synth import dicom_writer as dw
from lvmass.synth.anatomy import (
    N_PHASES,
    SLICE_SPACING_MM,
    SLICE_THICKNESS_MM,
    LVAnatomy,
    TrueVolumes,
    build_anatomy,
    true_volumes,
)
from lvmass.synth.config import SynthConfig
from lvmass.synth.inlinevf import (
    assign_failure_slices,
    contoured,
    draw_inlinevf,
    outline_labels_myocardium,
    rasterise,
    raw_mass_g,
    slice_curves,
)
from lvmass.synth.population import Demographics, draw_demographics, draw_diseases, fit_disease_model
from lvmass.synth.render import (
    Appearance,
    Body,
    HeartSlice,
    bias_field,
    draw_appearance,
    draw_body,
    plane_points,
    quantise,
    render_background,
    rician,
    smooth_texture,
)
from lvmass.synth.vectors import rotate as _rotate
from lvmass.synth.vectors import unit as _unit

SAX_PREFIX = "CINE_segmented_SAX_b"
INLINEVF_DESCRIPTION = "CINE_segmented_SAX_InlineVF"
VF_RESULTS_DESCRIPTION = "Inline_VF_Results"
SINGLE_SERIES_DESCRIPTION = "sa_cine_stack"
LAX_SLICE_THICKNESS_MM = 6.0
_VAR_TAGS = {
    "SOPInstanceUID": 0x00080018,
    "SeriesTime": 0x00080031,
    "AcquisitionTime": 0x00080032,
    "ContentTime": 0x00080033,
    "SeriesDescription": 0x0008103E,
    "TriggerTime": 0x00181060,
    "ProtocolName": 0x00181030,
    "SeriesInstanceUID": 0x0020000E,
    "SeriesNumber": 0x00200011,
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "SliceLocation": 0x00201041,
    "PixelData": 0x7FE00010,
}
_OVERLAY_DATA = 0x60003000


@dataclass(frozen=True)
class ParticipantData:
    """A participant as the generator makes it: the zip's bytes and everything known about it."""

    eid: int
    zip_name: str
    zip_bytes: bytes
    phenotype: dict[str, Any]  # PHENOTYPE_COLUMNS
    truth: dict[str, Any]  # truth.csv row
    labels: np.ndarray  # uint8 (rows, cols, n_slices), ED, base to apex


def participant_rngs(seed: int, eid: int, n: int = 9) -> list[np.random.Generator]:
    """Independent random streams of one participant, from (seed, eid) only: population, anatomy,
    acquisition, appearance, InlineVF, noise, DICOM, extras, InlineVF contour jitter (child ``k`` of the
    seed sequence is the same whatever ``n``)."""
    if seed < 0 or eid < 0:
        raise ValueError(f"seed and eid must be non-negative. Received seed={seed}, eid={eid}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, eid]).spawn(n)]


@dataclass(frozen=True)
class Acquisition:
    """Scanner geometry of one participant's short-axis stack (patient LPS, mm).

    The images are in the usual short-axis display: seen from the apex, anterior wall at the top (``v``
    points posterior), the RV on the viewer's left (``u`` points to the patient's left). The slice normal
    ``u x v`` therefore points from the apex towards the base; the stack is planned base to apex along
    ``n = -(u x v)``, so b1 is the most basal slice and ImagePositionPatient moves 10 mm along ``n`` per
    slice.
    """

    rows: int
    cols: int
    pixel_spacing_mm: tuple[float, float]  # PixelSpacing (0028,0030): row spacing, column spacing
    u: np.ndarray  # row direction cosine (0020,0037)[0:3]: image right = patient left
    v: np.ndarray  # column direction cosine (0020,0037)[3:6]: image down = posterior
    n: np.ndarray  # the LV long axis, base -> apex: -(u x v)
    origin: np.ndarray  # heart origin (centre of the base plane), LPS
    centre_px: tuple[float, float]  # where the heart axis crosses the image (row, col), no misregistration
    z_nominal_mm: tuple[float, ...]  # slice centres along n relative to the origin
    z_anatomy_mm: tuple[float, ...]  # the anatomy's height in each slice (breath-hold offsets included)
    shifts_mm: tuple[tuple[float, float], ...]  # in-plane breath-hold displacement (x along u, y along v)

    def ipp(self, k: int) -> np.ndarray:
        """ImagePositionPatient (0020,0032): the centre of pixel (0, 0) of slice k."""
        return (
            self.origin
            + self.z_nominal_mm[k] * self.n
            - self.centre_px[1] * self.pixel_spacing_mm[1] * self.u
            - self.centre_px[0] * self.pixel_spacing_mm[0] * self.v
        )

    @property
    def n_slices(self) -> int:
        return len(self.z_nominal_mm)

    @property
    def iop(self) -> list[float]:
        return [*self.u.tolist(), *self.v.tolist()]

    @property
    def slice_normal(self) -> np.ndarray:
        """u x v, the normal of ImageOrientationPatient (apex -> base)."""
        return np.cross(self.u, self.v)


def _draw_orientation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tilted short-axis plane (u, v, n): n is the LV long axis, base -> apex (apex left, anterior,
    inferior); v (image down) is posterior within the plane, rotated a little; u = n x v (image right) is
    then towards the patient's left, so u x v = -n: the image is seen from the apex, RV on the left."""
    n = _unit(np.array([0.55, -0.45, -0.70]) + rng.normal(0.0, 0.08, 3))
    posterior = np.array([0.0, 1.0, 0.0])  # image down = posterior (anterior chest wall at the top)
    v = _unit(posterior - np.dot(posterior, n) * n)
    v = _unit(_rotate(v, n, float(rng.normal(0.0, 0.25))))
    u = np.cross(n, v)
    return u, v, n


def _draw_acquisition(
    rng: np.random.Generator,
    anatomy: LVAnatomy,
    orientation: tuple[np.ndarray, ...],
    scale: float,
    misregistration_mm: float,
) -> Acquisition:
    u, v, n = orientation
    spacing = round(float(np.clip(rng.normal(1.86, 0.07 * max(scale, 0.05)), 1.4, 2.6)), 6)
    rows = int(rng.choice([192, 198, 204, 208, 210]))
    cols = int(rng.choice([208, 208, 208, 192, 224]))
    # the field of view covers the chest, so the heart (anterior, left of the midline) sits a little above
    # and to the right of the image centre
    centre = (
        rows / 2.0 - 10.0 + float(np.clip(rng.normal(0, 7 * scale), -30, 30)),
        cols / 2.0 + 6.0 + float(np.clip(rng.normal(0, 7 * scale), -30, 30)),
    )
    # b1 is planned at the base: either just above it (no LV in its slab) or just below it (slab mostly in
    # the LV), never straddling the base plane at mid-slab
    z_first = float(rng.uniform(-12.0, -7.0)) if rng.random() < 0.4 else float(rng.uniform(2.5, 5.5))
    n_needed = math.floor((anatomy.epi_apex_z_mm - z_first) / SLICE_SPACING_MM) + 1
    n_slices = int(np.clip(n_needed + int(rng.choice([-1, 0, 0, 1, 1, 2])), 6, 13))
    z_nom = tuple(z_first + SLICE_SPACING_MM * k for k in range(n_slices))
    eps = rng.normal(0.0, misregistration_mm * 0.8 * scale, n_slices)
    shifts = rng.normal(0.0, misregistration_mm * scale, (n_slices, 2))
    origin = np.array([20.0, -30.0, 35.0]) + rng.normal(0.0, 12.0, 3)
    return Acquisition(
        rows=rows,
        cols=cols,
        pixel_spacing_mm=(spacing, spacing),
        u=u,
        v=v,
        n=n,
        origin=origin,
        centre_px=centre,
        z_nominal_mm=z_nom,
        z_anatomy_mm=tuple(float(z - e) for z, e in zip(z_nom, eps, strict=True)),
        shifts_mm=tuple((float(a), float(b)) for a, b in shifts),
    )


def slice_points_rel(acq: Acquisition, k: int, extra_shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """LPS coordinates (rows, cols, 3) of slice k's pixel centres relative to the heart origin as that
    slice's breath-hold displaced it: where each pixel lies in the anatomy and the chest (``Body``)."""
    pts = plane_points(acq.ipp(k), acq.u, acq.v, acq.rows, acq.cols, acq.pixel_spacing_mm)
    dx, dy = acq.shifts_mm[k][0] + extra_shift[0], acq.shifts_mm[k][1] + extra_shift[1]
    eps = acq.z_nominal_mm[k] - acq.z_anatomy_mm[k]
    disp = acq.origin + dx * acq.u + dy * acq.v + eps * acq.n
    return pts - disp.astype(np.float32)


def _lv_centre_px(
    acq: Acquisition, anatomy: LVAnatomy, k: int, extra_shift: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, float]:
    z = max(acq.z_anatomy_mm[k], 0.0)
    dx = acq.shifts_mm[k][0] + extra_shift[0] + anatomy.axis_drift_mm_per_mm[0] * z
    dy = acq.shifts_mm[k][1] + extra_shift[1] + anatomy.axis_drift_mm_per_mm[1] * z
    return acq.centre_px[0] + dy / acq.pixel_spacing_mm[0], acq.centre_px[1] + dx / acq.pixel_spacing_mm[1]


def _mr_dataset(study: dict[str, Any], acq: Acquisition, *, siemens: bool, spacing_between: bool) -> Dataset:
    """The fixed part of a short-axis cine instance (Siemens Aera 1.5 T bSSFP, UK Biobank protocol)."""
    ds = Dataset()
    when: dt.datetime = study["when"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "RETRO", "DIS2D"]
    ds.SOPClassUID = dw.MR_IMAGE_STORAGE
    ds.SOPInstanceUID = study["uid_placeholder"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S.%f")[:13]
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = ds.StudyTime
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS" if siemens else "GE MEDICAL SYSTEMS"
    ds.InstitutionName = "UK Biobank Imaging Centre" if siemens else "Other Hospital"
    ds.StationName = study["station_name"]
    ds.StudyDescription = "CardiacMR"
    ds.SeriesDescription = "placeholder"
    ds.ManufacturerModelName = "Aera" if siemens else "Signa"
    ds.PatientName = ""
    ds.PatientID = study["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = "F" if study["sex"] == "female" else "M"
    ds.PatientAge = f"{int(study['age']):03d}Y"
    ds.PatientSize = dw.ds_str(round(study["height_cm"] / 100.0, 2))
    ds.PatientWeight = dw.ds_str(round(study["weight_kg"], 1))
    ds.BodyPartExamined = "CHEST"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SK", "SS"] if not siemens else "SP"
    ds.ScanOptions = "CG"
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*tfi2d1_12" if siemens else "FIESTA"
    ds.SliceThickness = dw.ds_str(SLICE_THICKNESS_MM)
    ds.RepetitionTime = dw.ds_str(study["tr_ms"])
    ds.EchoTime = "1.1"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "63.676"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "1.5"
    if spacing_between:
        ds.SpacingBetweenSlices = dw.ds_str(SLICE_SPACING_MM)
    ds.EchoTrainLength = "1"
    ds.SoftwareVersions = "syngo MR D13A" if siemens else "24_LX_MR"
    ds.ProtocolName = "placeholder"
    ds.TriggerTime = "0"
    ds.NominalInterval = dw.ds_str(round(study["rr_ms"]))
    ds.HeartRate = dw.ds_str(round(60000.0 / study["rr_ms"]))
    ds.CardiacNumberOfImages = str(N_PHASES)
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, 208, 156, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = "80"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study["study_uid"]
    ds.SeriesInstanceUID = study["uid_placeholder"]
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = "1"
    ds.ImagePositionPatient = "0\\0\\0"
    ds.ImageOrientationPatient = dw.ds_multi(acq.iop)
    ds.FrameOfReferenceUID = study["frame_uid"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = "0"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = acq.rows
    ds.Columns = acq.cols
    ds.PixelSpacing = dw.ds_multi(acq.pixel_spacing_mm)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = dw.ds_str(study["window_centre"])
    ds.WindowWidth = dw.ds_str(study["window_width"])
    if siemens:
        dw.siemens_csa(ds)
    ds.add_new(0x7FE00010, "OW", b"\x00\x00")
    return ds


@dataclass(frozen=True)
class ParticipantTruth:
    """A participant without images: demographics, anatomy, scanner geometry and the truth measured on
    them (true volumes, BSA, LVMI), disease status and the simulated manual reading.

    Drawn from the participant's population, anatomy and acquisition streams only, so
    :func:`participant_truth` gives exactly what :func:`render_participant` writes, at a fraction of the
    cost (for population-level checks at scale).
    """

    eid: int
    demographics: Demographics
    anatomy: LVAnatomy
    acquisition: Acquisition
    volumes: TrueVolumes
    bsa_m2: float
    lvmi_g_m2: float
    diseases: dict[str, int]
    manual_lv_mass_g: float | str  # "" when the participant has no manual mass

    def phenotype_row(self) -> dict[str, Any]:
        """The phenotypes.csv row (PHENOTYPE_COLUMNS)."""
        demo = self.demographics
        return {
            "eid": self.eid,
            "sex": demo.sex,
            "age": demo.age,
            "height_cm": demo.height_cm,
            "weight_kg": demo.weight_kg,
            **self.diseases,
            "manual_lv_mass_g": self.manual_lv_mass_g,
        }

    def truth_row(self, instance: int) -> dict[str, Any]:
        """The truth.csv columns known without images."""
        demo, acq, vol = self.demographics, self.acquisition, self.volumes
        lv_slices = [k for k in range(acq.n_slices) if vol.myocardium_area_mm2[k] > 0]
        return {
            "eid": self.eid,
            "instance": instance,
            "sex": demo.sex,
            "n_slices": acq.n_slices,
            "rows": acq.rows,
            "cols": acq.cols,
            "pixel_spacing_row_mm": acq.pixel_spacing_mm[0],
            "pixel_spacing_col_mm": acq.pixel_spacing_mm[1],
            "slice_spacing_mm": SLICE_SPACING_MM,
            "slice_thickness_mm": SLICE_THICKNESS_MM,
            "true_myocardium_volume_ml": round(vol.myocardium_volume_ml, 4),
            "true_lv_mass_g": round(vol.lv_mass_g, 4),
            "true_lv_cavity_volume_ml": round(vol.cavity_volume_ml, 4),
            "bsa_m2": round(self.bsa_m2, 5),
            "true_lvmi_g_m2": round(self.lvmi_g_m2, 4),
            "age": demo.age,
            "height_cm": demo.height_cm,
            "weight_kg": demo.weight_kg,
            **self.diseases,
            "manual_lv_mass_g": self.manual_lv_mass_g,
            "target_lv_mass_g": round(demo.target_lv_mass_g, 3),
            "first_lv_slice": 1 + min(lv_slices, default=-1),
            "last_lv_slice": 1 + max(lv_slices, default=-1),
            "myocardium_area_mm2": " ".join(f"{a:.2f}" for a in vol.myocardium_area_mm2),
            "epi_apex_mm": round(self.anatomy.epi_apex_z_mm, 3),
            "slice1_z_mm": round(acq.z_anatomy_mm[0], 3),
        }


# The RV's direction from the LV in patient LPS: to the patient's right, anterior and inferior (the RV
# forms most of the heart's anterior and diaphragmatic surfaces); in the short-axis display it lies on
# the viewer's left, slightly towards the top.
RV_DIRECTION_LPS = np.array([-0.7, -0.5, -0.5])


def _draw_truth(eid: int, cfg: SynthConfig, streams: list[np.random.Generator]) -> ParticipantTruth:
    r_pop, r_anat, r_acq = streams[:3]
    demo = draw_demographics(r_pop)
    orientation = _draw_orientation(r_acq)
    u, v, _ = orientation
    rv_angle = math.atan2(float(np.dot(RV_DIRECTION_LPS, v)), float(np.dot(RV_DIRECTION_LPS, u)))
    anatomy = build_anatomy(
        r_anat, target_mass_g=demo.target_lv_mass_g, bsa_m2=demo.bsa_m2, rv_angle_rad=rv_angle
    )
    acq = _draw_acquisition(r_acq, anatomy, orientation, cfg.appearance_scale, cfg.misregistration_mm)
    volumes = true_volumes(anatomy, np.asarray(acq.z_anatomy_mm))
    bsa = bsa_dubois_m2(demo.height_cm, demo.weight_kg)
    if bsa is None:  # cannot happen: height and weight are always drawn
        raise ValueError(f"eid {eid}: no BSA for height {demo.height_cm} cm, weight {demo.weight_kg} kg")
    lvmi = volumes.lv_mass_g / bsa
    diseases = draw_diseases(r_pop, fit_disease_model(cfg.diseases), lvmi, demo.age, demo.sex == "male")
    manual: float | str = ""
    if r_pop.random() < cfg.manual_mass_fraction:
        manual = round(volumes.lv_mass_g + float(r_pop.normal(0.0, cfg.reader_noise_sd_g)), 1)
    return ParticipantTruth(eid, demo, anatomy, acq, volumes, bsa, lvmi, diseases, manual)


def participant_truth(eid: int, seed: int, config: SynthConfig | None = None) -> ParticipantTruth:
    """One participant's truth without rendering images (the same values ``render_participant`` writes)."""
    return _draw_truth(eid, config or SynthConfig(), participant_rngs(seed, eid))


@dataclass(frozen=True)
class Scene:
    """A participant's truth and what the images are made of: appearance and the chest (``Body``)."""

    truth: ParticipantTruth
    appearance: Appearance
    body: Body


def _draw_scene(eid: int, cfg: SynthConfig, streams: list[np.random.Generator]) -> Scene:
    truth = _draw_truth(eid, cfg, streams)
    r_app = streams[3]
    demo, acq = truth.demographics, truth.acquisition
    app = draw_appearance(r_app, cfg.appearance_scale)
    body = draw_body(
        r_app,
        body_size=math.sqrt(demo.bsa_m2 / 1.9),
        bmi_kg_m2=demo.weight_kg / (demo.height_cm / 100.0) ** 2,
        anatomy=truth.anatomy,
        orientation=(acq.u, acq.v, acq.n),
    )
    return Scene(truth, app, body)


def participant_scene(eid: int, seed: int, config: SynthConfig | None = None) -> Scene:
    """One participant's truth, appearance and chest geometry (as ``render_participant`` draws them)."""
    return _draw_scene(eid, config or SynthConfig(), participant_rngs(seed, eid))


def render_participant(eid: int, seed: int, config: SynthConfig | None = None) -> ParticipantData:
    """Build one participant in memory (see the module docstring)."""
    cfg = config or SynthConfig()
    streams = participant_rngs(seed, eid)
    r_app, r_vf, r_noise, r_dicom, r_extra, r_jitter = streams[3:9]
    scene = _draw_scene(eid, cfg, streams)
    images = _render_images(cfg, scene, r_app, r_noise, r_extra)
    contours = _render_inlinevf(cfg, scene, images.slices, r_vf, r_jitter)
    study, uids = _study_header(eid, scene, r_dicom)
    members, manifest_rows, info = _assemble(cfg, eid, scene.truth.acquisition, study, uids, images,
                                             contours.overlays, r_extra)
    zip_name = f"{eid}_{SAX_FIELD_ID}_{cfg.instance}_0.zip"
    if cfg.layout == "ukbb":
        manifest = dw.manifest_text(
            manifest_rows,
            patient_id=str(eid),
            study_id=study["study_uid"],
            study_description="CardiacMR",
            when=study["when"],
            aet=study["station_name"],
            host="ANON_HOST",
            with_modality=bool(r_extra.random() < cfg.modality_column_fraction),
        )
        members.insert(0, ("manifest.cvs", manifest.encode("ascii")))
    zip_bytes = dw.write_zip(members, study["when"], cfg.zip_compresslevel)
    return ParticipantData(
        eid=eid, zip_name=zip_name, zip_bytes=zip_bytes, phenotype=scene.truth.phenotype_row(),
        truth=_truth_row(cfg, scene, images, contours, study, info), labels=images.labels,
    )


@dataclass(frozen=True)
class _Images:
    """A participant's cine: each slice's heart, every written phase's pixels, the repeated slice (index and
    pixels of its discarded acquisition; -1: none) and the ED truth labels."""

    slices: list[HeartSlice]
    pixels: dict[tuple[int, int], bytes]
    duplicate: int
    duplicate_pixels: dict[int, bytes]
    labels: np.ndarray


def _render_images(cfg: SynthConfig, scene: Scene, r_app: np.random.Generator, r_noise: np.random.Generator,
                   r_extra: np.random.Generator) -> _Images:
    """Every slice and phase as quantised Rician-noisy pixels, in the streams' fixed order."""
    app, body = scene.appearance, scene.body
    anatomy, acq = scene.truth.anatomy, scene.truth.acquisition
    n_slices = acq.n_slices
    width_mm = app.edge_blur * max(acq.pixel_spacing_mm)
    sigma = app.blood_signal / app.snr
    phases = cfg.phases
    duplicate = -1
    if cfg.layout == "ukbb" and r_extra.random() < cfg.duplicate_slice_fraction and n_slices >= 3:
        duplicate = int(r_extra.integers(1, n_slices - 1))

    def make_slice(k: int, extra: tuple[float, float] = (0.0, 0.0)) -> HeartSlice:
        rel = slice_points_rel(acq, k, extra)
        texture = smooth_texture(r_app, (acq.rows, acq.cols), app.texture)
        bg = render_background(rel, body, app, width_mm, texture)
        gain = float(1.0 + app.slice_gain_sd * r_app.standard_normal())
        bias = bias_field(rel, app) * np.float32(app.blood_signal * gain)
        return HeartSlice(
            anatomy,
            app,
            bg,
            bias,
            acq.z_anatomy_mm[k],
            _lv_centre_px(acq, anatomy, k, extra),
            acq.pixel_spacing_mm,
            float(r_app.uniform(0, 2 * math.pi)),
        )

    slices = [make_slice(k) for k in range(n_slices)]
    pixels: dict[tuple[int, int], bytes] = {}
    for k, hs in enumerate(slices):
        for p in phases:
            img = rician(hs.heart_signal(p) * hs.bias, sigma, r_noise)
            pixels[(k, p)] = quantise(img).tobytes()
    dup_pixels: dict[int, bytes] = {}
    if duplicate >= 0:  # an earlier, discarded acquisition of one slice: a different breath-hold
        hs = make_slice(duplicate, (float(r_extra.uniform(4, 8)), float(r_extra.uniform(-8, -4))))
        for p in phases:
            dup_pixels[p] = quantise(rician(hs.heart_signal(p) * hs.bias, sigma, r_noise)).tobytes()
    labels = np.stack([hs.labels_ed() for hs in slices], axis=-1)
    return _Images(slices, pixels, duplicate, dup_pixels, labels)


@dataclass(frozen=True)
class _Contours:
    """The scanner's InlineVF contours: the draw (offsets, failure), the slices contoured at ED, each
    outlined frame's overlay plane and the raw mass the ED outlines give."""

    vf: Any
    contoured_ed: list[int]
    overlays: dict[tuple[int, int], np.ndarray]
    expected_raw_mass_g: float


def _render_inlinevf(cfg: SynthConfig, scene: Scene, slices: list[HeartSlice], r_vf: np.random.Generator,
                     r_jitter: np.random.Generator) -> _Contours:
    anatomy, acq = scene.truth.anatomy, scene.truth.acquisition
    n_slices = acq.n_slices
    vf = draw_inlinevf(
        r_vf,
        failure_rate=cfg.inlinevf_failure_rate,
        epi_offset_mm=cfg.inlinevf_epi_offset_mm,
        endo_offset_mm=cfg.inlinevf_endo_offset_mm,
        offset_sd_mm=cfg.inlinevf_offset_sd_mm,
        jitter_mm=cfg.inlinevf_jitter_mm,
    )
    contoured_ed = [k for k in range(n_slices) if contoured(anatomy, acq.z_anatomy_mm[k], 0)]
    vf = assign_failure_slices(vf, r_vf, contoured_ed, n_slices)
    overlays: dict[tuple[int, int], np.ndarray] = {}
    ed_myo = []
    if cfg.layout == "ukbb":
        shape = (acq.rows, acq.cols)
        for k, hs in enumerate(slices):
            for p in cfg.phases:
                curves = slice_curves(
                    anatomy,
                    vf,
                    slice_index=k,
                    slice_z_mm=acq.z_anatomy_mm[k],
                    phase=p,
                    centre_px=hs.centre_px,
                    spacing=acq.pixel_spacing_mm,
                    rng=r_jitter,  # its own stream: a failure changes only the failing slices
                )
                if curves:
                    overlays[(k, p)] = np.logical_or.reduce([rasterise(c, shape) for c in curves])
                if p == 0:
                    ed_myo.append(outline_labels_myocardium(curves, shape))
    expected_vf = raw_mass_g(ed_myo, acq.pixel_spacing_mm, SLICE_SPACING_MM) if ed_myo else float("nan")
    return _Contours(vf, contoured_ed, overlays, expected_vf)


def _study_header(eid: int, scene: Scene,
                  r_dicom: np.random.Generator) -> tuple[dict[str, Any], dw.UidFactory]:
    """The study's shared DICOM values (date, station, UIDs, heart rate, windowing) and its UID factory."""
    demo, app = scene.truth.demographics, scene.appearance
    when = dt.datetime(2014, 5, 1, 8, 0, 0) + dt.timedelta(
        days=int(r_dicom.integers(0, 2100)), minutes=int(r_dicom.integers(0, 600))
    )
    station = int(r_dicom.integers(41000, 42000))
    uids = dw.UidFactory(station, when, r_dicom)
    rr_ms = float(round(np.clip(r_dicom.normal(950.0, 130.0), 600.0, 1400.0)))  # NominalInterval is an IS
    study = {
        "when": when,
        "uid_placeholder": uids.root + "0" * 8,
        "study_uid": uids.next(),
        "frame_uid": uids.next(),
        "station_name": f"AWP{station}",
        "patient_id": str(eid),
        "sex": demo.sex,
        "age": demo.age,
        "height_cm": demo.height_cm,
        "weight_kg": demo.weight_kg,
        "tr_ms": round(float(r_dicom.uniform(2.5, 2.8)), 2),
        "rr_ms": rr_ms,
        "window_centre": round(app.blood_signal * 0.6),
        "window_width": round(app.blood_signal * 1.4),
    }
    return study, uids


def _truth_row(cfg: SynthConfig, scene: Scene, images: _Images, contours: _Contours, study: dict[str, Any],
               info: dict[str, Any]) -> dict[str, Any]:
    """The participant's ``truth.csv`` row: the generator's truth and what it drew."""
    truth_p, app, acq = scene.truth, scene.appearance, scene.truth.acquisition
    vf, expected_vf, duplicate = contours.vf, contours.expected_raw_mass_g, images.duplicate
    label_mass = (
        float((images.labels == 2).sum())
        * acq.pixel_spacing_mm[0]
        * acq.pixel_spacing_mm[1]
        * SLICE_SPACING_MM
        / 1000.0
        * MYOCARDIAL_DENSITY_G_PER_ML
    )
    return {
        **truth_p.truth_row(cfg.instance),
        "inlinevf_failure": vf.failure,
        "label_lv_mass_g": round(label_mass, 3),
        "expected_inlinevf_raw_mass_g": round(expected_vf, 3),
        "expected_inlinevf_bias_factor": round(expected_vf / truth_p.volumes.lv_mass_g, 5),
        "inlinevf_epi_offset_mm": round(vf.epi_offset_mm, 4),
        "inlinevf_endo_offset_mm": round(vf.endo_offset_mm, 4),
        "inlinevf_failure_slices": " ".join(str(k + 1) for k in vf.failure_slices),
        "contoured_slices": " ".join(str(k + 1) for k in contours.contoured_ed),
        "n_phases_written": len(cfg.phases),
        "rr_ms": round(study["rr_ms"], 2),
        "layout": cfg.layout,
        "duplicate_slice": duplicate + 1 if duplicate >= 0 else "",
        **info,
        "blood_signal": round(app.blood_signal, 2),
        "myocardium_contrast": round(app.myocardium, 4),
        "snr": round(app.snr, 3),
        "edge_blur_px": round(app.edge_blur, 3),
        "appearance_scale": cfg.appearance_scale,
    }


class _Members:
    """The zip's DICOM members and manifest rows, written one instance at a time from two templates (plain,
    and with an overlay plane) that share everything but the per-instance values."""

    def __init__(self, cfg: SynthConfig, acq: Acquisition, study: dict[str, Any], uids: dw.UidFactory,
                 spacing_between: bool):
        base = _mr_dataset(study, acq, siemens=cfg.layout == "ukbb", spacing_between=spacing_between)
        meta = dw.file_meta(dw.MR_IMAGE_STORAGE)
        self.plain = dw.InstanceTemplate(meta, base, _VAR_TAGS.values())
        with_overlay = base.copy()
        dw.add_overlay_placeholders(with_overlay, acq.rows, acq.cols)
        self.with_overlay = dw.InstanceTemplate(meta, with_overlay, [*_VAR_TAGS.values(), _OVERLAY_DATA])
        self.members: list[tuple[str, bytes]] = []
        self.rows: list[dw.ManifestRow] = []
        self._acq, self._uids = acq, uids
        self._when: dt.datetime = study["when"]
        self._rr = study["rr_ms"]

    def add(self, template: dw.InstanceTemplate, *, description: str, series_uid: str, series_number: int,
            instance: int, k: int, phase: int, pixel_bytes: bytes, minutes: float,
            overlay: np.ndarray | None = None, name: str | None = None) -> None:
        """One instance of slice ``k`` at ``phase``, ``minutes`` after the study's start."""
        uid = self._uids.next()
        t = (self._when + dt.timedelta(minutes=minutes)).strftime("%H%M%S.%f")[:13]
        ipp = self._acq.ipp(k)
        normal = self._acq.slice_normal  # SliceLocation: the position along the image normal (apex -> base)
        values: dict[int, bytes | str] = {
            _VAR_TAGS["SOPInstanceUID"]: uid,
            _VAR_TAGS["SeriesTime"]: t,
            _VAR_TAGS["AcquisitionTime"]: t,
            _VAR_TAGS["ContentTime"]: t,
            _VAR_TAGS["SeriesDescription"]: description,
            _VAR_TAGS["TriggerTime"]: dw.ds_str(round(phase * self._rr / N_PHASES, 4)),
            _VAR_TAGS["ProtocolName"]: description,
            _VAR_TAGS["SeriesInstanceUID"]: series_uid,
            _VAR_TAGS["SeriesNumber"]: str(series_number),
            _VAR_TAGS["InstanceNumber"]: str(instance),
            _VAR_TAGS["ImagePositionPatient"]: dw.ds_multi(np.round(ipp, 6)),
            _VAR_TAGS["SliceLocation"]: dw.ds_str(round(float(np.dot(ipp, normal)), 6)),
            _VAR_TAGS["PixelData"]: pixel_bytes,
        }
        if overlay is not None:
            values[_OVERLAY_DATA] = dw.pack_overlay(overlay)
        filename = name or f"{uid}.dcm"
        self.append(filename, template.encode(values), series_uid, description)

    def append(self, filename: str, data: bytes, series_uid: str, description: str) -> None:
        self.members.append((filename, data))
        self.rows.append(dw.ManifestRow(filename, series_uid, description))


def _assemble(
    cfg: SynthConfig,
    eid: int,
    acq: Acquisition,
    study: dict[str, Any],
    uids: dw.UidFactory,
    images: _Images,
    overlays: dict[tuple[int, int], np.ndarray],
    rng: np.random.Generator,
) -> tuple[list[tuple[str, bytes]], list[dw.ManifestRow], dict[str, Any]]:
    """All DICOM members of the zip (and the manifest rows) for the configured layout."""
    spacing_between = bool(rng.random() < cfg.spacing_between_slices_fraction)
    out = _Members(cfg, acq, study, uids, spacing_between)
    info: dict[str, Any] = {
        "has_lax_extras": 0,
        "has_vf_results": 0,
        "spacing_between_slices_tag": int(spacing_between),
    }
    if cfg.layout != "ukbb":  # another vendor: one series, slice-major numbers, generic names, no InlineVF
        _single_series(out, cfg, acq, uids, images)
        order = rng.permutation(len(out.members))
        return [out.members[i] for i in order], out.rows, info
    _ukbb_series(out, cfg, acq, study, uids, images, overlays, rng, info)
    return out.members, out.rows, info


def _single_series(out: _Members, cfg: SynthConfig, acq: Acquisition, uids: dw.UidFactory,
                   images: _Images) -> None:
    series_uid = uids.next()
    counter = 0
    for k in range(acq.n_slices):
        for p in cfg.phases:
            counter += 1
            out.add(out.plain, description=SINGLE_SERIES_DESCRIPTION, series_uid=series_uid, series_number=5,
                    instance=k * N_PHASES + p + 1, k=k, phase=p, pixel_bytes=images.pixels[(k, p)],
                    minutes=1.0, name=f"IM_{counter:05d}.dcm")


def _ukbb_series(out: _Members, cfg: SynthConfig, acq: Acquisition, study: dict[str, Any],
                 uids: dw.UidFactory, images: _Images, overlays: dict[tuple[int, int], np.ndarray],
                 rng: np.random.Generator, info: dict[str, Any]) -> None:
    """UK Biobank's layout: a ``bK`` series per slice, the InlineVF series (its outlined frames with an
    overlay plane), maybe long-axis extras and the InlineVF results, and a repeated slice last."""
    n, phases, pixels, duplicate = acq.n_slices, cfg.phases, images.pixels, images.duplicate

    def add_slice_series(k: int, number: int, pixel_bytes, minutes: float) -> None:
        """One ``CINE_segmented_SAX_b{k+1}`` series: every written phase of slice ``k``."""
        s_uid = uids.next()
        for p in phases:
            out.add(out.plain, description=f"{SAX_PREFIX}{k + 1}", series_uid=s_uid, series_number=number,
                    instance=p + 1, k=k, phase=p, pixel_bytes=pixel_bytes(p), minutes=minutes)

    series_number = 10
    for k in range(n):
        # a repeated slice: the earlier acquisition keeps this series number, the re-acquisition comes last
        source = images.duplicate_pixels.__getitem__ if k == duplicate else (lambda p, k=k: pixels[(k, p)])
        add_slice_series(k, series_number, source, 2.0 + k)
        series_number += 1
    vf_uid, vf_number = uids.next(), series_number
    series_number += 1
    for k in range(n):
        for p in phases:
            ov = overlays.get((k, p))
            out.add(out.with_overlay if ov is not None else out.plain, description=INLINEVF_DESCRIPTION,
                    series_uid=vf_uid, series_number=vf_number, instance=k * N_PHASES + p + 1, k=k, phase=p,
                    pixel_bytes=pixels[(k, p)], minutes=2.0 + n, overlay=ov)
    if rng.random() < cfg.lax_extras_fraction:  # mitral-valve long-axis images inside the InlineVF series
        info["has_lax_extras"] = 1
        for filename, data in _lax_instances(study, acq, uids, vf_uid, vf_number, n, int(rng.integers(2, 4)),
                                             rng):
            out.append(filename, data, vf_uid, INLINEVF_DESCRIPTION)
    if rng.random() < cfg.vf_results_fraction:
        info["has_vf_results"] = 1
        res_uid = uids.next()
        filename, data = _vf_results_instance(study, uids, res_uid, series_number, rng)
        series_number += 1
        out.append(filename, data, res_uid, VF_RESULTS_DESCRIPTION)
    if duplicate >= 0:
        add_slice_series(duplicate, series_number, lambda p: pixels[(duplicate, p)], 4.0 + n)


def _to_bytes(ds: Dataset, meta_sop_class: str) -> bytes:
    import io

    ds.file_meta = dw.file_meta(meta_sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return buf.getvalue()


def _lax_instances(
    study: dict[str, Any],
    acq: Acquisition,
    uids: dw.UidFactory,
    series_uid: str,
    series_number: int,
    n_slices: int,
    count: int,
    rng: np.random.Generator,
) -> list[tuple[str, bytes]]:
    """A few 6 mm long-axis images (the scanner's mitral-valve planes) filed in the InlineVF series."""
    base = _mr_dataset(study, acq, siemens=True, spacing_between=False)
    u_lax = acq.n  # rows run along the long axis
    v_lax = np.cross(acq.u, acq.n)
    v_lax /= np.linalg.norm(v_lax)
    out = []
    for i in range(count):
        ds = base.copy()
        uid = uids.next()
        ds.SOPInstanceUID = uid
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, str(series_number)
        ds.SeriesDescription = ds.ProtocolName = INLINEVF_DESCRIPTION
        ds.InstanceNumber = str(n_slices * N_PHASES + i + 1)
        ds.SliceThickness = dw.ds_str(LAX_SLICE_THICKNESS_MM)
        if "SpacingBetweenSlices" in ds:
            del ds.SpacingBetweenSlices
        ds.TriggerTime = "0"
        ipp = acq.origin - 100.0 * u_lax - 100.0 * v_lax + (i - 1) * 6.0 * acq.u
        ds.ImagePositionPatient = dw.ds_multi(np.round(ipp, 6))
        ds.ImageOrientationPatient = dw.ds_multi([*u_lax.tolist(), *v_lax.tolist()])
        ds.SliceLocation = dw.ds_str(round(float(np.dot(ipp, np.cross(u_lax, v_lax))), 6))
        img = rng.normal(200.0, 40.0, (acq.rows, acq.cols)).clip(0, 4095).astype(np.uint16)
        ds[0x7FE00010].value = img.tobytes()
        out.append((f"{uid}.dcm", _to_bytes(ds, dw.MR_IMAGE_STORAGE)))
    return out


def _vf_results_instance(
    study: dict[str, Any], uids: dw.UidFactory, series_uid: str, series_number: int, rng: np.random.Generator
) -> tuple[str, bytes]:
    """The ``Inline_VF_Results`` secondary capture (a small 8-bit report image)."""
    ds = Dataset()
    when: dt.datetime = study["when"]
    uid = uids.next()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.SOPClassUID = dw.SECONDARY_CAPTURE_STORAGE
    ds.SOPInstanceUID = uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "SIEMENS"
    ds.SeriesDescription = VF_RESULTS_DESCRIPTION
    ds.PatientID = study["patient_id"]
    ds.StudyInstanceUID = study["study_uid"]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = str(series_number)
    ds.InstanceNumber = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 128
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    img = np.zeros((128, 128), np.uint8)
    img[10:118:12, 8:120] = rng.integers(80, 255, (9, 112), dtype=np.uint8)
    ds.PixelData = img.tobytes()
    return f"{uid}.dcm", _to_bytes(ds, dw.SECONDARY_CAPTURE_STORAGE)
