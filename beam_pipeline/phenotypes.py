"""Participant phenotypes (not in the zip): sex, age, height, weight, diseases, manual LV mass.

Reads the columns ``lvmass synth`` writes (:data:`beam_pipeline.schema.PHENOTYPE_COLUMNS`) from CSV or
Parquet. Sex may be ``female``/``male`` (any case, or ``F``/``M``) or UK Biobank's field 31 coding
``0`` = female, ``1`` = male. Only ``eid`` and ``sex`` are required; other columns may be absent
(unknown). Bad values raise ValueError naming the source, the eid and the value.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, BinaryIO

import pandas as pd

from beam_pipeline.schema import DISEASE_COLUMNS

REQUIRED_COLUMNS = ("eid", "sex")
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
        raise ValueError(f"{where}: sex {value!r} is not female/male or 0/1")
    if isinstance(value, int | float):
        if float(value) in (0.0, 1.0):
            return "female" if float(value) == 0.0 else "male"
        raise ValueError(f"{where}: sex {value!r} is not female/male or 0/1")
    key = str(value).strip().lower()
    if key in {"0.0", "1.0"}:
        key = key[0]
    if key not in _SEX_WORDS:
        raise ValueError(f"{where}: sex {value!r} is not female/male or 0/1")
    return _SEX_WORDS[key]


def _float(value: Any, column: str, where: str) -> float | None:
    if _missing(value):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} {value!r} is not a number") from None
    if not math.isfinite(out):
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
    raise ValueError(f"{where}: {column} {value!r} is not a 0/1 or true/false value")


def _eid(value: Any, where: str) -> int:
    if _missing(value):
        raise ValueError(f"{where}: eid is missing")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: eid {value!r} is not an integer") from None
    if not as_float.is_integer():
        raise ValueError(f"{where}: eid {value!r} is not an integer")
    return int(as_float)


def phenotypes_from_frame(df: pd.DataFrame, *, source: str) -> dict[int, Phenotype]:
    """Phenotypes keyed by eid from a DataFrame; raises ValueError on a missing required column, a bad
    value or a duplicated eid. The frame is not modified."""
    columns = {str(c).strip(): c for c in df.columns}
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{source}: phenotype table lacks column(s) {missing}; columns: {list(columns)}")
    out: dict[int, Phenotype] = {}
    records = df.to_dict(orient="records")
    for row_no, record in enumerate(records, start=1):
        row = {str(k).strip(): v for k, v in record.items()}
        eid = _eid(row["eid"], f"{source} row {row_no}")
        where = f"{source} eid {eid}"
        if eid in out:
            raise ValueError(f"{source}: eid {eid} appears more than once")
        out[eid] = Phenotype(
            eid=eid,
            sex=parse_sex(row["sex"], where=where),
            age=_float(row.get("age"), "age", where),
            height_cm=_float(row.get("height_cm"), "height_cm", where),
            weight_kg=_float(row.get("weight_kg"), "weight_kg", where),
            manual_lv_mass_g=_float(row.get("manual_lv_mass_g"), "manual_lv_mass_g", where),
            **{c: _bool(row.get(c), c, where) for c in DISEASE_COLUMNS},
        )
    return out


def read_phenotypes(fileobj: BinaryIO, *, source: str) -> dict[int, Phenotype]:
    """Read a CSV or Parquet phenotype file (Parquet recognised by its ``PAR1`` magic or a ``.parquet``
    name) and parse it with :func:`phenotypes_from_frame`."""
    data = fileobj.read()
    if not data:
        raise ValueError(f"{source}: phenotype file is empty")
    is_parquet = data[:4] == PARQUET_MAGIC or source.lower().endswith((".parquet", ".pq"))
    try:
        if is_parquet:
            df = pd.read_parquet(io.BytesIO(data))
        else:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as exc:
        kind = "Parquet" if is_parquet else "CSV"
        raise ValueError(f"{source}: cannot read phenotypes as {kind} ({type(exc).__name__}: {exc})") from exc
    return phenotypes_from_frame(df, source=source)
