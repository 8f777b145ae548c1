"""The pure measurement core between decoding and the writers: records, tensors, masses, calibration.

Everything here is plain Python on numpy arrays, tested without Beam; ``beam_pipeline.transforms``
composes it into PTransforms. In pipeline order:

* :func:`participant_from_study`: a ``DecodedStudy`` -> :class:`ParticipantTensor` (the model tensor of
  ``lvmass.core.tensor`` and, on request, the InlineVF label volume);
* :func:`measure_labels` / :func:`measure_inlinevf` / :func:`measure_regression`: one method's raw
  :class:`Measurement` (volumes and raw mass, ``lvmass.core.mass``; QC flags, ``lvmass.core.qc``);
* :func:`calibrate` and :func:`apply_p90`: raw -> calibrated mass, BSA, LVMI, LVH, LVH_p90 as a
  ``schema.ResultRecord`` (docs/architecture.md, "Where each number is computed").


The training example of ``--mode tensorize`` is built from a :class:`ParticipantTensor` by
``lvmass.storage.tfrecord.tfrecord_bytes`` (TensorFlow's format, outside the core).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lvmass.core import contracts
from lvmass.core.acquisition import AcquisitionGrid, acquisition_grid
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.identity import participant_identity
from lvmass.core.mass import (
    bsa_dubois_m2,
    is_lvh,
    is_lvh_percentile,
    lvmi_g_m2,
    measure_label_volume,
    merge_sex_centering,
    recalibrate_inlinevf_g,
)
from lvmass.core.overlay import inlinevf_labels
from lvmass.core.qc import (
    body_size_plausible,
    image_qc_flags,
    inlinevf_qc_flags,
    label_qc_flags,
    lvmi_qc_flags,
    mass_qc_flags,
    qc_pass,
)
from lvmass.core.schema import (
    CALIBRATION_LINEAR,
    CALIBRATION_NONE,
    CALIBRATION_SEX_CENTERED,
    ResultRecord,
)
from lvmass.core.study import DecodedStudy
from lvmass.core.tensor import (
    build_image_tensor,
    build_label_volume,
    grid_pixel_pair_mm,
    unplace_label_volume,
)

logger = logging.getLogger(__name__)

DEFAULT_MIN_CALIBRATION_N = 10  # manual masses of a sex below which a fallback centering is preferred
# Methods whose raw mass the paper centres on the manual mean of each sex.
CENTERED_METHODS = (contracts.METHOD_ML4H_SEG, contracts.METHOD_INLINEVF)


# --- Records flowing between the composites ---------------------------------------------------------

@dataclass(frozen=True)
class ParticipantTensor:
    """One decoded participant x instance: the model tensor, its grid, and what measurement needs.

    ``image``/``spacing_mm`` follow ``contracts`` (the ``SavedModelHandler`` reads just these two):
    ``spacing_mm`` is the voxel of the tensor's grid (grid pixel size, grid pixel size, slice spacing).
    ``acquired_pixel_spacing_mm`` is the acquisition's own PixelSpacing (in the standard view).
    ``inlinevf_labels`` is the InlineVF label volume on the tensor grid (uint8
    ``contracts.LABEL_VOLUME_SHAPE``, for training examples and ``--save_labels``) and
    ``inlinevf_native_labels`` the same slices on the acquisition grid (rows, cols, slices), which
    InlineVF's mass is measured on; both None when the scanner drew no contour or the method was not
    requested. ``acquisition`` is the grid ``--save_labels`` writes NIfTI files on (the decoded slices in
    the patient, ``acquisition.AcquisitionGrid``).
    """

    source_uri: str
    participant_id: str
    eid: int | None
    instance: int
    image: np.ndarray
    spacing_mm: np.ndarray
    acquired_pixel_spacing_mm: tuple[float, float]
    n_slices: int  # acquired slices (the Parquet's n_slices)
    n_slices_used: int  # slices placed in the tensor (the TFRecord's n_slices)
    qc_flags: tuple[str, ...]
    inlinevf_labels: np.ndarray | None = None
    inlinevf_native_labels: np.ndarray | None = None
    inlinevf_flags: tuple[str, ...] = ()
    slice_start: int = 0  # first acquired slice placed in the tensor (> 0 only past 13 slices)
    acquisition: AcquisitionGrid | None = None

    @property
    def slice_spacing_mm(self) -> float:
        return float(self.spacing_mm[2])

    @property
    def grid_pixel_mm(self) -> float:
        """The tensor grid's in-plane pixel size (mm): square pixels."""
        return float(self.spacing_mm[0])

    @property
    def acquired_voxel_mm(self) -> tuple[float, float, float]:
        """The acquisition's voxel (mm): PixelSpacing (row, col), in the standard view, and slice spacing."""
        return (float(self.acquired_pixel_spacing_mm[0]), float(self.acquired_pixel_spacing_mm[1]),
                self.slice_spacing_mm)

    @property
    def in_plane_scale(self) -> float:
        """Acquired / grid pixel size along the rows (> 1: the acquisition's pixels were larger)."""
        return float(self.acquired_pixel_spacing_mm[0]) / self.grid_pixel_mm


