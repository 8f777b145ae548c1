"""lvmass.core.dead_letters: one error row per failed element, with the exception's own message and the
identity the element carries."""

from __future__ import annotations

import traceback

from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.dead_letters import error_record, exception_message, identity_of
from lvmass.core.identity import InputIdentity
from lvmass.core.schema import ErrorRecord
from lvmass.core.study import DecodeError
from lvmass.core.summary import error_reason


class TestDeadLetters:
    URI = "gs://b/1000123_20209_2_0.zip"

    def test_decode_error_keeps_message_and_stage(self):
        exc = DecodeError(self.URI, "series", "no short-axis series")
        record = error_record("decode", self.URI, DecodeError, repr(exc), traceback.format_exception(exc))
        assert record == ErrorRecord(
            source_uri=self.URI, participant_id="1000123", eid=1000123, instance=2, stage="decode",
            error_type="DecodeError",
            message=f"{self.URI}: series: no short-axis series", pipeline_version=PIPELINE_VERSION)
        assert error_reason(record) == "DecodeError.series"

    def test_read_failures_are_stage_read(self):
        exc = DecodeError(self.URI, "read", "not a zip file (starts with b'%PDF')")
        assert error_record("decode", self.URI, DecodeError, repr(exc),
                            traceback.format_exception(exc)).stage == "read"

    def test_other_names_have_no_eid(self):
        exc = ValueError("bad 'x'")
        record = error_record("tensor", "gs://b/scan.zip", ValueError, repr(exc),
                              traceback.format_exception(exc))
        assert (record.eid, record.instance, record.message) == (None, None, "bad 'x'")
        assert record.participant_id == "scan"  # the file stem

    def test_the_message_is_the_tracebacks_last_line_not_the_repr(self):
        exc = ValueError("line one\nline two")
        lines = traceback.format_exception(exc)
        assert exception_message(ValueError, repr(exc), lines) == "line one\nline two"
        assert exception_message(ValueError, "ValueError('x')") == "ValueError('x')"  # no traceback

    def test_an_element_that_carries_its_identity_is_not_parsed_again(self):
        class Selected:  # what the Beam shell selects: a source and its identity
            identity = InputIdentity("gs://b/renamed.zip", "4242", 4242, 3)

        assert identity_of(Selected()) == ("gs://b/renamed.zip", "4242", 4242, 3)
        assert identity_of(("gs://b/1000123_20209_2_0.zip", object())) == (
            "gs://b/1000123_20209_2_0.zip", "1000123", 1000123, 2)
