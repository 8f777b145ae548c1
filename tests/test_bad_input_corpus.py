"""The bad-input corpus (tests/bad_inputs.py) through the whole pipeline in one run: every input appears
exactly once, in the results or in the errors, with the expected reason, and the counts reconcile."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest

from beam_pipeline.pipeline import run
from lvmass.core.identity import base_name
from tests.bad_inputs import build_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "in"
    folder.mkdir()
    cases = build_corpus(folder)
    out = folder.parent / "out"
    summary = run([f"--input={folder}/*", f"--output={out}", "--methods=inlinevf", "--runner=FnApiRunner"])
    results = pads.dataset(str(out / "lvmass"), format="parquet", partitioning="hive").to_table().to_pandas()
    errors = pads.dataset(str(out / "errors"), format="parquet").to_table().to_pandas()
    return cases, summary, results, errors


def test_counts_reconcile(corpus_run):
    cases, summary, _, _ = corpus_run
    assert summary["inputs_matched"] == len(cases)
    assert summary["reconciled"], summary["unaccounted_inputs"]
    assert summary["participants_written"] + summary["participants_failed"] == len(cases)


def test_every_input_appears_once_with_its_expected_outcome(corpus_run):
    cases, _, results, errors = corpus_run
    rows_by_input = {name: group for name, group in results.groupby(results["source_uri"].map(base_name))}
    errors_by_input = {name: group for name, group in errors.groupby(errors["source_uri"].map(base_name))}
    problems = []
    for name, expected in sorted(cases.items()):
        rows = rows_by_input.get(name)
        errs = errors_by_input.get(name)
        if expected.outcome == "written":
            if rows is None:
                got = None if errs is None else errs["message"].tolist()
                problems.append(f"{name}: expected rows, got errors {got}")
                continue
            inlinevf = rows[rows["method"] == "inlinevf"]
            if len(inlinevf) != 1:
                problems.append(f"{name}: {len(inlinevf)} inlinevf rows")
            for flag in expected.flags:
                if not all(flag in flags for flags in rows["qc_flags"]):
                    problems.append(f"{name}: flag {flag} missing from {rows['qc_flags'].tolist()}")
            if expected.qc_pass is not None and rows["qc_pass"].any() != expected.qc_pass:
                problems.append(f"{name}: qc_pass {rows['qc_pass'].tolist()}, expected {expected.qc_pass}")
        else:
            if rows is not None:
                problems.append(f"{name}: expected an error, got rows")
            if errs is None or len(errs) != 1:
                problems.append(f"{name}: expected one error row, got {0 if errs is None else len(errs)}")
                continue
            error = errs.iloc[0]
            if expected.stage and error["stage"] != expected.stage:
                problems.append(
                    f"{name}: stage {error['stage']!r}, expected {expected.stage!r} ({error['message']})")
            if expected.says.lower() not in error["message"].lower():
                problems.append(f"{name}: message {error['message']!r} lacks {expected.says!r}")
            if expected.error_type and error["error_type"] != expected.error_type:
                problems.append(f"{name}: error type {error['error_type']!r}")
    assert not problems, "\n".join(problems)


def test_no_input_is_named_by_a_log_only(corpus_run):
    """Each error row names its input: the message starts with or contains the file's name."""
    _, _, _, errors = corpus_run
    for row in errors.itertuples():
        assert base_name(row.source_uri) in row.message or row.error_type in ("DuplicateInput",), row.message


def test_the_corpus_is_documented():
    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    assert "bad_inputs.py" in doc
