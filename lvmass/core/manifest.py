"""Parse the manifest of a UK Biobank participant zip (``manifest.cvs`` / ``manifest.csv``).

The manifest is a hint, never the authority (the DICOM header is): the decoder uses it only to skip
members that are clearly not short-axis cine images before reading their headers. Its real defect is
repaired here: the ``date`` column holds an unquoted comma (``Aug 30, 2015 10:12:33``), which shifts every
later column by one in a naive CSV parse (docs/ukbb_format.md, "The manifest").
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

MANIFEST_PREFIX = "manifest"
# A manifest line is ~150 characters (a file name, a few UIDs, a date, a description); a longer one is not
# a manifest row (binary data, or a file that is not a manifest).
MAX_LINE_CHARS = 8192

# Canonical column names; header spellings are normalised (lower case, spaces/underscores removed)
# and mapped here. Only `filename`, `patientid`, `date`, `series discription` are verified spellings.
_HEADER_ALIASES: dict[str, str] = {
    "filename": "filename",
    "file": "filename",
    "patientid": "patient_id",
    "studyid": "study_id",
    "studydescription": "study_description",
    "studydiscription": "study_description",
    "date": "date",
    "seriesid": "series_id",
    "seriesdiscription": "series_description",
    "seriesdescription": "series_description",
    "modality": "modality",
    "aet": "aet",
    "host": "host",
}
_REQUIRED = ("filename", "series_description")
# `Mon DD` then ` YYYY ...`: the two halves a naive split makes of the date.
_DATE_HEAD = re.compile(r"^\s*[A-Za-z]{3,9}\.?\s+\d{1,2}\s*$")
_DATE_TAIL = re.compile(r"^\s*\d{4}\b")


class ManifestError(ValueError):
    """The manifest cannot be parsed; the message names the manifest and the line."""


@dataclass(frozen=True)
class ManifestRow:
    """One manifest line. ``series_description`` is as written (ml4h-normalise it before matching)."""

    filename: str
    series_description: str
    patient_id: str = ""
    study_id: str = ""
    study_description: str = ""
    date: str = ""
    series_id: str = ""
    modality: str | None = None
    aet: str = ""
    host: str = ""


def is_manifest_name(member_name: str) -> bool:
    """Any zip member whose base name starts with ``manifest`` is the manifest (``.cvs`` is the real name)."""
    base = member_name.rsplit("/", 1)[-1]
    return base.lower().startswith(MANIFEST_PREFIX)


def _canonical_header(header: list[str], source: str) -> list[str]:
    names = []
    for raw in header:
        key = re.sub(r"[\s_]+", "", raw.strip().lower())
        if key not in _HEADER_ALIASES:
            raise ManifestError(
                f"{source}: manifest header has unknown column {raw.strip()!r} (header: {header})"
            )
        names.append(_HEADER_ALIASES[key])
    missing = [c for c in _REQUIRED if c not in names]
    if missing:
        raise ManifestError(f"{source}: manifest header lacks column(s) {missing} (header: {header})")
    return names


def _repair_date(fields: list[str], date_index: int) -> list[str]:
    """Join ``Mon DD`` and `` YYYY hh:mm:ss`` that the unquoted comma split into two fields."""
    if (
        date_index + 1 < len(fields)
        and _DATE_HEAD.match(fields[date_index])
        and _DATE_TAIL.match(fields[date_index + 1])
    ):
        joined = f"{fields[date_index].strip()}, {fields[date_index + 1].strip()}"
        return [*fields[:date_index], joined, *fields[date_index + 2 :]]
    return fields


def parse_manifest(text: str, *, source: str) -> list[ManifestRow]:
    """Parse manifest text into rows, repairing the unquoted comma in ``date``.

    Rows may carry 9 or 10 fields (``modality`` is optional); a header naming 10 columns with rows of
    9 (or the reverse) is accepted by dropping/adding ``modality``. Raises :class:`ManifestError`
    naming ``source`` and the line for anything else, including a line longer than
    :data:`MAX_LINE_CHARS` and text the CSV reader rejects.
    """
    rows = []
    for names, fields in _rows(text, source):
        values = dict(zip(names, map(str.strip, fields), strict=True))
        modality = values.pop("modality", None)
        rows.append(ManifestRow(**values, modality=modality or None))
    return rows


def series_descriptions(text: str, *, source: str) -> dict[str, str]:
    """``{filename: series description as written}``: what the decoder uses of a manifest. Parsed and
    checked exactly as :func:`parse_manifest` (the same :class:`ManifestError`), without building the
    rows; a file listed twice keeps its last description."""
    out: dict[str, str] = {}
    at: dict[int, tuple[int, int | None]] = {}  # per row length: where filename and description are
    for names, fields in _rows(text, source):
        where = at.get(len(fields))
        if where is None:
            where = at[len(fields)] = (names.index("filename"), names.index("series_description")
                                       if "series_description" in names else None)
        out[fields[where[0]].strip()] = "" if where[1] is None else fields[where[1]].strip()
    return out


def _rows(text: str, source: str) -> Iterator[tuple[list[str], list[str]]]:
    """(column names, fields) of each row, the date repaired and the modality column reconciled; rows
    with a blank filename raise (see :func:`parse_manifest`)."""
    lines = [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]
    if not lines:
        raise ManifestError(f"{source}: manifest is empty")
    if max(map(len, lines)) > MAX_LINE_CHARS:
        long = next(k for k, line in enumerate(lines, start=1) if len(line) > MAX_LINE_CHARS)
        raise ManifestError(f"{source}: manifest line {long} has {len(lines[long - 1])} characters, more "
                            f"than {MAX_LINE_CHARS} (not a UK Biobank manifest): {lines[long - 1][:80]!r}...")
    reader = csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=False)
    try:
        parsed = list(reader)
    except csv.Error as exc:  # a NUL byte, a field past csv's own limit, ...
        raise ManifestError(
            f"{source}: manifest line {reader.line_num} cannot be parsed as CSV ({exc})") from exc
    header = _canonical_header(parsed[0], source)
    date_index = header.index("date") if "date" in header else None
    # The optional modality column: rows one field short of a header naming it, or one field over a
    # header without it (inserted after series_description), are read without / with it.
    variants = {len(header): header}
    if "modality" in header:
        variants[len(header) - 1] = [n for n in header if n != "modality"]
    elif "series_description" in header:
        at = header.index("series_description") + 1
        variants[len(header) + 1] = [*header[:at], "modality", *header[at:]]
    filename_at = {n: names.index("filename") for n, names in variants.items()}
    for line_no, fields in enumerate(parsed[1:], start=2):
        if date_index is not None:
            # Always repair (the split is unambiguous): a 9-field row split to 10 fields under a
            # 10-column header has the right count and still needs it.
            fields = _repair_date(fields, date_index)
        names = variants.get(len(fields))
        if names is None:
            raise ManifestError(
                f"{source}: manifest line {line_no} has {len(fields)} fields, expected {len(header)} "
                f"after repairing the date: {lines[line_no - 1]!r}"
            )
        if not fields[filename_at[len(fields)]].strip():
            raise ManifestError(f"{source}: manifest line {line_no} has an empty filename")
        yield names, fields
