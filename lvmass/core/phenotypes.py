"""Participant phenotypes (not in the zip): sex, age, height, weight, diseases, manual LV mass.

Reads the columns ``lvmass synth`` writes (:data:`lvmass.core.schema.PHENOTYPE_COLUMNS`) from CSV or
Parquet. Sex may be ``female``/``male`` (any case, or ``F``/``M``) or UK Biobank's field 31 coding
``0`` = female, ``1`` = male. Only ``eid`` and ``sex`` are required; other columns may be absent
(unknown); columns other than :data:`FILE_COLUMNS` are ignored (in Parquet, never decoded). Values that
cannot be parsed raise ValueError naming the source, the eid (or row), the column and the value; numbers
that parse but cannot be true of a person (height 0 cm, a negative weight: outside
:data:`PLAUSIBLE_RANGES`) are recorded as unknown (None) and logged, so one bad row never stops a run.

This is the one phenotype reader: the pipeline (``transforms.load_phenotypes``) and the analysis
(``analysis.io.read_phenotypes``) both read with :func:`read_phenotype_table`, so they accept the same
files and reject the same ones with the same messages.

Visits: a table with an ``instance`` column holds one row per participant x imaging visit and is joined
on (eid, instance) (:class:`PhenotypeTable`). Without one it holds one row per participant: sex, age,
height, weight and diseases go to every visit's scans, but the manual LV mass only to instance
:data:`MANUAL_MASS_INSTANCE` (2, the first imaging visit, where UK Biobank's manual contours were drawn):
a first-visit manual mass says nothing about a repeat-visit (instance 3) scan.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pandas as pd
import pyarrow.parquet as pq

from lvmass.core.schema import DISEASE_COLUMNS, PHENOTYPE_COLUMNS

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("eid", "sex")
INSTANCE_COLUMN = "instance"
FILE_COLUMNS: tuple[str, ...] = (*PHENOTYPE_COLUMNS, INSTANCE_COLUMN)  # the columns read; others are skipped
MANUAL_MASS_INSTANCE = 2
# Open intervals (low, high) of values a person can have; anything outside is recorded as unknown.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "age": (0.0, 130.0),
    "height_cm": (40.0, 275.0),
    "weight_kg": (2.0, 650.0),
    "manual_lv_mass_g": (0.0, 1000.0),
}
_SEX_WORDS = {"female": "female", "f": "female", "male": "male", "m": "male", "0": "female", "1": "male"}
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}
PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Phenotype:
    """One participant's phenotypes; None means unknown."""

    eid: int
    sex: str | None  # 'female' | 'male' | None
    age: float | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    hypertension: bool | None = None
    atrial_fibrillation: bool | None = None
    heart_failure: bool | None = None
    manual_lv_mass_g: float | None = None
    instance: int | None = None  # the visit this row describes; None: the table has no instance column
    implausible: tuple[str, ...] = ()  # columns whose value was impossible and is recorded as unknown


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in {"", "NA", "NaN", "nan", "None", "null"}


def parse_sex(value: Any, *, where: str) -> str | None:
    """'female'/'male' from words, F/M, or UK Biobank 0 (female) / 1 (male); None when missing."""
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise _bad_sex(value, where)
    if isinstance(value, int | float):
        if float(value) in (0.0, 1.0):
            return "female" if float(value) == 0.0 else "male"
        raise _bad_sex(value, where)
    key = str(value).strip().lower()
    if key in {"0.0", "1.0"}:
        key = key[0]
    if key not in _SEX_WORDS:
        raise _bad_sex(value, where)
    return _SEX_WORDS[key]


def _bad_sex(value: Any, where: str) -> ValueError:
    return ValueError(
        f"{where}: sex {value!r} is not female/male or 0/1 "
        f"(column 'sex' must be female/male or 0/1; bad value {value!r})"
    )


def _float(value: Any, column: str, where: str, implausible: list[str] | None = None) -> float | None:
    """A number, None when missing or non-finite; outside ``PLAUSIBLE_RANGES[column]`` it is None too,
    and ``where``/value are appended to ``implausible``."""
    if _missing(value):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: {column} {value!r} is not a number "
            f"(column {column!r} has a non-numeric value {value!r})"
        ) from None
    if not math.isfinite(out):
        return None
    bounds = PLAUSIBLE_RANGES.get(column)
    if bounds is not None and not bounds[0] < out < bounds[1]:
        if implausible is not None:
            implausible.append(f"{where}: {column} {value!r}")
        return None
    return out


def _bool(value: Any, column: str, where: str) -> bool | None:
    if _missing(value):
        return None
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key.endswith(".0"):
        key = key[:-2]
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(
        f"{where}: {column} {value!r} is not a 0/1 or true/false value (column {column!r} must be 0/1 or "
        "true/false)"
    )


EID_MIN, EID_MAX = -(2**63), 2**63 - 1  # the results' eid column is int64


