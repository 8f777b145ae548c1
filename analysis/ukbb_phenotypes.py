"""``lvmass phenotypes``: the phenotype table, built from a UK Biobank main-dataset export.

Users of real UK Biobank data hold a main-dataset export, not the synthetic ``phenotypes.csv``. This module
turns that export (CSV or Parquet with an ``eid`` column and ``<field>-<instance>.<array>`` columns, the
layout of UK Biobank's ``ukbconv``) into the table ``lvmass.core.phenotypes.read_phenotype_table`` reads:
one row per participant x imaging visit (instances 2 and 3, in an ``instance`` column), with sex, age,
height, weight at that visit, the three diseases of Khurshid et al. 2021 prevalent at that visit, and an
optional manual LV mass merged from a separate file (UK Biobank does not ship Petersen's manual masses
as a field in every release).

Every mapping (UK Biobank field -> column) is :data:`FIELD_MAPPINGS` and every disease definition
(ICD-10, ICD-9 and self-report codes) is :data:`DISEASE_DEFINITIONS`; ``docs/ukbb_phenotypes.md`` states
both with the paper's wording, and a test keeps the page and these constants in step.

What is refused and what is reported: an export without ``eid``, without sex (``31-0.0``), without any
imaging-visit column, or with ICD codes but no date to cut them at, raises ValueError naming the file and
the column. A row or value with a problem never vanishes: it is listed, with the reason and what was done
(row not written, value left unknown), in the rejected table written beside the output
(``<out>.rejected.csv``), and counted in the log.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.export import output_format
from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.core.phenotypes import INSTANCE_COLUMN, MANUAL_MASS_INSTANCE
from lvmass.core.schema import DISEASE_COLUMNS, PHENOTYPE_COLUMNS
from lvmass.storage import filesystems

logger = logging.getLogger(__name__)

# --- UK Biobank fields (showcase ids) -----------------------------------------------------------------
FIELD_SEX = 31  # Sex; coding 9: 0 = Female, 1 = Male; recorded at instance 0
FIELD_VISIT_DATE = 53  # Date of attending assessment centre
FIELD_HEIGHT_CM = 50  # Standing height (cm)
FIELD_WEIGHT_KG = 21002  # Weight (kg)
FIELD_AGE_YEARS = 21003  # Age when attended assessment centre (years)
FIELD_ICD10 = 41270  # Diagnoses - ICD10 (hospital inpatient records, all diagnoses); coding 19
FIELD_ICD10_DATE = 41280  # Date of first in-patient diagnosis - ICD10 (array index matches 41270's)
FIELD_ICD9 = 41271  # Diagnoses - ICD9; coding 87
FIELD_ICD9_DATE = 41281  # Date of first in-patient diagnosis - ICD9 (array index matches 41271's)
FIELD_SELF_REPORT = 20002  # Non-cancer illness code, self-reported (verbal interview); coding 6

IMAGING_INSTANCES: tuple[int, ...] = (2, 3)  # 2 = first imaging visit (2014+), 3 = first repeat imaging
SUMMARY_INSTANCE = 0  # fields recorded once (sex, hospital diagnoses) sit at instance 0
EID_COLUMN = "eid"
# A participant attended visit i when any of these is set at instance i.
VISIT_FIELDS: tuple[int, ...] = (FIELD_VISIT_DATE, FIELD_AGE_YEARS, FIELD_HEIGHT_CM, FIELD_WEIGHT_KG)
ICD_SYSTEMS: tuple[tuple[str, int, int], ...] = (  # (system, code field, date field)
    ("ICD-10", FIELD_ICD10, FIELD_ICD10_DATE),
    ("ICD-9", FIELD_ICD9, FIELD_ICD9_DATE),
)

# The paper's words for its disease definitions (Methods) and for when disease was counted (Results).
PAPER_DISEASE_WORDING = (
    "Diseases were defined using self-report and inpatient ICD-9/10 codes (updated through March 31, 2020; "
    "Supplemental Table 1)."
)
PAPER_PREVALENCE_WORDING = (
    "At the time of CMR acquisition, there were 11,271 prevalent hypertension, 1053 atrial fibrillation, "
    "and 241 heart failure events."
)
CODE_LIST_SOURCE = (
    "Supplemental Table 1 is not part of the paper's text; these are the definitions the authors' group "
    "(Khurshid, Lubitz, Ellinor et al.) uses for UK Biobank: check them against the supplement."
)


@dataclass(frozen=True)
class FieldMapping:
    """One phenotype column and the UK Biobank export columns it comes from."""

    column: str  # the phenotype table's column
    fields: str  # UK Biobank field ids (or the input it comes from)
    export_columns: str  # the export's columns, ``<field>-<instance>.<array>``
    rule: str  # how the value is made


@dataclass(frozen=True)
class DiseaseDefinition:
    """A prevalent disease: any listed code dated on or before the visit, or any listed self-report at
    or before it. Codes are written as in ICD (dotted); a code matches every code it is a prefix of
    (``I42`` matches ``I42.0``...``I42.9``), compared without dots as UK Biobank writes them (``I420``)."""

    column: str  # a DISEASE_COLUMNS name
    icd10: tuple[str, ...]
    icd9: tuple[str, ...]
    self_report: tuple[int, ...]  # field 20002 codes (UK Biobank coding 6)
    self_report_names: tuple[str, ...]
    source: str = CODE_LIST_SOURCE


DISEASE_DEFINITIONS: dict[str, DiseaseDefinition] = {
    "hypertension": DiseaseDefinition(
        column="hypertension",
        icd10=("I10", "I11", "I12", "I13", "I15"),  # I10-I15 (there is no I14)
        icd9=("401", "402", "403", "404", "405"),
        self_report=(1065, 1072),
        self_report_names=("hypertension", "essential hypertension"),
    ),
    "atrial_fibrillation": DiseaseDefinition(
        column="atrial_fibrillation",
        icd10=("I48",),  # atrial fibrillation and flutter
        icd9=("427.3",),
        self_report=(1471, 1483),
        self_report_names=("atrial fibrillation", "atrial flutter"),
    ),
    "heart_failure": DiseaseDefinition(
        column="heart_failure",
        icd10=("I50", "I11.0", "I13.0", "I13.2", "I25.5", "I42"),
        icd9=("428", "425"),
        self_report=(1076,),
        self_report_names=("heart failure/pulmonary odema",),
    ),
}

FIELD_MAPPINGS: tuple[FieldMapping, ...] = (
    FieldMapping("eid", "eid", "eid", "the participant's id (an integer); a row without one is rejected"),
    FieldMapping("instance", "53, 21003, 50, 21002", "53-i.0, 21003-i.0, 50-i.0, 21002-i.0 for i in 2, 3",
                 "one row per imaging visit i the participant attended (any of these columns set)"),
    FieldMapping("sex", "31", "31-0.0", "0 -> female, 1 -> male (coding 9); the same for every visit"),
    FieldMapping("age", "21003", "21003-i.0", "age when attended the visit, years"),
    FieldMapping("height_cm", "50", "50-i.0", "standing height at the visit, cm"),
    FieldMapping("weight_kg", "21002", "21002-i.0", "weight at the visit, kg"),
    *(
        FieldMapping(
            d.column,
            "41270 + 41280, 41271 + 41281, 20002, 53",
            "41270-0.n + 41280-0.n, 41271-0.n + 41281-0.n, 20002-j.n for j <= i, 53-i.0",
            "1 when a listed hospital code's first-diagnosis date is on or before the visit date, or a "
            "listed self-report was given at the visit or an earlier one; 0 otherwise; blank when a listed "
            "code cannot be dated (a blank date, or a blank visit date) and nothing else says 1",
        )
        for d in DISEASE_DEFINITIONS.values()
    ),
    FieldMapping("manual_lv_mass_g", "--manual_mass", "eid[, instance], manual_lv_mass_g",
                 "merged on (eid, instance); without an instance column, on instance 2 (the visit whose "
                 "images were contoured by hand)"),
)

# The rejected table: one row per problem, what was done about it.
REJECTED_COLUMNS: tuple[str, ...] = ("eid", "instance", "column", "value", "reason", "outcome")
OUTCOME_ROW = "row not written"
OUTCOME_UNKNOWN = "value left unknown"
OUTCOME_IGNORED = "value ignored"
OUTCOME_NOT_MERGED = "manual mass not merged"
MANUAL_MASS_COLUMNS: tuple[str, ...] = ("eid", "manual_lv_mass_g")  # required; ``instance`` optional

_HEADER = re.compile(r"^(\d+)-(\d+)\.(\d+)$")
_BLANK = {"", "na", "nan", "none", "null", "<na>", "nat"}
PARQUET_MAGIC = b"PAR1"
READ_CHUNK_ROWS = 100_000  # export rows parsed at a time: memory stays small on a 500,000-row dataset
NOT_IMAGED_ROWS = "not_imaged_rows"  # read_export's attrs key: rows of participants never imaged
_READ_FIELDS = frozenset(
    {FIELD_SEX, *VISIT_FIELDS, FIELD_SELF_REPORT, *(f for _, c, d in ICD_SYSTEMS for f in (c, d))}
)


class ExportError(ValueError):
    """An input cannot be used at all: the message names the file and the column."""


@dataclass(frozen=True)
class PhenotypeBuild:
    """The phenotype table, the problems met on the way, and counts for the log."""

    table: pd.DataFrame  # PHENOTYPE_COLUMNS with ``instance`` after ``eid``; diseases pandas "boolean"
    rejected: pd.DataFrame  # REJECTED_COLUMNS
    counts: dict[str, int] = field(default_factory=dict)


# --- Column names -----------------------------------------------------------------------------------
def export_column(field_id: int, instance: int, array: int = 0) -> str:
    """UK Biobank's column name for a field's instance and array index: ``21003-2.0``."""
    return f"{field_id}-{instance}.{array}"


def _field_columns(columns: Sequence[str]) -> dict[int, dict[tuple[int, int], str]]:
    """``{field: {(instance, array): column}}`` for every ``<field>-<instance>.<array>`` column."""
    out: dict[int, dict[tuple[int, int], str]] = {}
    for column in columns:
        match = _HEADER.match(str(column).strip())
        if match:
            field_id, instance, array = (int(g) for g in match.groups())
            out.setdefault(field_id, {})[(instance, array)] = column
    return out


def _wanted(column: str) -> bool:
    """Whether an export column is read (the others, thousands in a main dataset, are never parsed)."""
    name = str(column).strip()
    if name == EID_COLUMN:
        return True
    match = _HEADER.match(name)
    return bool(match) and int(match.group(1)) in _READ_FIELDS


# --- Reading ----------------------------------------------------------------------------------------
def _is_parquet(path: str, head: bytes) -> bool:
    return head == PARQUET_MAGIC or path.lower().endswith((".parquet", ".pq"))


def _visited(chunk: pd.DataFrame, instances: Sequence[int]) -> pd.Series:
    """Rows with any imaging-visit column set (all rows when the export has no such column: the builder
    then names what is missing)."""
    columns = [export_column(f, i) for i in instances for f in VISIT_FIELDS]
    present = [c for c in chunk.columns if str(c).strip() in columns]
    if not present:
        return pd.Series(True, index=chunk.index)
    return ~pd.concat([_blank(chunk[c]) for c in present], axis=1).all(axis=1)


def read_export(path: str, *, instances: Sequence[int] = IMAGING_INSTANCES,
                chunk_rows: int = READ_CHUNK_ROWS) -> pd.DataFrame:
    """The export's ``eid`` and the fields this module uses, for the participants who attended one of the
    imaging ``instances`` (local or ``gs://``, CSV or Parquet).

    Only those columns are parsed (a main dataset has thousands), ``chunk_rows`` rows at a time, and
    only the imaged participants (about one in ten) are kept: the others are counted in
    ``attrs[NOT_IMAGED_ROWS]``. Values keep their file types (CSV: all strings; Parquet: as stored);
    :func:`build_phenotypes` parses them."""
    if not filesystems.exists(path):
        raise ExportError(f"{path}: no such file")
    kept: list[pd.DataFrame] = []
    skipped = 0
    try:
        with filesystems.open_read(path) as stream:
            head = stream.read(4)
            stream.seek(0)
            if _is_parquet(path, head):
                parquet = pq.ParquetFile(stream)
                names = [n for n in parquet.schema_arrow.names if _wanted(n)]
                chunks = (b.to_pandas() for b in parquet.iter_batches(batch_size=chunk_rows, columns=names))
            else:
                header = pd.read_csv(stream, nrows=0, encoding_errors="replace")
                names = [n for n in header.columns if _wanted(n)]
                stream.seek(0)
                chunks = pd.read_csv(stream, usecols=names, dtype=str, keep_default_na=False,
                                     encoding_errors="replace", chunksize=chunk_rows)
            for chunk in chunks:
                visited = _visited(chunk, instances)
                skipped += int((~visited).sum())
                kept.append(chunk.loc[visited])
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"{path}: cannot be read as a UK Biobank export ({type(exc).__name__}: {exc})"
        ) from exc
    frame = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=names)
    frame.attrs[NOT_IMAGED_ROWS] = skipped
    return frame


def read_manual_mass(path: str) -> pd.DataFrame:
    """The ``--manual_mass`` file (CSV or Parquet: eid[, instance], manual_lv_mass_g), values unparsed."""
    if not filesystems.exists(path):
        raise ExportError(f"{path}: no such file")
    try:
        data = filesystems.read_bytes(path)
        if _is_parquet(path, data[:4]):
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
        else:
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ExportError(f"{path}: cannot be read as a manual LV mass table ({type(exc).__name__}: {exc})") \
            from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in MANUAL_MASS_COLUMNS if c not in frame.columns]
    if missing:
        raise ExportError(f"{path}: manual LV mass table lacks column(s) {missing} (needs eid, "
                          f"manual_lv_mass_g and optionally instance); columns: {list(frame.columns)}")
    return frame


# --- Parsing values ---------------------------------------------------------------------------------
def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | series.astype(str).str.strip().str.lower().isin(_BLANK)


def _numbers(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Floats (NaN when blank or bad) and a mask of the values that were set but not numbers."""
    blank = _blank(series)
    values = pd.to_numeric(series.where(~blank).astype(object), errors="coerce").astype(float)
    return values, ~blank & values.isna()


def _dates(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Dates (NaT when blank or bad) and a mask of the values that were set but not dates."""
    blank = _blank(series)
    text = series.where(~blank).astype(object)
    values = pd.to_datetime(text.map(lambda v: v if v is None or not isinstance(v, str) else v.strip()),
                            errors="coerce", format="ISO8601")
    return values, ~blank & values.isna()


def _normalised_codes(series: pd.Series) -> pd.Series:
    """ICD codes as UK Biobank writes them: upper case, no dots, the code alone (``I48.0 Atrial...`` ->
    ``I480``)."""
    return series.astype(str).str.strip().str.split(n=1).str[0].str.replace(".", "", regex=False).str.upper()


def _prefixes(codes: Sequence[str]) -> tuple[str, ...]:
    return tuple(c.replace(".", "").upper() for c in codes)


# --- Building ---------------------------------------------------------------------------------------
class _Problems:
    """Collects rejected rows and values (the rejected table)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, eids: Sequence[Any], instance: int | None, column: str, values: Sequence[Any],
            reason: str, outcome: str) -> None:
        for eid, value in zip(eids, values, strict=True):
            self.rows.append({"eid": eid, "instance": instance, "column": column,
                              "value": "" if value is None else str(value), "reason": reason,
                              "outcome": outcome})

    def frame(self) -> pd.DataFrame:
        out = pd.DataFrame(self.rows, columns=list(REJECTED_COLUMNS))
        out["instance"] = out["instance"].astype("Int64")
        return out


def _valid_eids(export: pd.DataFrame, eid_column: str, problems: _Problems) -> pd.DataFrame:
    """The export's rows whose eid is an integer appearing once, with ``eid`` as int64; the others are
    rejected (a duplicated eid: every copy, since which one is right cannot be known)."""
    raw = export[eid_column]
    values, bad = _numbers(raw)
    bad |= values.isna() | (values % 1 != 0)
    if bad.any():
        problems.add(list(raw[bad]), None, EID_COLUMN, list(raw[bad]), "eid is blank or not an integer",
                     OUTCOME_ROW)
    good = export.loc[~bad].copy()
    good[EID_COLUMN] = values[~bad].astype("int64")
    counts = good[EID_COLUMN].value_counts()
    repeated = good[EID_COLUMN].map(counts) > 1
    if repeated.any():
        eids = list(good.loc[repeated, EID_COLUMN])
        problems.add(eids, None, EID_COLUMN, eids, "eid appears more than once in the export", OUTCOME_ROW)
    return good.loc[~repeated].reset_index(drop=True)


def _sexes(column: pd.Series, eids: pd.Series, problems: _Problems, name: str) -> pd.Series:
    """'female' / 'male' / None from field 31 (coding 9: 0 female, 1 male)."""
    values, _ = _numbers(column)
    sex = pd.Series(None, index=column.index, dtype=object)
    sex[values == 0] = "female"
    sex[values == 1] = "male"
    blank = _blank(column)
    odd = ~blank & sex.isna()
    if blank.any():
        problems.add(list(eids[blank]), None, name, list(column[blank]), "sex (field 31) is blank",
                     OUTCOME_UNKNOWN)
    if odd.any():
        problems.add(list(eids[odd]), None, name, list(column[odd]),
                     "sex (field 31) is not 0 (female) or 1 (male)", OUTCOME_UNKNOWN)
    return sex


def _icd_hits(rows: pd.DataFrame, fields: dict[int, dict[tuple[int, int], str]], source: str) -> pd.DataFrame:
    """Every listed hospital code of every participant in ``rows``: eid, disease, code (normalised), date
    (NaT when blank or bad), the date as written, and the export columns it came from. Raises ExportError
    when a code column has no date column."""
    definitions = list(DISEASE_DEFINITIONS.values())
    parts = []
    for system, code_field, date_field in ICD_SYSTEMS:
        lists = {d.column: _prefixes(d.icd10 if system == "ICD-10" else d.icd9) for d in definitions}
        for (instance, array), code_column in sorted(fields.get(code_field, {}).items()):
            date_column = fields.get(date_field, {}).get((instance, array))
            if date_column is None:
                raise ExportError(
                    f"{source}: column {code_column!r} ({system} diagnoses, field {code_field}) has no "
                    f"date column {export_column(date_field, instance, array)!r} (field {date_field}): a "
                    "diagnosis cannot be placed before or after the visit without it"
                )
            set_codes = ~_blank(rows[code_column])
            if not set_codes.any():
                continue
            codes = _normalised_codes(rows.loc[set_codes, code_column])
            dates, _ = _dates(rows.loc[set_codes, date_column])
            for disease, prefixes in lists.items():
                matched = codes.str.startswith(prefixes)
                if matched.any():
                    parts.append(pd.DataFrame({
                        "eid": rows.loc[codes.index[matched], EID_COLUMN].to_numpy(),
                        "disease": disease,
                        "code": codes[matched].to_numpy(),
                        "date": dates[matched].to_numpy(),
                        "date_value": rows.loc[codes.index[matched], date_column].to_numpy(),
                        "columns": f"{code_column} / {date_column}",
                    }))
    columns = ["eid", "disease", "code", "date", "date_value", "columns"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _check_self_reports(rows: pd.DataFrame, fields: dict[int, dict[tuple[int, int], str]],
                        problems: _Problems) -> None:
    """Report self-reported illness values that are not numbers (they can match no code)."""
    for (at, _array), column in sorted(fields.get(FIELD_SELF_REPORT, {}).items()):
        _, bad = _numbers(rows[column])
        if bad.any():
            problems.add(list(rows.loc[bad, EID_COLUMN]), at, column, list(rows.loc[bad, column]),
                         "self-reported illness (field 20002) is not a UK Biobank coding 6 number",
                         OUTCOME_IGNORED)


def _self_report_hits(rows: pd.DataFrame, fields: dict[int, dict[tuple[int, int], str]],
                      instance: int) -> pd.DataFrame:
    """(eid, disease) for every listed self-report made at visit ``instance`` or an earlier one."""
    parts = []
    for (at, _array), column in sorted(fields.get(FIELD_SELF_REPORT, {}).items()):
        if at > instance:
            continue
        values, _ = _numbers(rows[column])
        for definition in DISEASE_DEFINITIONS.values():
            matched = values.isin(definition.self_report)
            if matched.any():
                parts.append(pd.DataFrame({"eid": rows.loc[matched, EID_COLUMN].to_numpy(),
                                           "disease": definition.column}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["eid", "disease"])


def _diseases_at_visit(visit: pd.DataFrame, icd: pd.DataFrame, self_reported: pd.DataFrame, *,
                       instance: int, sources: bool, problems: _Problems) -> pd.DataFrame:
    """``visit`` (eid, visit_date) with a pandas "boolean" column per disease (see DISEASE_DEFINITIONS)."""
    out = visit[[EID_COLUMN]].copy()
    dates = visit.set_index(EID_COLUMN)["visit_date"]
    hits = icd.assign(visit_date=icd["eid"].map(dates)) if len(icd) else icd.assign(visit_date=pd.NaT)
    hits = hits[hits["eid"].isin(dates.index)]
    dated = hits["date"].notna() & hits["visit_date"].notna()
    prevalent = hits[dated & (hits["date"] <= hits["visit_date"])]
    undated = hits[~dated]
    for disease in DISEASE_COLUMNS:
        yes = set(prevalent.loc[prevalent["disease"] == disease, "eid"])
        yes |= set(self_reported.loc[self_reported["disease"] == disease, "eid"])
        unsure = undated[(undated["disease"] == disease) & ~undated["eid"].isin(yes)]
        values = pd.Series(pd.NA if not sources else False, index=out.index, dtype="boolean")
        values[out[EID_COLUMN].isin(yes)] = True
        values[out[EID_COLUMN].isin(set(unsure["eid"]))] = pd.NA
        out[disease] = values
        for row in unsure.drop_duplicates("eid").itertuples(index=False):
            if pd.isna(row.visit_date):
                why = f"the visit date ({export_column(FIELD_VISIT_DATE, instance)}) is blank or not a date"
            elif _blank(pd.Series([row.date_value])).iloc[0]:
                why = "its diagnosis date is blank"
            else:
                why = f"its diagnosis date {row.date_value!r} is not a date"
            problems.add([row.eid], instance, row.columns, [row.code],
                         f"{disease}: code {row.code} cannot be placed before or after the visit: {why}",
                         OUTCOME_UNKNOWN)
    return out


def build_phenotypes(export: pd.DataFrame, *, source: str, manual_mass: pd.DataFrame | None = None,
                     manual_source: str = "", instances: Sequence[int] = IMAGING_INSTANCES) -> PhenotypeBuild:
    """The phenotype table from an export read by :func:`read_export` (see the module docstring).

    Raises :class:`ExportError` (naming ``source`` and the column) when the export cannot give the table;
    row and value problems are returned in ``rejected``. The inputs are not modified."""
    not_imaged = int(export.attrs.get(NOT_IMAGED_ROWS, 0))  # rows read_export skipped
    columns = {str(c).strip(): c for c in export.columns}
    if EID_COLUMN not in columns:
        raise ExportError(f"{source}: no {EID_COLUMN!r} column (the participant id); is this a UK Biobank "
                          f"main-dataset export? columns: {list(columns)[:12]}")
    export = export.rename(columns={v: k for k, v in columns.items()})
    fields = _field_columns(list(export.columns))
    sex_column = export_column(FIELD_SEX, SUMMARY_INSTANCE)
    if sex_column not in export.columns:
        raise ExportError(
            f"{source}: no sex field: column {sex_column!r} (field {FIELD_SEX}, Sex) is missing"
        )
    visit_columns = {
        i: [export_column(f, i) for f in VISIT_FIELDS if export_column(f, i) in export.columns]
        for i in instances
    }
    if not any(visit_columns.values()):
        wanted = [export_column(f, i) for i in instances for f in (FIELD_VISIT_DATE, FIELD_AGE_YEARS)]
        raise ExportError(f"{source}: no imaging-visit column: none of {wanted} (fields {FIELD_VISIT_DATE}, "
                          f"{FIELD_AGE_YEARS}, {FIELD_HEIGHT_CM}, {FIELD_WEIGHT_KG} at instances "
                          f"{list(instances)})")
    has_icd = any(fields.get(code_field) for _, code_field, _ in ICD_SYSTEMS)
    has_self_report = bool(fields.get(FIELD_SELF_REPORT))
    if has_icd:
        for i, present in visit_columns.items():
            date_column = export_column(FIELD_VISIT_DATE, i)
            if present and date_column not in export.columns:
                raise ExportError(
                    f"{source}: column {date_column!r} (field {FIELD_VISIT_DATE}, date of attending the "
                    f"assessment centre) is missing: hospital diagnoses (fields {FIELD_ICD10}/{FIELD_ICD9}) "
                    f"cannot be cut at visit {i} without it"
                )
    if not fields.get(FIELD_ICD10):
        logger.warning("%s: no ICD-10 diagnoses (field %d): diseases come from %s only", source, FIELD_ICD10,
                       "the other sources" if has_icd or has_self_report else "nothing (left unknown)")
    if not has_self_report:
        logger.warning("%s: no self-reported illnesses (field %d): diseases come from hospital codes only",
                       source, FIELD_SELF_REPORT)

    problems = _Problems()
    rows = _valid_eids(export, EID_COLUMN, problems)
    attended = {i: ~pd.concat([_blank(rows[c]) for c in present], axis=1).all(axis=1) if present
                else pd.Series(False, index=rows.index) for i, present in visit_columns.items()}
    imaged = pd.concat(attended.values(), axis=1).any(axis=1)
    counts = {"export_rows": len(export) + not_imaged, "participants": len(rows) + not_imaged,
              "without_imaging_visit": int((~imaged).sum()) + not_imaged}
    rows = rows.loc[imaged].reset_index(drop=True)
    attended = {i: a.loc[imaged].reset_index(drop=True) for i, a in attended.items()}
    sex = _sexes(rows[sex_column], rows[EID_COLUMN], problems, sex_column)
    icd = _icd_hits(rows, fields, source)
    _check_self_reports(rows, fields, problems)

    visits = []
    for i in instances:
        at = rows.loc[attended[i]]
        counts[f"instance_{i}"] = len(at)
        if at.empty:
            continue
        visit = pd.DataFrame({EID_COLUMN: at[EID_COLUMN].to_numpy()})
        visit[INSTANCE_COLUMN] = i
        visit["sex"] = sex[attended[i]].to_numpy()
        for name, field_id in (("age", FIELD_AGE_YEARS), ("height_cm", FIELD_HEIGHT_CM),
                               ("weight_kg", FIELD_WEIGHT_KG)):
            column = export_column(field_id, i)
            if column not in at.columns:
                visit[name] = float("nan")
                continue
            values, bad = _numbers(at[column])
            visit[name] = values.to_numpy()
            if bad.any():
                problems.add(list(at.loc[bad, EID_COLUMN]), i, column, list(at.loc[bad, column]),
                             f"{name} (field {field_id}) is not a number", OUTCOME_UNKNOWN)
        date_column = export_column(FIELD_VISIT_DATE, i)
        if date_column in at.columns:
            dates, bad = _dates(at[date_column])
            if bad.any():
                problems.add(list(at.loc[bad, EID_COLUMN]), i, date_column, list(at.loc[bad, date_column]),
                             "visit date (field 53) is not a date", OUTCOME_IGNORED)
            visit["visit_date"] = dates.to_numpy()
        else:
            visit["visit_date"] = pd.NaT
        diseases = _diseases_at_visit(visit, icd, _self_report_hits(at, fields, i), instance=i,
                                      sources=has_icd or has_self_report, problems=problems)
        visit = visit.drop(columns="visit_date")
        visits.append(pd.concat([visit, diseases.drop(columns=EID_COLUMN)], axis=1))

    table = (pd.concat(visits, ignore_index=True) if visits
             else pd.DataFrame(columns=[EID_COLUMN, INSTANCE_COLUMN, *PHENOTYPE_COLUMNS[1:-1]]))
    table["manual_lv_mass_g"] = float("nan")
    if manual_mass is not None:
        table = _merge_manual_mass(table, manual_mass, manual_source, problems, counts)
    table = table[[EID_COLUMN, INSTANCE_COLUMN, *PHENOTYPE_COLUMNS[1:]]]
    table = table.sort_values([EID_COLUMN, INSTANCE_COLUMN]).reset_index(drop=True)
    table[INSTANCE_COLUMN] = table[INSTANCE_COLUMN].astype("int64")
    rejected = problems.frame()
    counts["rows_written"] = len(table)
    counts["rows_rejected"] = int((rejected["outcome"] == OUTCOME_ROW).sum())
    counts["problems"] = len(rejected)
    for disease in DISEASE_COLUMNS:
        counts[disease] = int(table[disease].fillna(False).astype(bool).sum()) if len(table) else 0
    return PhenotypeBuild(table=table, rejected=rejected, counts=counts)


def _merge_manual_mass(table: pd.DataFrame, manual: pd.DataFrame, source: str, problems: _Problems,
                       counts: dict[str, int]) -> pd.DataFrame:
    """``table`` with ``manual_lv_mass_g`` from the manual mass table on (eid, instance), instance 2
    when that table has no instance column. Rows that cannot be merged are reported."""
    manual = manual.rename(columns={c: str(c).strip() for c in manual.columns})
    eids, bad_eid = _numbers(manual[EID_COLUMN])
    bad_eid |= eids.isna() | (eids % 1 != 0)
    if INSTANCE_COLUMN in manual.columns:
        instances, bad_instance = _numbers(manual[INSTANCE_COLUMN])
        bad_instance |= instances.isna()
    else:
        instances = pd.Series(float(MANUAL_MASS_INSTANCE), index=manual.index)
        bad_instance = pd.Series(False, index=manual.index)
    masses, bad_mass = _numbers(manual["manual_lv_mass_g"])
    where = f"{source}: "
    checks = ((bad_eid, EID_COLUMN, "eid is blank or not an integer"),
              (~bad_eid & bad_instance, INSTANCE_COLUMN, "instance is blank or not a number"),
              (~bad_eid & ~bad_instance & bad_mass, "manual_lv_mass_g", "manual_lv_mass_g is not a number"))
    for mask, column, reason in checks:
        if mask.any():
            problems.add(list(manual.loc[mask, EID_COLUMN]), None, column, list(manual.loc[mask, column]),
                         where + reason, OUTCOME_NOT_MERGED)
    ok = ~bad_eid & ~bad_instance & ~bad_mass & masses.notna()
    merged = pd.DataFrame({EID_COLUMN: eids[ok].astype("int64"),
                           INSTANCE_COLUMN: instances[ok].astype("int64"), "mass": masses[ok]})
    repeated = merged.duplicated([EID_COLUMN, INSTANCE_COLUMN], keep=False)
    for row in merged[repeated].drop_duplicates([EID_COLUMN, INSTANCE_COLUMN]).itertuples(index=False):
        problems.add([row.eid], int(row.instance), "manual_lv_mass_g", [""],
                     where + "eid and instance appear more than once", OUTCOME_NOT_MERGED)
    merged = merged[~repeated]
    keys = pd.MultiIndex.from_frame(table[[EID_COLUMN, INSTANCE_COLUMN]].astype("int64"))
    found = pd.MultiIndex.from_frame(merged[[EID_COLUMN, INSTANCE_COLUMN]]).isin(keys)
    for row in merged[~found].itertuples(index=False):
        problems.add([row.eid], int(row.instance), "manual_lv_mass_g", [row.mass],
                     where + "the export has no imaging visit for this eid and instance", OUTCOME_NOT_MERGED)
    merged = merged[found].set_index([EID_COLUMN, INSTANCE_COLUMN])["mass"]
    out = table.copy()
    index = pd.MultiIndex.from_frame(out[[EID_COLUMN, INSTANCE_COLUMN]].astype("int64"))
    out["manual_lv_mass_g"] = merged.reindex(index).to_numpy()
    counts["manual_mass_merged"] = len(merged)
    return out


# --- Writing ----------------------------------------------------------------------------------------
def rejected_path(out: str) -> str:
    """Where the rejected table of ``out`` goes: ``pheno.parquet`` -> ``pheno.rejected.csv``."""
    head, sep, tail = out.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}{sep}{stem}.rejected.csv"


def phenotype_bytes(table: pd.DataFrame, fmt: str) -> bytes:
    """The table as CSV (diseases 0/1, blank when unknown) or Parquet (diseases nullable booleans)."""
    if fmt == "csv":
        out = table.copy()
        for disease in DISEASE_COLUMNS:
            out[disease] = out[disease].astype("Int8")
        return out.to_csv(index=False).encode("utf-8")
    schema = pa.schema([
        pa.field(EID_COLUMN, pa.int64(), nullable=False),
        pa.field(INSTANCE_COLUMN, pa.int32(), nullable=False),
        pa.field("sex", pa.string()),
        *(pa.field(c, pa.float64()) for c in ("age", "height_cm", "weight_kg")),
        *(pa.field(c, pa.bool_()) for c in DISEASE_COLUMNS),
        pa.field("manual_lv_mass_g", pa.float64()),
    ])
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False), sink)
    return sink.getvalue()


