"""Cohort values, derived from every measurement in an output folder (pure: no Beam, no files).

Why a module of its own: a participant's measurement (raw mass, volumes, geometry, QC of the image) is a
fact about one input, known once it is measured, and never changes. The calibrated mass, LVMI, LVH and
LVH_p90 are not: they depend on the cohort (the sex centering is fitted on every participant with a
manual mass, the 90th percentiles on every QC-passing mass) and on the phenotype file. Computing them
per run made them depend on how the work was split into runs; computing them here, from all the
measurements a folder holds, makes an incremental folder's derived table equal a one-shot run's, bit for
bit (``lvmass.storage.ledger.finalise`` calls :func:`derive_results` at the end of every run).

* :func:`measurement_row` / :func:`measurement_from_row`: a ``measure.Measurement`` as a row of
  ``schema.MEASUREMENTS_SCHEMA`` and back, exactly (float64 all the way);
* :func:`derive_results`: measurements + phenotypes -> ``ResultRecord``s, with the run's centering and
  percentile thresholds (the paper's method, ``measure.calibrate`` and ``measure.apply_p90``) and one
  ``phenotypes`` dead letter per record the arithmetic rejects;
* :func:`ordered_records` / :func:`ordered_errors`: the one order the derived files are written in, so
  the same facts give the same bytes whatever order they were read in.

Every order-dependent step is sorted first: the centering fit sums in the order of ``repr`` of its
inputs, as ``transforms.CalibrateAndIndex`` always did, so floating-point sums do not depend on which run
measured whom.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lvmass.core import contracts
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.dead_letters import error_record
from lvmass.core.mass import SexCentering, fit_sex_centering, sex_percentile_thresholds
from lvmass.core.measure import (
    CENTERED_METHODS,
    DEFAULT_MIN_CALIBRATION_N,
    Measurement,
    apply_p90,
    calibrate,
    merged_centering,
    recalibrated_inlinevf,
)
from lvmass.core.phenotypes import PhenotypeTable
from lvmass.core.qc import qc_pass
from lvmass.core.schema import (
    MEASUREMENT_COLUMNS,
    STAGE_PHENOTYPES,
    ErrorRecord,
    ResultRecord,
)

logger = logging.getLogger(__name__)


# --- Facts: measurements as rows ------------------------------------------------------------------


def measurement_row(measurement: Measurement, *, pipeline_version: str) -> dict[str, Any]:
    """One ``MEASUREMENTS_SCHEMA`` row: the measurement as it was taken, nothing derived from others."""
    row_mm, col_mm, slice_mm = measurement.acquired_voxel_mm
    return {
        "participant_id": measurement.participant_id,
        "eid": measurement.eid,
        "instance": measurement.instance,
        "method": measurement.method,
        "lv_mass_raw_g": measurement.lv_mass_raw_g,
        "myocardium_volume_ml": measurement.myocardium_volume_ml,
        "lv_cavity_volume_ml": measurement.lv_cavity_volume_ml,
        "n_slices": measurement.n_slices,
        "pixel_spacing_row_mm": float(row_mm),
        "pixel_spacing_col_mm": float(col_mm),
        "slice_spacing_mm": float(slice_mm),
        "tensor_pixel_spacing_mm": float(measurement.grid_pixel_mm),
        "in_plane_scale": float(measurement.in_plane_scale),
        "qc_flags": list(measurement.qc_flags),
        "model_version": measurement.model_version,
        "pipeline_version": pipeline_version,
        "source_uri": measurement.source_uri,
    }


def measurement_from_row(row: Mapping[str, Any]) -> Measurement:
    """Inverse of :func:`measurement_row` (``pipeline_version`` is the file's, not the measurement's).

    Raises ValueError naming the input when a column is missing."""
    missing = [c for c in MEASUREMENT_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"{row.get('source_uri', '?')}: measurement row lacks {missing}")
    return Measurement(
        source_uri=str(row["source_uri"]),
        participant_id=str(row["participant_id"]),
        eid=None if row["eid"] is None else int(row["eid"]),
        instance=int(row["instance"]),
        method=str(row["method"]),
        lv_mass_raw_g=_float_or_none(row["lv_mass_raw_g"]),
        myocardium_volume_ml=_float_or_none(row["myocardium_volume_ml"]),
        lv_cavity_volume_ml=_float_or_none(row["lv_cavity_volume_ml"]),
        n_slices=int(row["n_slices"]),
        acquired_voxel_mm=(float(row["pixel_spacing_row_mm"]), float(row["pixel_spacing_col_mm"]),
                           float(row["slice_spacing_mm"])),
        grid_pixel_mm=float(row["tensor_pixel_spacing_mm"]),
        in_plane_scale=float(row["in_plane_scale"]),
        qc_flags=tuple(row["qc_flags"] or ()),
        model_version=None if row["model_version"] is None else str(row["model_version"]),
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# --- Derivation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DerivationSettings:
    """What the derived values depend on besides the measurements and phenotypes.

    ``fallback_centering``: per method, the centering a sex takes when the folder has fewer than
    ``min_calibration_n`` manual masses of it (``--calibration`` or the model card);
    ``raw_is_estimate``: methods whose model learned true anatomy (``measure.calibrate``)."""

    fallback_centering: Mapping[str, SexCentering] = field(default_factory=dict)
    min_calibration_n: int = DEFAULT_MIN_CALIBRATION_N
    raw_is_estimate: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.min_calibration_n < 1:
            raise ValueError(f"min_calibration_n must be >= 1. Received: {self.min_calibration_n}")


@dataclass(frozen=True)
class Derived:
    """The derived table (``records``, in :func:`ordered_records` order), the dead letters of records the
    arithmetic rejected (``errors``), and the cohort statistics they were computed with."""

    records: tuple[ResultRecord, ...]
    errors: tuple[ErrorRecord, ...]
    centering: Mapping[str, SexCentering]
    p90_thresholds_g: Mapping[str, Mapping[str, float]]


def _dead_letter(element: Any, exc: Exception) -> ErrorRecord:
    """A ``phenotypes``-stage dead letter, as ``with_exception_handling`` would have made it."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return error_record(STAGE_PHENOTYPES, element, type(exc), repr(exc), lines)