@dataclass(frozen=True)
class Measurement:
    """One method's raw measurement of one participant, before phenotypes and calibration.

    ``acquired_voxel_mm`` is the acquisition's (row, col, slice) voxel; ``grid_pixel_mm`` (the Parquet's
    ``tensor_pixel_spacing_mm``) and ``in_plane_scale`` say which grid the model saw
    (``ParticipantTensor``)."""

    source_uri: str
    participant_id: str
    eid: int | None
    instance: int
    method: str
    lv_mass_raw_g: float | None
    myocardium_volume_ml: float | None
    lv_cavity_volume_ml: float | None
    n_slices: int
    acquired_voxel_mm: tuple[float, float, float]
    grid_pixel_mm: float = float("nan")
    in_plane_scale: float = 1.0
    qc_flags: tuple[str, ...] = ()
    model_version: str | None = None


def unique_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Flags in first-seen order without repeats (deterministic rows)."""
    return tuple(dict.fromkeys(flags))


# --- Tensors and raw measurements -------------------------------------------------------------------


def participant_from_study(
    study: DecodedStudy, *, with_inlinevf: bool, grid_pixel_mm: float | None = None,
    n_slots: int | None = contracts.TENSOR_SLICES,
) -> ParticipantTensor:
    """Build the model tensor on the grid ``grid_pixel_mm`` (the one shared ``build_image_tensor``;
    None: the acquired pixels) with ``n_slots`` slices (13, or None: every slice for per-slice models)
    and, optionally, InlineVF labels on both grids."""
    identity = participant_identity(study)
    tensor = build_image_tensor(study, grid_pixel_mm=grid_pixel_mm, n_slots=n_slots)
    # the decoder already put the geometry flags (qc.geometry_qc_flags) into study.qc_flags
    flags = unique_flags([*study.qc_flags, *tensor.qc_flags, *image_qc_flags(study)])
    labels = native = None
    vf_flags: tuple[str, ...] = ()
    if with_inlinevf:
        per_slice = inlinevf_labels(study)
        vf_flags = tuple(inlinevf_qc_flags(study, per_slice))
        if study.has_inlinevf:
            labels = build_label_volume(per_slice, slice_start=tensor.slice_start,
                                        acquired_pixel_spacing_mm=tensor.acquired_pixel_spacing_mm,
                                        grid_pixel_mm=grid_pixel_mm, n_slots=n_slots)
            window = per_slice[tensor.slice_start : tensor.slice_start + tensor.image.shape[2]]
            native = np.stack([np.asarray(s, dtype=np.uint8) for s in window], axis=-1)
    return ParticipantTensor(
        source_uri=study.source_uri,
        participant_id=identity.participant_id,
        eid=identity.eid,
        instance=identity.instance,
        image=tensor.image,
        # float64 (the tensor's copy is float32): masses and Parquet keep full precision
        spacing_mm=np.array([*grid_pixel_pair_mm(study.pixel_spacing_mm, grid_pixel_mm),
                             study.slice_spacing_mm], dtype=np.float64),
        acquired_pixel_spacing_mm=(float(study.pixel_spacing_mm[0]), float(study.pixel_spacing_mm[1])),
        n_slices=int(study.n_slices),
        n_slices_used=int(tensor.n_slices_used),
        slice_start=int(tensor.slice_start),
        qc_flags=flags,
        inlinevf_labels=labels,
        inlinevf_native_labels=native,
        inlinevf_flags=vf_flags,
        acquisition=acquisition_grid(study),
    )


def _measurement(participant: ParticipantTensor, method: str, **fields: Any) -> Measurement:
    """A Measurement of ``participant`` by ``method`` with its identity and geometry filled in."""
    return Measurement(
        source_uri=participant.source_uri, participant_id=participant.participant_id, eid=participant.eid,
        instance=participant.instance, method=method, n_slices=participant.n_slices,
        acquired_voxel_mm=participant.acquired_voxel_mm, grid_pixel_mm=participant.grid_pixel_mm,
        in_plane_scale=participant.in_plane_scale,
        **fields,
    )


def measure_labels(
    participant: ParticipantTensor, labels: np.ndarray, *, method: str, model_version: str | None,
    extra_flags: Sequence[str] = (), voxel_mm: Sequence[float] | None = None,
) -> Measurement:
    """Volumes and raw mass of a label volume with its QC flags: a model's argmax on the tensor grid
    (``voxel_mm`` None: the tensor's voxel), or InlineVF labels on the acquisition grid."""
    volume = measure_label_volume(labels, participant.spacing_mm if voxel_mm is None else voxel_mm)
    flags = unique_flags([
        *participant.qc_flags, *extra_flags,
        *label_qc_flags(labels, participant.n_slices_used),
        *mass_qc_flags(volume.lv_mass_raw_g),
    ])
    return _measurement(
        participant, method,
        lv_mass_raw_g=float(volume.lv_mass_raw_g),
        myocardium_volume_ml=float(volume.myocardium_volume_ml),
        lv_cavity_volume_ml=float(volume.lv_cavity_volume_ml),
        qc_flags=flags,
        model_version=model_version,
    )


def label_volume_npz(participant: ParticipantTensor, labels: np.ndarray) -> bytes:
    """``labels`` (uint8 ``contracts.LABEL_VOLUME_SHAPE``, tensor layout) as a compressed ``.npz``: key
    ``labels``, plus ``spacing_mm`` (the grid's voxel), ``acquired_pixel_spacing_mm``, ``n_slices``
    placed and the acquisition's ``slice_start``, which ``tensor.unplace_label_volume`` needs to map it
    back (``--save_labels``, for QC review and Dice)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=np.asarray(labels, dtype=np.uint8),
                        spacing_mm=np.asarray(participant.spacing_mm, dtype=np.float64),
                        acquired_pixel_spacing_mm=np.asarray(participant.acquired_pixel_spacing_mm,
                                                             dtype=np.float64),
                        n_slices=np.int64(participant.n_slices_used),
                        slice_start=np.int64(participant.slice_start))
    return buffer.getvalue()


def acquisition_label_volume(participant: ParticipantTensor, labels: np.ndarray, *,
                             native: bool = False) -> np.ndarray:
    """``labels`` back on the acquisition grid (``participant.acquisition``; rows, cols, planes): a model's
    tensor-layout volume through ``tensor.unplace_label_volume`` (nearest neighbour, as placed), or, with
    ``native``, labels already on the acquired slices of the tensor's window (InlineVF's
    ``inlinevf_native_labels``) as they are. For ``--save_labels``' NIfTI files."""
    grid = participant.acquisition
    if grid is None:
        raise ValueError(f"{participant.source_uri}: no acquisition grid to put the labels on (slices of "
                         "different sizes)")
    rows, cols = grid.slice_shape
    n_slices = len(grid.slice_planes)
    arr = np.asarray(labels)
    if native:
        on_slices = np.zeros((rows, cols, n_slices), dtype=np.uint8)
        on_slices[:, :, participant.slice_start : participant.slice_start + arr.shape[2]] = arr
    else:
        acquired = tuple(float(v) for v in participant.acquired_pixel_spacing_mm)
        resampled = (float(participant.spacing_mm[0]), float(participant.spacing_mm[1])) != acquired
        grid_mm = participant.grid_pixel_mm if resampled else None
        on_slices = unplace_label_volume(arr, (rows, cols, n_slices), slice_start=participant.slice_start,
                                         acquired_pixel_spacing_mm=acquired, grid_pixel_mm=grid_mm)
    return grid.on_planes(on_slices)


