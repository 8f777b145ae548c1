"""lvmass.core.decode.plan: which members a decode reads, decided before any header."""

from __future__ import annotations

import io

from lvmass.core.decode import DecodeStats
from lvmass.core.decode.headers import HeaderReader
from lvmass.core.decode.plan import MemberPlan, Reading
from lvmass.core.zip_members import StreamMembers


def test_a_plan_defaults_to_no_deferred_members_and_name_order():
    plan = MemberPlan(header_names=("b.dcm", "a.dcm"))
    assert plan.deferred_names == () and not plan.ukbb_required and dict(plan.order) == {}


def test_a_reading_ties_the_members_their_reader_and_the_stats():
    stats = DecodeStats()
    members = StreamMembers({"a": lambda: io.BytesIO(b"")})
    reader = HeaderReader(members, "x", stats, require_dicom=lambda n: False, use_pydicom=False)
    reading = Reading(members, reader, stats)
    assert reading.reader.members_read == 0 and reading.stats is stats
