"""Records and Parquet schemas of the pipeline's outputs, defined once.

``ResultRecord`` / ``ErrorRecord`` are what the pipeline emits; ``RESULTS_SCHEMA`` / ``ERRORS_SCHEMA`` are
their pyarrow schemas (a test checks the two agree field by field). Results are written
hive-partitioned by ``method`` (``OUTPUT/lvmass/method=ml4h_seg/*.parquet``), so the files themselves
carry ``RESULTS_FILE_SCHEMA`` (the schema without the partition column); DuckDB
(``read_parquet(..., hive_partitioning=true)``) and a BigQuery external table with hive partitioning
restore it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

RESULTS_PARTITION_COLUMNS: tuple[str, ...] = ("method",)
RESULTS_DIRNAME = "lvmass"
ERRORS_DIRNAME = "errors"
SUMMARY_FILENAME = "summary.json"
SUCCESS_FILENAME = "_SUCCESS"  # the folder's commit record (lvmass.storage.ledger): what a reader may read
LABELS_DIRNAME = "labels"  # --save_labels: OUTPUT/labels/method=<m>/<eid>_<instance>.npz
# The ledger (lvmass.storage.ledger). Names that begin with "_" are not for readers: Hive, pyarrow's
# datasets and the documented globs never list them.
RUNS_DIRNAME = "_runs"  # OUTPUT/_runs/<run_id>/: what one run wrote (measurements, errors; its temp files)
LEDGER_DIRNAME = "_ledger"  # OUTPUT/_ledger/runs/<run_id>.json: one manifest per committed run
MEASUREMENTS_DIRNAME = "measurements"  # OUTPUT/_runs/<run_id>/measurements/: the run's facts
# BigQuery's external tables read exactly the files these list (one gs:// URI a line), rewritten by every
# finalise after the commit (paths relative to OUTPUT, "/"-separated).
RESULTS_MANIFEST = "_ledger/bigquery/lvmass.manifest"
ERRORS_MANIFEST = "_ledger/bigquery/lvmass_errors.manifest"

# Output vocabularies: the values of ErrorRecord.stage and ResultRecord.calibration.
STAGE_READ = "read"  # the input could not be read (missing, not a zip, unreadable member)
STAGE_DECODE = "decode"  # DICOM headers, series, geometry or pixels could not give a short-axis stack
STAGE_TENSOR = "tensor"  # the stack could not be made into the model tensor or a participant id
STAGE_INFERENCE = "inference"  # a model failed on a batch
STAGE_MEASURE = "measure"  # labels or a prediction could not be measured
STAGE_PHENOTYPES = "phenotypes"  # a phenotype row was unusable, or joining/calibrating failed
STAGE_WRITE = "write"  # a row the Parquet file cannot hold (checked before the writer)
STAGES: tuple[str, ...] = (STAGE_READ, STAGE_DECODE, STAGE_TENSOR, STAGE_INFERENCE, STAGE_MEASURE,
                           STAGE_PHENOTYPES, STAGE_WRITE)

CALIBRATION_SEX_CENTERED = "sex_mean_centered"  # centred on the manual mean of the sex (the paper)
CALIBRATION_LINEAR = "linear_recalibration"  # InlineVF: 0.543487 x raw + 5.808005 (the paper)
CALIBRATION_NONE = "none"  # left raw (ML4H_reg), or no centering could be done (then lv_mass_g is None)

# Phenotype file columns, as `lvmass synth` writes them (UK Biobank's 0=female/1=male coding is
# also accepted by the reader).
PHENOTYPE_COLUMNS: tuple[str, ...] = (
    "eid",
    "sex",
    "age",
    "height_cm",
    "weight_kg",
    "hypertension",
    "atrial_fibrillation",
    "heart_failure",
    "manual_lv_mass_g",
)
DISEASE_COLUMNS: tuple[str, ...] = ("hypertension", "atrial_fibrillation", "heart_failure")


@dataclass(frozen=True)
class ResultRecord:
    """One participant x instance x method. Units are in the names; None means unknown.

    ``participant_id`` is the UK Biobank eid as text, else the stem of the input's file or folder name;
    ``eid`` is None outside UK Biobank. ``pixel_spacing_*_mm`` are the acquired PixelSpacing (in the
    standard view); ``tensor_pixel_spacing_mm`` is the model grid's pixel size and ``in_plane_scale`` the
    acquired / grid ratio along the rows (InlineVF is measured on the acquired grid)."""

    participant_id: str
    eid: int | None
    instance: int
    method: str
    lv_mass_raw_g: float | None
    lv_mass_g: float | None  # calibrated: sex-centred (seg, inlinevf), recalibrated, or raw (reg)
    calibration: str  # CALIBRATION_*; "sex_mean_centered:<source>" for a fallback centering
    myocardium_volume_ml: float | None
    lv_cavity_volume_ml: float | None
    bsa_m2: float | None
    lvmi_g_m2: float | None
    lvh: bool | None
    lvh_p90: bool | None
    sex: str | None
    age: float | None
    n_slices: int
    pixel_spacing_row_mm: float
    pixel_spacing_col_mm: float
    slice_spacing_mm: float
    tensor_pixel_spacing_mm: float
    in_plane_scale: float
    qc_flags: list[str] = field(default_factory=list)
    qc_pass: bool = True
    model_version: str | None = None
    pipeline_version: str = ""
    source_uri: str = ""

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ErrorRecord:
    """One failed input (dead letter): nothing is dropped silently."""

    source_uri: str
    participant_id: str | None
    eid: int | None
    instance: int | None
    stage: str  # one of STAGES
    error_type: str
    message: str
    pipeline_version: str = ""

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RESULTS_SCHEMA = pa.schema(
    [
        pa.field("participant_id", pa.string(), nullable=False),
        pa.field("eid", pa.int64()),
        pa.field("instance", pa.int32(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("lv_mass_raw_g", pa.float64()),
        pa.field("lv_mass_g", pa.float64()),
        pa.field("calibration", pa.string(), nullable=False),
        pa.field("myocardium_volume_ml", pa.float64()),
        pa.field("lv_cavity_volume_ml", pa.float64()),
        pa.field("bsa_m2", pa.float64()),
        pa.field("lvmi_g_m2", pa.float64()),
        pa.field("lvh", pa.bool_()),
        pa.field("lvh_p90", pa.bool_()),
        pa.field("sex", pa.string()),
        pa.field("age", pa.float64()),
        pa.field("n_slices", pa.int32(), nullable=False),
        pa.field("pixel_spacing_row_mm", pa.float64(), nullable=False),
        pa.field("pixel_spacing_col_mm", pa.float64(), nullable=False),
        pa.field("slice_spacing_mm", pa.float64(), nullable=False),
        pa.field("tensor_pixel_spacing_mm", pa.float64(), nullable=False),
        pa.field("in_plane_scale", pa.float64(), nullable=False),
        pa.field("qc_flags", pa.list_(pa.string()), nullable=False),
        pa.field("qc_pass", pa.bool_(), nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("pipeline_version", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
    ]
)

RESULTS_FILE_SCHEMA = pa.schema(
    [f for f in RESULTS_SCHEMA if f.name not in RESULTS_PARTITION_COLUMNS]
)

# What a run measured (``measure.Measurement``, one row per input x method), before anything that depends
# on the cohort or the phenotypes: the facts the ledger keeps, written once per input and never rewritten.
# Every column is a ``RESULTS_SCHEMA`` column of the same type, so the derived table is these facts plus
# the cohort's values (lvmass.core.derive).
MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "participant_id", "eid", "instance", "method", "lv_mass_raw_g", "myocardium_volume_ml",
    "lv_cavity_volume_ml", "n_slices", "pixel_spacing_row_mm", "pixel_spacing_col_mm", "slice_spacing_mm",
    "tensor_pixel_spacing_mm", "in_plane_scale", "qc_flags", "model_version", "pipeline_version",
    "source_uri",
)
MEASUREMENTS_SCHEMA = pa.schema([RESULTS_SCHEMA.field(name) for name in MEASUREMENT_COLUMNS])

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("participant_id", pa.string()),
        pa.field("eid", pa.int64()),
        pa.field("instance", pa.int32()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("pipeline_version", pa.string(), nullable=False),
    ]
)


def check_result_row(row: dict[str, Any]) -> None:
    """Raise (ValueError, OverflowError, pyarrow.ArrowInvalid...) when ``row`` cannot be written with
    ``RESULTS_FILE_SCHEMA``: the check the writer would otherwise fail on, for the whole run."""
    try:
        pa.Table.from_pylist([row], schema=RESULTS_FILE_SCHEMA)
    except (pa.ArrowException, OverflowError, TypeError) as exc:
        raise ValueError(f"{row.get('source_uri', '?')}: the result row cannot be written to Parquet "
                         f"({type(exc).__name__}: {exc})") from exc


def check_measurement_row(row: dict[str, Any]) -> None:
    """Raise ValueError naming the input when ``row`` cannot be written with ``MEASUREMENTS_SCHEMA``."""
    try:
        pa.Table.from_pylist([row], schema=MEASUREMENTS_SCHEMA)
    except (pa.ArrowException, OverflowError, TypeError) as exc:
        raise ValueError(f"{row.get('source_uri', '?')}: the measurement row cannot be written to Parquet "
                         f"({type(exc).__name__}: {exc})") from exc


_INT_BOUNDS = {"eid": (-(2**63), 2**63 - 1), "instance": (-(2**31), 2**31 - 1)}


def writable_error_row(row: dict[str, Any]) -> dict[str, Any]:
    """An ``ERRORS_SCHEMA`` row that the writer can always hold: ids outside their integer columns are
    set to None (the dead letter's own message still names the input)."""
    out = dict(row)
    for name, (low, high) in _INT_BOUNDS.items():
        value = out.get(name)
        if value is not None and (not isinstance(value, int) or not low <= value <= high):
            out[name] = None
    return out
