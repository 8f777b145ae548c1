"""lvmass.core.summary: the run summary's counts reconcile inputs with rows and dead letters."""

from __future__ import annotations

from lvmass.core.schema import ErrorRecord
from lvmass.core.summary import OutputRow, build_summary


class TestSummary:
    def test_counts_reconcile(self):
        errors = [
            ErrorRecord("a.zip", "a", None, None, "read", "DecodeError", "a.zip: read: not a zip file"),
            ErrorRecord("b.zip", "2", 2, 2, "decode", "DecodeError", "b.zip: series: no SAX"),
            ErrorRecord("c.zip", "3", 3, 2, "inference", "RuntimeError", "OOM"),  # c still has inlinevf rows
        ]
        rows = [OutputRow("c.zip", "inlinevf", True), OutputRow("d.zip", "inlinevf", False),
                OutputRow("d.zip", "ml4h_seg", True)]
        summary = build_summary(input_uris=["a.zip", "b.zip", "c.zip", "d.zip"], rows=rows, errors=errors,
                                mode="infer", options={"x": 1})
        counts = (summary["inputs_matched"], summary["participants_written"], summary["participants_failed"])
        assert counts == (4, 2, 2)
        assert summary["reconciled"] is True
        assert summary["failed_by_stage"] == {"decode": 1, "read": 1}
        assert summary["failed_by_reason"] == {"decode/DecodeError.series": 1, "read/DecodeError.read": 1}
        assert summary["partial_failures"] == {"inference/RuntimeError": 1}
        assert summary["rows_per_method"] == {"inlinevf": 2, "ml4h_seg": 1}
        assert summary["qc_pass_per_method"] == {"inlinevf": 1, "ml4h_seg": 1}

    def test_a_lost_input_breaks_reconciliation(self):
        summary = build_summary(input_uris=["a.zip", "b.zip"], rows=[OutputRow("a.zip", "inlinevf", True)],
                                errors=[], mode="infer", options={})
        assert summary["reconciled"] is False
        assert summary["unaccounted_inputs"] == ["b.zip"]