def _eid(value: Any, where: str) -> int:
    """The eid, exactly: digits are read as an integer (never through a float, which would round an eid
    past 2**53), ``1000001.0`` is accepted, and an eid an int64 cannot hold is refused."""
    if _missing(value):
        raise ValueError(f"{where}: eid is missing")
    text = str(value).strip()
    if text.lstrip("+-").isdigit():
        eid = int(text)
    else:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise _bad_eid(value, where) from None
        if not as_float.is_integer():
            raise _bad_eid(value, where)
        eid = int(as_float)
    if not EID_MIN <= eid <= EID_MAX:
        raise ValueError(f"{where}: eid {value!r} is outside {EID_MIN}..{EID_MAX} (eid must fit a 64-bit "
                         "integer, as the results' eid column does)")
    return eid


def _bad_eid(value: Any, where: str) -> ValueError:
    return ValueError(f"{where}: eid {value!r} is not an integer (eid must be integers)")


def _instance(value: Any, where: str) -> int:
    if _missing(value):
        raise ValueError(f"{where}: instance is missing")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: instance {value!r} is not an integer") from None
    if not as_float.is_integer():
        raise ValueError(f"{where}: instance {value!r} is not an integer")
    return int(as_float)


@dataclass(frozen=True)
class RejectedRow:
    """A phenotype row that cannot be used (a bad value, a duplicated key): a dead letter, not a crash."""

    row_number: int  # 1 = the first data row
    eid: int | None
    instance: int | None
    reason: str


def _parse_rows(
    df: pd.DataFrame, *, source: str, rejected: list[RejectedRow] | None = None
) -> tuple[list[Phenotype], bool]:
    """Every row as a Phenotype (``instance`` set when the table has that column), and whether it has.

    A row with a bad value raises ValueError, or, when ``rejected`` is given, is appended there and left
    out (the other rows are still read)."""
    columns = {str(c).strip(): c for c in df.columns}
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{source}: phenotype table lacks column(s) {missing}; columns: {list(columns)}")
    per_instance = INSTANCE_COLUMN in columns
    out: list[Phenotype] = []
    implausible: list[str] = []
    records = df.to_dict(orient="records")
    for row_no, record in enumerate(records, start=1):
        row = {str(k).strip(): v for k, v in record.items()}
        try:
            phenotype, row_implausible = _parse_row(row, row_no, source=source, per_instance=per_instance)
        except ValueError as exc:
            if rejected is None:
                raise
            eid = _eid_or_none(row.get("eid"))
            instance = _eid_or_none(row.get(INSTANCE_COLUMN)) if per_instance else None
            rejected.append(RejectedRow(row_number=row_no, eid=eid, instance=instance, reason=str(exc)))
            continue
        out.append(phenotype)
        implausible.extend(row_implausible)
    if implausible:
        logger.warning("%s: %d implausible value(s) recorded as unknown, e.g. %s", source, len(implausible),
                       "; ".join(implausible[:5]))
    return out, per_instance


def _eid_or_none(value: Any) -> int | None:
    try:
        return _eid(value, "")
    except ValueError:
        return None


def _parse_row(
    row: Mapping[str, Any], row_no: int, *, source: str, per_instance: bool
) -> tuple[Phenotype, list[str]]:
    """One row as a Phenotype, and its implausible values (recorded as unknown); ValueError when bad."""
    eid = _eid(row["eid"], f"{source} row {row_no}")
    instance = _instance(row[INSTANCE_COLUMN], f"{source} row {row_no}") if per_instance else None
    where = f"{source} eid {eid}" + (f" instance {instance}" if per_instance else "")
    row_implausible: list[str] = []
    phenotype = Phenotype(
        eid=eid,
        sex=parse_sex(row["sex"], where=where),
        age=_float(row.get("age"), "age", where, row_implausible),
        height_cm=_float(row.get("height_cm"), "height_cm", where, row_implausible),
        weight_kg=_float(row.get("weight_kg"), "weight_kg", where, row_implausible),
        manual_lv_mass_g=_float(row.get("manual_lv_mass_g"), "manual_lv_mass_g", where, row_implausible),
        instance=instance,
        implausible=tuple(c for c in PLAUSIBLE_RANGES if any(f": {c} " in s for s in row_implausible)),
        **{c: _bool(row.get(c), c, where) for c in DISEASE_COLUMNS},
    )
    return phenotype, row_implausible


def phenotypes_from_frame(df: pd.DataFrame, *, source: str) -> dict[int, Phenotype]:
    """Phenotypes keyed by eid from a DataFrame; raises ValueError on a missing required column, a bad
    value or a duplicated eid (a table with one row per visit is read by :func:`phenotype_table_from_frame`).
    The frame is not modified."""
    rows, _ = _parse_rows(df, source=source)
    out: dict[int, Phenotype] = {}
    for phenotype in rows:
        if phenotype.eid in out:
            raise ValueError(f"{source}: eid {phenotype.eid} appears more than once")
        out[phenotype.eid] = phenotype
    return out