def _centering_inputs(pairs: Iterable[tuple[Measurement, Any]]) -> dict[str, list[tuple]]:
    """Per centred method, (sex, raw mass, manual mass) of each QC-passing measurement with a sex."""
    out: dict[str, list[tuple]] = {}
    for measurement, phenotype in pairs:
        sex = phenotype.sex if phenotype is not None else None
        try:
            usable = (measurement.method in CENTERED_METHODS and sex is not None
                      and qc_pass(measurement.qc_flags))
        except ValueError as exc:  # the same record fails (and is reported) when it is calibrated
            logger.warning("%s: left out of the centering fit: %s", measurement.source_uri, exc)
            continue
        if usable:
            out.setdefault(measurement.method, []).append(
                (sex, measurement.lv_mass_raw_g, phenotype.manual_lv_mass_g))
    return out


def fit_centering(pairs: Sequence[tuple[Measurement, Any]], settings: DerivationSettings) -> dict[str, Any]:
    """Per centred method, the folder's own fit merged sex by sex with the fallback
    (``measure.merged_centering``)."""
    fitted = {}
    for method, triples in sorted(_centering_inputs(pairs).items()):
        triples = sorted(triples, key=repr)  # deterministic summation order, None-safe
        try:
            fitted[method] = fit_sex_centering([t[1] for t in triples], [t[2] for t in triples],
                                               [t[0] for t in triples], source="run")
        except ValueError as exc:  # no manual masses: fall back (or leave the calibrated mass empty)
            logger.info("no sex centering fitted for %s from the folder's measurements: %s", method, exc)
    return merged_centering(fitted, dict(settings.fallback_centering),
                            min_calibration_n=settings.min_calibration_n)