def measure_inlinevf(participant: ParticipantTensor) -> Measurement:
    """InlineVF's raw mass from its outline-derived labels, measured at the acquisition's own resolution
    (no contour: mass unknown, flagged).

    Why native: InlineVF's outline is drawn on the acquired pixels and turned into labels there (the
    paper's morphology); measuring on that grid adds no resampling error, and the result does not
    depend on which model grid the run uses."""
    if participant.inlinevf_native_labels is None:
        return _measurement(
            participant, contracts.METHOD_INLINEVF, lv_mass_raw_g=None, myocardium_volume_ml=None,
            lv_cavity_volume_ml=None,
            qc_flags=unique_flags([*participant.qc_flags, *participant.inlinevf_flags,
                                   contracts.QC_INLINEVF_CONTOUR_MISSING]),
        )
    voxel = participant.acquired_voxel_mm
    return measure_labels(participant, participant.inlinevf_native_labels, method=contracts.METHOD_INLINEVF,
                          model_version=None, extra_flags=participant.inlinevf_flags, voxel_mm=voxel)


def measure_regression(
    participant: ParticipantTensor, mass_g: float, *, model_version: str | None,
    extra_flags: Sequence[str] = (),
) -> Measurement:
    """ML4H_reg's mass, taken as is (no volumes: the model regresses mass directly)."""
    return _measurement(
        participant, contracts.METHOD_ML4H_REG, lv_mass_raw_g=float(mass_g), myocardium_volume_ml=None,
        lv_cavity_volume_ml=None,
        qc_flags=unique_flags([*participant.qc_flags, *extra_flags, *mass_qc_flags(float(mass_g))]),
        model_version=model_version,
    )


