"""lvmass.core.budget: the memory one participant may take, estimated from its headers before any pixel."""

from __future__ import annotations

import pytest

from lvmass.core import budget


def test_the_estimate_holds_every_frame_twice_and_one_at_its_peak():
    frames = [100, 300, 200]
    assert budget.bytes_needed(frames, 1000) == 8 * 600 + 24 * 300 + 1000
    assert budget.bytes_needed([], 1234) == 1234


def test_within_the_budget_the_need_is_returned():
    assert budget.check([10], 0, what="1 frame", budget=1000) == 8 * 10 + 24 * 10


def test_beyond_it_the_message_says_what_and_how_much():
    with pytest.raises(budget.ParticipantTooLarge,
                       match=r"20 frames of 1 pixel would take about 1 MiB to decode and resample, "
                             r"more than the 0 MiB one participant may use "
                             r"\(lvmass.core.budget.MAX_PARTICIPANT_BYTES\)"):
        budget.check([1] * 20, budget.MIB, what="20 frames of 1 pixel", budget=1000)