@dataclass(frozen=True)
class PhenotypeTable:
    """Phenotype rows and the rule joining them to a scan (participant x imaging visit).

    ``per_instance``: rows are keyed by (eid, instance) and a scan gets the row of its own visit, or
    none. Otherwise rows are keyed by (eid, None): every visit gets the row, without its manual LV
    mass unless the visit is :data:`MANUAL_MASS_INSTANCE`.
    """

    rows: Mapping[tuple[int, int | None], Phenotype] = field(default_factory=dict)
    per_instance: bool = False
    rejected: tuple[RejectedRow, ...] = ()  # rows left out (lenient reading only)

    def lookup(self, eid: int, instance: int | None) -> Phenotype | None:
        """The phenotype to attach to the scan of ``eid`` at visit ``instance`` (None: no row)."""
        if self.per_instance:
            return self.rows.get((eid, instance))
        phenotype = self.rows.get((eid, None))
        if phenotype is None or instance == MANUAL_MASS_INSTANCE or phenotype.manual_lv_mass_g is None:
            return phenotype
        return dataclasses.replace(phenotype, manual_lv_mass_g=None)

    def __len__(self) -> int:
        return len(self.rows)


def phenotype_table_from_frame(df: pd.DataFrame, *, source: str, lenient: bool = False) -> PhenotypeTable:
    """A :class:`PhenotypeTable` from a DataFrame (per visit when it has an ``instance`` column); raises
    ValueError as :func:`phenotypes_from_frame` does, and on a duplicated eid (or eid x instance).

    ``lenient`` (the pipeline): a bad row, and every row of a duplicated key (which of them is right
    cannot be known), is left out and listed in ``rejected``; a missing required column still raises."""
    rejected: list[RejectedRow] | None = [] if lenient else None
    rows, per_instance = _parse_rows(df, source=source, rejected=rejected)
    keyed: dict[tuple[int, int | None], Phenotype] = {}
    duplicated: dict[tuple[int, int | None], list[int]] = {}
    for row_no, phenotype in enumerate(rows, start=1):
        key = (phenotype.eid, phenotype.instance)
        what = f"eid {key[0]}" + (f" instance {key[1]}" if per_instance else "")
        if key in keyed or key in duplicated:
            if rejected is None:
                raise ValueError(f"{source}: {what} appears more than once")
            duplicated.setdefault(key, []).append(row_no)
            keyed.pop(key, None)
        else:
            keyed[key] = phenotype
    if rejected is not None:
        for (eid, instance), _ in sorted(duplicated.items()):
            what = f"eid {eid}" + (f" instance {instance}" if per_instance else "")
            rejected.append(RejectedRow(row_number=0, eid=eid, instance=instance,
                                        reason=f"{source}: {what} appears more than once; all its rows "
                                        "are left out"))
    return PhenotypeTable(rows=keyed, per_instance=per_instance, rejected=tuple(rejected or ()))


def _read_frame(fileobj: BinaryIO, *, source: str) -> pd.DataFrame:
    """The table as a DataFrame (a CSV's values as strings). Of a Parquet file only the
    :data:`FILE_COLUMNS` are decoded (names compared without surrounding spaces), so a broken column
    the reader does not use cannot fail it."""
    data = fileobj.read()
    if not data:
        raise ValueError(f"{source}: phenotype file is empty")
    is_parquet = data[:4] == PARQUET_MAGIC or source.lower().endswith((".parquet", ".pq"))
    try:
        if is_parquet:
            with pq.ParquetFile(io.BytesIO(data)) as parquet:
                used = [n for n in parquet.schema_arrow.names if str(n).strip() in FILE_COLUMNS]
                frame = parquet.read(columns=used).to_pandas()
        else:
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as exc:
        kind = "Parquet" if is_parquet else "CSV"
        raise ValueError(f"{source}: cannot read phenotypes as {kind} ({type(exc).__name__}: {exc})") from exc
    if len(frame.columns) == 1:
        header = str(frame.columns[0])
        for name, delimiter in (("semicolon", ";"), ("tab", "\t"), ("pipe", "|")):
            if delimiter in header:
                raise ValueError(f"{source}: the header {header[:60]!r} looks {name}-delimited; phenotype "
                                 "CSV files must be comma-separated")
    if len(frame) == 0 and len(frame.columns):  # a header alone: every participant would be no_phenotype
        raise ValueError(f"{source}: the phenotype file holds no rows (columns {list(frame.columns)}); "
                         "without rows every participant would be measured without phenotypes: give a "
                         "file with rows, or leave the phenotypes out")
    return frame


def read_phenotype_table(fileobj: BinaryIO, *, source: str, lenient: bool = False) -> PhenotypeTable:
    """Read a CSV or Parquet phenotype file (as :func:`read_phenotypes`) into a :class:`PhenotypeTable`
    (``lenient``: bad rows are listed in ``rejected`` instead of raising)."""
    return phenotype_table_from_frame(_read_frame(fileobj, source=source), source=source, lenient=lenient)


def read_phenotypes(fileobj: BinaryIO, *, source: str) -> dict[int, Phenotype]:
    """Read a CSV or Parquet phenotype file (Parquet recognised by its ``PAR1`` magic or a ``.parquet``
    name) and parse it with :func:`phenotypes_from_frame`."""
    return phenotypes_from_frame(_read_frame(fileobj, source=source), source=source)