def derive_results(
    measurements: Iterable[Measurement], phenotypes: PhenotypeTable, settings: DerivationSettings
) -> Derived:
    """Every cohort-dependent value of every measurement: the derived table of an output folder.

    The same steps, in the same order, as the paper's method has always run here: join each measurement
    to its phenotype row (eid x visit); fit the per-sex centering of each centred method on the
    QC-passing measurements with a manual mass; calibrate (``measure.calibrate``: calibrated mass, BSA,
    LVMI, LVH; an ``inlinevf_recalibrated`` row beside every InlineVF one); then the per-sex 90th
    percentile of the QC-passing calibrated masses of each method and ``lvh_p90`` (``measure.apply_p90``).
    A record any step rejects is a ``phenotypes`` dead letter, never a lost row."""
    errors: list[ErrorRecord] = []
    pairs: list[tuple[Measurement, Any]] = []
    for measurement in measurements:
        try:
            phenotype = (None if measurement.eid is None
                         else phenotypes.lookup(measurement.eid, measurement.instance))
        except Exception as exc:  # a lookup the table cannot answer costs this record only
            errors.append(_dead_letter(measurement, exc))
            continue
        pairs.append((measurement, phenotype))
    centering = fit_centering(pairs, settings)

    calibrated: list[ResultRecord] = []
    for measurement, phenotype in pairs:
        try:
            out = [calibrate(measurement, phenotype, centering, raw_is_estimate=settings.raw_is_estimate)]
            if measurement.method == contracts.METHOD_INLINEVF:
                out.append(calibrate(recalibrated_inlinevf(measurement), phenotype, centering,
                                     raw_is_estimate=settings.raw_is_estimate))
        except Exception as exc:
            errors.append(_dead_letter((measurement, phenotype), exc))
            continue
        calibrated.extend(out)

    by_method: dict[str, list[tuple[str, float]]] = {}
    for record in calibrated:
        if record.sex is not None and record.lv_mass_g is not None and record.qc_pass:
            by_method.setdefault(record.method, []).append((record.sex, float(record.lv_mass_g)))
    thresholds = {}
    for method, sex_mass in sorted(by_method.items()):
        sex_mass = sorted(sex_mass)
        thresholds[method] = sex_percentile_thresholds([m for _, m in sex_mass], [s for s, _ in sex_mass],
                                                       contracts.LVH_PERCENTILE)
    records: list[ResultRecord] = []
    for record in calibrated:
        try:
            records.append(apply_p90(record, thresholds))
        except Exception as exc:
            errors.append(_dead_letter(record, exc))
    return Derived(records=ordered_records(records), errors=ordered_errors(errors), centering=centering,
                   p90_thresholds_g=thresholds)


def record_key(record: ResultRecord) -> tuple:
    """The derived table's order: method (in ``contracts.ALL_METHODS`` order), participant, visit, input."""
    rank = contracts.ALL_METHODS.index(record.method) if record.method in contracts.ALL_METHODS else 99
    return rank, record.method, record.participant_id, record.instance, record.source_uri


def ordered_records(records: Iterable[ResultRecord]) -> tuple[ResultRecord, ...]:
    """``records`` in :func:`record_key` order."""
    return tuple(sorted(records, key=record_key))


def error_key(error: ErrorRecord) -> tuple:
    """The dead letters' order: input, stage, type, message (then the rest, for a total order)."""
    return (error.source_uri, error.stage, error.error_type, error.message, error.participant_id or "",
            -1 if error.eid is None else error.eid, -1 if error.instance is None else error.instance)


def ordered_errors(errors: Iterable[ErrorRecord]) -> tuple[ErrorRecord, ...]:
    """``errors`` in :func:`error_key` order, each once (two runs may report one phenotype row)."""
    return tuple(sorted(set(errors), key=error_key))


def phenotype_error_records(path: str, table: PhenotypeTable) -> list[ErrorRecord]:
    """One dead letter per phenotype row the reader left out (stage ``phenotypes``; the participant's
    scan is still measured, without phenotypes, and flagged ``no_phenotype``). Derived at finalise, from
    the phenotype file the folder's values were derived with: one row each, however many runs."""
    return [
        ErrorRecord(source_uri=path, participant_id=None if row.eid is None else str(row.eid), eid=row.eid,
                    instance=row.instance, stage=STAGE_PHENOTYPES, error_type="PhenotypeRowRejected",
                    message=row.reason, pipeline_version=PIPELINE_VERSION)
        for row in table.rejected
    ]
