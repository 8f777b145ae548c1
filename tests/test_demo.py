"""The README's demo, small: synthetic cohort -> pipeline (every available method) -> report."""

from __future__ import annotations

import json

import pytest

from beam_pipeline import contracts
from lvmass import demo

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--participants", "6", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    report = out / "report" / "report.html"
    assert report.is_file() and f"Report: {report}" in printed
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["reconciled"] and summary["participants_written"] == 6
    methods = set(summary["rows_per_method"])
    assert {contracts.METHOD_INLINEVF, contracts.METHOD_INLINEVF_RECALIBRATED} <= methods
    # every method the demo ran is in the per-method summary it printed
    for method in methods:
        assert method in printed
    # run twice into the same folder: the cohort is regenerated, not refused
    assert demo.main(["--out", str(out), "--participants", "6", "--workers", "2"]) == 0
