"""lvmass.core.decode.request: one frozen request in, the study and its stats out."""

from __future__ import annotations

import dataclasses

import pytest

from lvmass.core.budget import MAX_PARTICIPANT_BYTES
from lvmass.core.decode import STRATEGIES, DecodeRequest
from lvmass.core.identity import InputIdentity


def test_defaults_and_the_identity_parsed_once_from_the_name():
    request = DecodeRequest("gs://b/1000123_20209_2_0.zip")
    assert (request.ed_rule, request.with_inlinevf, request.strategy, request.budget_bytes) == (
        "first_trigger_time", True, "fast", MAX_PARTICIPANT_BYTES)
    assert request.name == InputIdentity("gs://b/1000123_20209_2_0.zip", "1000123", 1000123, 2, ukbb_zip=True)
    assert not request.use_pydicom and DecodeRequest("x.zip", strategy="scan_all_headers").use_pydicom


def test_an_identity_given_is_kept():
    carried = InputIdentity("x.zip", "5", 5, 2)
    assert DecodeRequest("x.zip", identity=carried).name is carried


def test_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecodeRequest("x.zip").strategy = "all_headers"  # type: ignore[misc]  # the point of the test
    with pytest.raises(ValueError, match=rf"unknown strategy 'guess'; expected one of {STRATEGIES}".replace(
            "(", r"\(").replace(")", r"\)")):
        DecodeRequest("x.zip", strategy="guess")
    with pytest.raises(ValueError, match="unknown ed_rule 'largest'"):
        DecodeRequest("x.zip", ed_rule="largest")
