"""The summary (``OUTPUT/summary.json``): what went in, what came out, what failed and why.

Pure functions over plain records, so the arithmetic is tested without Beam. :func:`folder_summary`
describes an output folder (every committed run, ``lvmass.storage.ledger.finalise``): it holds nothing
that depends on how the work was split into runs (no run id, no output path), so an incremental folder's
summary equals a one-shot run's byte for byte. :func:`build_summary` counts one set of inputs (a run's,
in its manifest). The invariant the summary states (``reconciled``): every matched
input ends as a participant with result rows or as a failed participant with dead-letter rows,
``inputs_matched == participants_written + participants_failed``, with no input unaccounted for. A
participant that lost one method (say a failed inference batch) but kept another is *written*, and its
error rows are counted under ``partial_failures``.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any, NamedTuple

from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.schema import STAGE_PHENOTYPES, ErrorRecord

SUMMARY_SCHEMA_VERSION = 3  # 3: the folder's summary (every committed run), from the ledger
_VERSIONED_PACKAGES = ("apache-beam", "tensorflow", "numpy", "pyarrow", "pydicom", "scipy")


class OutputRow(NamedTuple):
    """What the summary needs of one written row: its participant, method and QC verdict."""

    source_uri: str
    method: str
    qc_pass: bool


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the numbers (None when one is not installed)."""
    versions: dict[str, str | None] = {"lvmass": PIPELINE_VERSION, "python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def error_reason(error: ErrorRecord) -> str:
    """A short, countable reason: the error type, plus the decoder's own step for a ``DecodeError``.

    A ``DecodeError`` message reads ``"<source>: <step>: <reason>"`` (``lvmass.core.study``), so the
    step (``manifest``, ``series``, ``pixels``...) is what separates "zip without SAX series" from
    "DICOM without pixels".
    """
    if error.error_type == "DecodeError":
        rest = error.message
        prefix = f"{error.source_uri}: "
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
        step = rest.split(":", 1)[0].strip()
        if step and " " not in step:
            return f"DecodeError.{step}"
    return error.error_type


def build_summary(
    *,
    input_uris: Iterable[str],
    rows: Iterable[OutputRow],
    errors: Iterable[ErrorRecord],
    mode: str,
    options: Mapping[str, Any],
    skipped_uris: Iterable[str] = (),
    files_written: Iterable[str] = (),
    run_id: str = "",
) -> dict[str, Any]:
    """Counts in, out, failed by stage and reason, rows and QC passes per method, versions, options.

    Dead letters that are not about an input (a rejected phenotype row names the phenotype file) are
    counted as ``phenotype_rows_rejected`` and stay out of the reconciliation; inputs left out because
    the output already holds them (``--skip_existing``) are ``inputs_skipped_existing``."""
    inputs = sorted(set(input_uris))
    rows = list(rows)
    all_errors = list(errors)
    input_set = set(inputs)
    phenotype_rows = [e for e in all_errors if e.source_uri not in input_set and e.stage == STAGE_PHENOTYPES]
    errors = sorted((e for e in all_errors if e.source_uri in input_set or e.stage != STAGE_PHENOTYPES),
                    key=lambda e: (e.source_uri, e.stage, e.error_type, e.message))
    written = {r.source_uri for r in rows}
    errored = {e.source_uri for e in errors}
    failed = errored - written
    unaccounted = sorted(set(inputs) - written - failed)
    unexpected = sorted((written | failed) - set(inputs))

    first_error: dict[str, ErrorRecord] = {}
    for error in errors:
        first_error.setdefault(error.source_uri, error)
    failed_by_stage = Counter(first_error[uri].stage for uri in failed)
    failed_by_reason = Counter(f"{first_error[uri].stage}/{error_reason(first_error[uri])}" for uri in failed)
    partial = Counter(f"{e.stage}/{error_reason(e)}" for e in errors if e.source_uri in written)

    return {
        "summary_schema_version": SUMMARY_SCHEMA_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "run_id": run_id,
        "mode": mode,
        "inputs_matched": len(inputs),
        "inputs_skipped_existing": len(set(skipped_uris)),
        "phenotype_rows_rejected": len(phenotype_rows),
        "participants_written": len(written),
        "participants_failed": len(failed),
        "reconciled": len(inputs) == len(written) + len(failed) and not unaccounted and not unexpected,
        "unaccounted_inputs": unaccounted,
        "failed_by_stage": dict(sorted(failed_by_stage.items())),
        "failed_by_reason": dict(sorted(failed_by_reason.items())),
        "error_rows": len(errors),
        "partial_failures": dict(sorted(partial.items())),
        "rows_per_method": dict(sorted(Counter(r.method for r in rows).items())),
        "qc_pass_per_method": dict(sorted(Counter(r.method for r in rows if r.qc_pass).items())),
        "failed_inputs": sorted(failed),
        "files_written": sorted(set(files_written)),
        "versions": package_versions(),
        "options": {k: options[k] for k in sorted(options)},
    }


def folder_summary(
    *,
    input_uris: Iterable[str],
    rows: Iterable[OutputRow],
    errors: Iterable[ErrorRecord],
    mode: str,
    options: Mapping[str, Any],
    files: Iterable[str],
    generation: str,
    calibration: Mapping[str, Any],
) -> dict[str, Any]:
    """The summary of an output folder: :func:`build_summary` over every committed run's inputs, the
    derived rows and all dead letters, with ``files_written`` the derived files (relative to the folder),
    ``generation`` the derived tables' content hash and ``calibration`` the cohort's centering and 90th
    percentiles. No run id and no skipped count: those are the runs' own (their manifests)."""
    summary = build_summary(input_uris=input_uris, rows=rows, errors=errors, mode=mode, options=options,
                            files_written=files)
    for key in ("run_id", "inputs_skipped_existing"):
        summary.pop(key)
    summary["generation"] = generation
    summary["calibration"] = dict(calibration)
    return summary


def summary_json(summary: Mapping[str, Any]) -> str:
    """Stable, human-readable JSON (sorted keys) so two runs on the same inputs diff cleanly."""
    return json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