def recalibrated_inlinevf(measurement: Measurement) -> Measurement:
    """The paper's InlineVF recalibration as its own method row (``inlinevf_recalibrated``)."""
    return replace(measurement, method=contracts.METHOD_INLINEVF_RECALIBRATED)


def calibrate(
    measurement: Measurement, phenotype: Any | None, centering: Mapping[str, Any], *,
    raw_is_estimate: frozenset[str] = frozenset(),
) -> ResultRecord:
    """Raw -> calibrated mass, then BSA (DuBois), LVMI and LVH; ``lvh_p90`` is set later.

    ML4H_seg and InlineVF are centred on the manual mean of the participant's sex; where that cannot be
    done (sex unknown, or no centering for the method and sex: no manual masses in the run, no
    ``--calibration``, no model card calibration) the calibrated mass is None, never a raw mass in
    disguise, and ``calibration`` says ``none``. ``calibration`` names the centering's source for that
    sex: ``sex_mean_centered`` when fitted on this run's manual masses, ``sex_mean_centered:<source>``
    otherwise (``calibration_file``, ``model_card``; :func:`calibration_label`).
    ``raw_is_estimate``: methods whose model learned true anatomy (model card ``label_source``
    ``true_anatomy``): without a centering their raw mass is taken as the calibrated one (``none``); with
    manual masses in the run they are still centred, as the paper did.
    ``inlinevf_recalibrated`` uses the paper's linear formula; ML4H_reg is taken as is (``none``).
    Without a phenotype row the raw masses stay and the sex-dependent fields are None.
    """

    raw = measurement.lv_mass_raw_g
    sex = phenotype.sex if phenotype is not None else None
    flags = list(measurement.qc_flags)
    if phenotype is None:
        flags.append(contracts.QC_NO_PHENOTYPE)

    calibration = CALIBRATION_NONE
    mass: float | None = raw
    if measurement.method == contracts.METHOD_INLINEVF_RECALIBRATED:
        calibration = CALIBRATION_LINEAR
        mass = recalibrate_inlinevf_g(raw)
    elif measurement.method in CENTERED_METHODS:
        sex_centering = centering.get(measurement.method)
        mass = sex_centering.apply(raw, sex) if sex_centering is not None else None
        if sex_centering is not None and mass is not None:
            calibration = calibration_label(sex_centering.source_for(sex))
        elif measurement.method in raw_is_estimate:
            mass = raw  # a model of true anatomy (card label_source): its raw mass is the estimate

    if mass is not None and mass != raw:
        flags.extend(mass_qc_flags(mass))  # a calibrated mass <= 0 or outside the bounds fails QC too
    bsa = lvmi = lvh = None
    if phenotype is not None:
        impossible = {"height_cm", "weight_kg"} & set(getattr(phenotype, "implausible", ()))
        if not impossible and body_size_plausible(phenotype.height_cm, phenotype.weight_kg):
            bsa = bsa_dubois_m2(phenotype.height_cm, phenotype.weight_kg)
            lvmi = lvmi_g_m2(mass, bsa)
            lvh = is_lvh(lvmi, sex)
            flags.extend(lvmi_qc_flags(lvmi))
        else:
            flags.append(contracts.QC_BODY_SIZE_IMPLAUSIBLE)

    flags_t = unique_flags(flags)
    row_mm, col_mm, slice_mm = measurement.acquired_voxel_mm
    return ResultRecord(
        participant_id=measurement.participant_id,
        eid=measurement.eid,
        instance=measurement.instance,
        method=measurement.method,
        lv_mass_raw_g=raw,
        lv_mass_g=mass,
        calibration=calibration,
        myocardium_volume_ml=measurement.myocardium_volume_ml,
        lv_cavity_volume_ml=measurement.lv_cavity_volume_ml,
        bsa_m2=bsa,
        lvmi_g_m2=lvmi,
        lvh=lvh,
        lvh_p90=None,
        sex=sex,
        age=phenotype.age if phenotype is not None else None,
        n_slices=measurement.n_slices,
        pixel_spacing_row_mm=row_mm,
        pixel_spacing_col_mm=col_mm,
        slice_spacing_mm=slice_mm,
        tensor_pixel_spacing_mm=measurement.grid_pixel_mm,
        in_plane_scale=measurement.in_plane_scale,
        qc_flags=list(flags_t),
        qc_pass=bool(qc_pass(flags_t)) and measurement.lv_mass_raw_g is not None,
        model_version=measurement.model_version,
        pipeline_version=PIPELINE_VERSION,
        source_uri=measurement.source_uri,
    )


