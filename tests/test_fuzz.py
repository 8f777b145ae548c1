"""Fuzzing the decoder and tensor builder with hypothesis, on a fixed budget (derandomised, so CI runs
the same examples every time): mutated DICOM bytes and zip structures never raise anything but a
``DecodeError`` / ``ValueError`` naming the input, never hang, and stay within a bounded memory."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvmass.core.decode import decode_participant_zip
from lvmass.core.measure import participant_from_study
from tests.dicom_factory import StackGeometry, ukbb_participant_zip

URI = "mem://fuzz/1000001_20209_2_0.zip"
BUDGET = settings(max_examples=60, deadline=5000, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MEMORY_LIMIT_BYTES = 256 * 1024 * 1024  # a participant is a few MB; a blow-up would be gigabytes


@pytest.fixture(scope="module")
def members() -> dict[str, bytes]:
    """The participant's members, the same bytes on every run: its UIDs are drawn from a counter, not
    at random, so that the derandomised examples mutate the same bytes every time."""
    from itertools import count

    from pydicom.uid import generate_uid

    import tests.dicom_factory as factory

    drawn = count()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(factory, "generate_uid",
                      lambda prefix=None: generate_uid(prefix=prefix, entropy_srcs=[str(next(drawn))]))
        fz = ukbb_participant_zip(1000001, n_slices=6, n_phases=2, seed=11,
                                  geometry=StackGeometry(rows=64, cols=64))
    with zipfile.ZipFile(io.BytesIO(fz.data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            # a fixed timestamp: the same bytes on every run
            archive.writestr(zipfile.ZipInfo(name, date_time=(2015, 8, 30, 10, 12, 32)), data,
                             compress_type=compression)
    return out.getvalue()


def _decode_and_build(data: bytes) -> None:
    """Decode and build the tensor; only errors that name the input are allowed."""
    tracemalloc.start()
    try:
        try:
            study = decode_participant_zip(io.BytesIO(data), URI)
            participant_from_study(study, with_inlinevf=True, grid_pixel_mm=1.86)
        except ValueError as exc:  # DecodeError is a ValueError
            assert URI in str(exc), f"the error does not name the input: {exc}"
        _, peak = tracemalloc.get_traced_memory()
        assert peak < MEMORY_LIMIT_BYTES, f"peak {peak / 1e6:.0f} MB"
    finally:
        tracemalloc.stop()


mutation = st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))


@BUDGET
@given(data=st.data())
def test_mutated_dicom_bytes(members, data):
    """Random bytes overwritten, cut or inserted inside the DICOM members (headers, pixel data,
    overlays alike)."""
    names = sorted(n for n in members if n.endswith(".dcm"))
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=6, unique=True))
    mutated = dict(members)
    for name in chosen:
        raw = bytearray(mutated[name])
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        if kind == "flip":
            for offset, value in data.draw(st.lists(mutation, min_size=1, max_size=20)):
                raw[offset % len(raw)] = value
        elif kind == "truncate":
            raw = raw[: data.draw(st.integers(min_value=0, max_value=len(raw)))]
        else:
            at = data.draw(st.integers(min_value=0, max_value=len(raw)))
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
        mutated[name] = bytes(raw)
    _decode_and_build(_zip(mutated))


@BUDGET
@given(data=st.data())
def test_mutated_zip_structure(members, data):
    """Members dropped, renamed, duplicated or stored uncompressed; then the zip's own bytes damaged."""
    names = sorted(members)
    kept = data.draw(st.lists(st.sampled_from(names), min_size=0, max_size=len(names), unique=True))
    mutated = {}
    for name in kept:
        new_name = data.draw(st.sampled_from([name, name.upper(), "x/" + name, name + ".bak"]))
        mutated[new_name] = members[name]
    compression = data.draw(st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED]))
    raw = bytearray(_zip(mutated, compression))
    for offset, value in data.draw(st.lists(mutation, max_size=8)):
        if raw:
            raw[offset % len(raw)] = value
    _decode_and_build(bytes(raw))


@BUDGET
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(blob):
    _decode_and_build(blob)