def write_outputs(build: PhenotypeBuild, out: str, *, overwrite: bool = False) -> tuple[str, str]:
    """Write the table to ``out`` and the rejected table beside it (always, with a header when empty, so
    a stale one is never left behind); refuse to replace either unless ``overwrite``."""
    fmt = output_format(out)
    rejected = rejected_path(out)
    if not overwrite:
        existing = [p for p in (out, rejected) if filesystems.exists(p)]
        if existing:
            raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
    filesystems.write_bytes(out, phenotype_bytes(build.table, fmt))
    filesystems.write_text(rejected, build.rejected.to_csv(index=False), mime_type="text/csv")
    return out, rejected


# --- Command line -----------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    """The ``lvmass phenotypes`` options."""
    parser = ArgumentParser(
        prog="lvmass phenotypes",
        description="Build the phenotype table (one row per participant and imaging visit) from a UK Biobank "
        "main-dataset export. Mappings and disease definitions: docs/ukbb_phenotypes.md.",
    )
    parser.add_argument("--input", required=True,
                        help="UK Biobank export, CSV or Parquet, with eid and <field>-<instance>.<array> "
                        "columns (local or gs://)")
    parser.add_argument("--out", required=True,
                        help="phenotype table to write (.csv or .parquet); problems go to "
                        "<out stem>.rejected.csv beside it")
    parser.add_argument("--manual_mass",
                        help="optional CSV/Parquet of manual LV masses: eid, manual_lv_mass_g and optionally "
                        "instance (default instance 2)")
    parser.add_argument("--instances", type=int, nargs="+", default=list(IMAGING_INSTANCES),
                        help="imaging visits to write (default 2 3)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 when written (problems listed in the rejected file), 2 when an input is unusable."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        output_format(args.out)
        export = read_export(args.input, instances=args.instances)
        manual = read_manual_mass(args.manual_mass) if args.manual_mass else None
        build = build_phenotypes(export, source=args.input, manual_mass=manual,
                                 manual_source=args.manual_mass or "", instances=args.instances)
        out, rejected = write_outputs(build, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        print(f"lvmass phenotypes: error: {exc}", file=sys.stderr)
        return 2
    c = build.counts
    logger.info(
        "%s: %d participants, %d with no imaging visit (no row); rows written %d (%s); "
        "prevalent: %s", args.input, c["participants"], c["without_imaging_visit"], c["rows_written"],
        ", ".join(f"instance {i}: {c.get(f'instance_{i}', 0)}" for i in args.instances),
        ", ".join(f"{d} {c[d]}" for d in DISEASE_COLUMNS),
    )
    if len(build.rejected):
        logger.warning("%d problem(s) (%d row(s) not written; the others: values left unknown, ignored or "
                       "not merged): see %s", c["problems"], c["rows_rejected"], rejected)
    print(f"phenotypes: {out} ({c['rows_written']} rows); problems: {rejected} ({c['problems']})")
    return 0