def calibration_label(source: str) -> str:
    """The ``calibration`` column of a sex-centred row: ``sex_mean_centered`` for a centering fitted on
    the run itself (source ``run``), ``sex_mean_centered:<source>`` for any other (a fallback)."""
    return CALIBRATION_SEX_CENTERED if source == "run" else f"{CALIBRATION_SEX_CENTERED}:{source}"


def apply_p90(record: ResultRecord, thresholds: Mapping[str, Mapping[str, float]]) -> ResultRecord:
    """Set ``lvh_p90``: calibrated mass above the method's 90th percentile for the participant's sex."""

    method_thresholds = thresholds.get(record.method)
    if not method_thresholds:
        return record
    return replace(record, lvh_p90=is_lvh_percentile(record.lv_mass_g, record.sex, method_thresholds))


def results_file_row(record: ResultRecord) -> dict[str, Any]:
    """A Parquet row of ``RESULTS_FILE_SCHEMA``: the partition column (method) lives in the path."""
    row = record.to_row()
    row.pop("method")
    return row


def merged_centering(
    fitted: Mapping[str, Any], fallback: Mapping[str, Any], *, min_calibration_n: int
) -> dict[str, Any]:
    """Per centred method, the run's fit and the fallback merged sex by sex (``mass.merge_sex_centering``)."""

    out = {}
    for method in CENTERED_METHODS:
        merged = merge_sex_centering(fitted.get(method), fallback.get(method), min_manual_n=min_calibration_n)
        if merged is not None:
            logger.info("sex centering for %s: offsets %s from %s", method, dict(merged.offsets_g),
                        dict(merged.sources_by_sex))
            out[method] = merged
    return out
