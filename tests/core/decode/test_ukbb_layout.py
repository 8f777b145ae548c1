"""The fast decoder reads less and decodes exactly the same.

Every decode strategy (``lvmass.core.decode.STRATEGIES``) must give the same ``DecodedStudy`` (bit-identical
images and outlines, the same geometry, descriptions and flags) as ``scan_all_headers``, the decoder's path
before the minimal tag reader and the trusted UK Biobank layout, kept as the reference. Checked on the
synthetic cohorts with each real-world defect, on factory zips in the UK Biobank order (where the trusted
layout applies) and with that order broken (where it must fall back), and on the real study, whose result is
also pinned to the values the decoder gave before these changes. Nothing here is timed
(``benchmarks/bench_decode.py`` measures speed).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zipfile

import numpy as np
import pytest

from lvmass.core.decode import STRATEGIES, decode_dicom_members, decode_participant_zip
from lvmass.core.study import DecodeError
from tests import dicom_factory as fac
from tests.decoding import zip_with_stats
from tests.test_real_data import REAL_ZIP

FAST = tuple(s for s in STRATEGIES if s != "scan_all_headers")


def assert_same_study(got, want) -> None:
    assert got.n_slices == want.n_slices
    for k, (x, y) in enumerate(zip(got.images, want.images, strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"slice {k}"
        np.testing.assert_array_equal(x, y, err_msg=f"slice {k}")
    for k, (x, y) in enumerate(zip(got.outlines, want.outlines, strict=True)):
        assert (x is None) == (y is None), f"outline of slice {k}"
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=f"outline of slice {k}")
    for name in ("eid", "instance", "source_uri", "pixel_spacing_mm", "slice_spacing_mm",
                 "slice_positions_mm", "end_diastolic_trigger_times_ms", "series_descriptions", "qc_flags",
                 "patient_id", "in_plane_view"):
        assert getattr(got, name) == getattr(want, name), name
    assert got.slice_thickness_mm == want.slice_thickness_mm or (
        math.isnan(got.slice_thickness_mm) and math.isnan(want.slice_thickness_mm))


def decode_each(data: bytes, name: str, **kwargs) -> dict[str, tuple]:
    """{strategy: (study, stats)}; a DecodeError is returned in the study's place."""
    out = {}
    for strategy in STRATEGIES:
        try:
            study, stats = zip_with_stats(io.BytesIO(data), name, strategy=strategy, **kwargs)
        except DecodeError as exc:
            study, stats = exc, exc.stats
        out[strategy] = (study, stats)
    return out


def assert_all_strategies_agree(data: bytes, name: str, **kwargs) -> dict[str, tuple]:
    results = decode_each(data, name, **kwargs)
    reference, _ = results["scan_all_headers"]
    for strategy in FAST:
        study, _ = results[strategy]
        if isinstance(reference, DecodeError):
            assert isinstance(study, DecodeError), strategy
            assert (study.stage, str(study)) == (reference.stage, str(reference)), strategy
        else:
            assert not isinstance(study, DecodeError), f"{strategy}: {study}"
            assert_same_study(study, reference)
    return results


_FACTORY_DESCRIPTION = re.compile(rb"CINE_segmented_SAX(?:_b\d+|_InlineVF)?|Inline_VF_Results")


def descriptions(members: dict[str, bytes]) -> dict[str, str]:
    """SeriesDescription of each factory member (the only text of that form in its header)."""
    return {n: _FACTORY_DESCRIPTION.search(d).group().decode() for n, d in members.items()}  # type: ignore[union-attr]


def ordered_zip(members: dict[str, bytes], *, manifest: bool = True,
                described: dict[str, str] | None = None) -> bytes:
    """The members in the given order (UK Biobank's: series by series, frames in InstanceNumber order),
    behind a manifest (with its unquoted-comma date) listing them with ``described`` descriptions."""
    described = described or descriptions(members)
    zipped: dict[str, bytes] = {}
    if manifest:
        zipped["manifest.cvs"] = fac.manifest_text([(n, described[n]) for n in members]).encode()
    return fac.zip_members({**zipped, **members})


# --- synthetic cohorts -----------------------------------------------------------------------------


def without(zip_bytes: bytes, keep) -> bytes:
    """The zip with only the members ``keep(name, data)`` accepts, in their order."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    return fac.zip_members({n: d for n, d in members.items() if keep(n, d)})


class TestSyntheticCohorts:
    @pytest.mark.parametrize("with_inlinevf", [True, False])
    def test_every_strategy_decodes_the_same(self, synth_zips, with_inlinevf):
        for label, name, data in synth_zips:
            results = assert_all_strategies_agree(data, name, with_inlinevf=with_inlinevf)
            study, stats = results["fast"]
            assert study.n_slices >= 6, label
            if label != "other_vendor":
                assert stats.strategy == "trusted_ukbb_layout", label

    def test_first_instance_rule(self, synth_zips):
        _, name, data = synth_zips[0]
        assert_all_strategies_agree(data, name, ed_rule="first_instance")

    def test_trusted_layout_reads_a_fraction_of_the_headers(self, synth_zips):
        _, name, data = synth_zips[0]
        results = decode_each(data, name)
        fast, reference = results["fast"][1], results["scan_all_headers"][1]
        study = results["fast"][0]
        # Per bK run of five frames: four samples; per InlineVF block: first and last, plus the frames up
        # to the first contour of each slice; the extras (mitral-valve images) whole.
        assert fast.headers_not_read > 0
        assert fast.headers_read + fast.headers_not_read == reference.headers_read
        assert fast.headers_read < 0.8 * reference.headers_read
        assert fast.headers_read_with_pydicom == 0
        assert sorted(fast.members_decoded) == sorted(reference.members_decoded)
        assert fast.pixel_frames_decoded == study.n_slices
        assert fast.bytes_read < reference.bytes_read

    def test_same_tensors_and_inlinevf_masses(self, synth_zips):
        from lvmass.core.measure import measure_inlinevf, participant_from_study

        _, name, data = synth_zips[0]
        results = decode_each(data, name)
        tensors = {s: participant_from_study(study, with_inlinevf=True, grid_pixel_mm=1.8)
                   for s, (study, _) in results.items()}
        reference = tensors["scan_all_headers"]
        reference_mass = measure_inlinevf(reference)
        assert reference_mass.lv_mass_raw_g is not None
        for strategy in FAST:
            np.testing.assert_array_equal(tensors[strategy].image, reference.image)
            np.testing.assert_array_equal(tensors[strategy].inlinevf_labels, reference.inlinevf_labels)
            assert measure_inlinevf(tensors[strategy]) == reference_mass

    def test_without_manifest(self, synth_zips):
        _, name, data = synth_zips[0]
        results = assert_all_strategies_agree(without(data, lambda n, d: not n.startswith("manifest")), name)
        assert results["fast"][1].strategy == "all_headers"

    def test_inlinevf_only(self, synth_zips):
        """No bK series: the InlineVF series supplies the images (and its mitral-valve images stay out)."""
        _, name, data = synth_zips[0]
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        keep = {n: d for n, d in members.items() if n.startswith("manifest")
                or b"CINE_segmented_SAX_b" not in d[:4096]}
        manifest = "\n".join(line for line in keep.pop("manifest.cvs").decode().splitlines()
                             if "CINE_segmented_SAX_b" not in line) + "\n"
        zipped = fac.zip_members({"manifest.cvs": manifest.encode(), **keep})
        results = assert_all_strategies_agree(zipped, name)
        assert results["fast"][0].series_descriptions[0] == "cine_segmented_sax_inlinevf"


# --- factory zips in UK Biobank order ----------------------------------------------------------------


def factory_members_in_order(**kwargs) -> tuple[fac.FactoryZip, dict[str, bytes]]:
    """Five phases: runs and InlineVF blocks long enough for the trusted layout to leave frames unread."""
    kwargs = {"n_slices": 6, "n_phases": 5, **kwargs}
    fz = fac.ukbb_participant_zip(**kwargs)
    return fz, dict(fz.members)  # generation order: series by series, phases in order, InlineVF, extras


class TestFactoryZipsInOrder:
    @pytest.mark.parametrize("kwargs", [
        {},
        {"duplicate_slice": 3},
        {"outline_phases": {2, 3}},  # the nearest outlined phase: InlineVF blocks read until phase 2
        {"swap_numbers": (2, 3)},
        {"drop_slice": 4},
        {"mixed_series": True},  # not the bK layout: every header is read
        {"geometry": fac.StackGeometry(apex_sign=1.0)},
        {"missing_pixels_slice": 2},  # the same error from every strategy
    ], ids=lambda kw: ",".join(kw) or "standard")
    def test_every_strategy_decodes_the_same(self, kwargs):
        fz, members = factory_members_in_order(seed=31, **kwargs)
        data = ordered_zip(members)
        results = assert_all_strategies_agree(data, "gs://b/" + fz.name)
        study, stats = results["fast"]
        if "mixed_series" in kwargs:
            assert stats.strategy == "all_headers"
        elif not isinstance(study, DecodeError):
            assert stats.strategy == "trusted_ukbb_layout"
            for k, idx in enumerate(fz.base_indices if fz.geometry.apex_sign < 0 else fz.base_indices[::-1]):
                np.testing.assert_array_equal(study.images[k], fz.expected_image(idx))

    def test_counts(self):
        """8 slices x 6 phases: bK runs sampled at their first, middle and last frames; InlineVF blocks at
        their first and last; the two slices without a contour at ED need no more, because their other
        frames' sizes show no overlay plane (the factory's overlays are 40 x 36 bits, 180 bytes)."""
        fz, members = factory_members_in_order(n_slices=8, n_phases=6, seed=32)
        study, stats = zip_with_stats(io.BytesIO(ordered_zip(members)), fz.name)
        assert stats.strategy == "trusted_ukbb_layout"
        bk, vf_blocks, lax = 8 * 3, 8 * 2, 2
        assert stats.headers_read == bk + vf_blocks + lax == 42  # of 98 (was: all 98)
        assert stats.headers_not_read == fz.n_dicoms - 1 - stats.headers_read == 56  # not Inline_VF_Results
        assert stats.headers_read_with_pydicom == 0
        assert stats.members_skipped_by_manifest == 1
        assert stats.pixel_frames_decoded == 8 and stats.overlay_frames_decoded == 6
        assert len(stats.members_decoded) == 8 + 6
        assert study.has_inlinevf


class TestTrustFallsBack:
    """Where the layout does not hold, the fast path reads what it must and still decodes the same."""

    def test_a_run_stored_backwards_is_read_whole(self):
        fz, members = factory_members_in_order(seed=33)
        names = list(members)
        run = names[2 * 5:3 * 5]  # slice 3's bK frames, phases 0..4
        reordered = {n: members[n] for n in names[:10] + run[::-1] + names[15:]}
        results = assert_all_strategies_agree(ordered_zip(reordered), fz.name)
        stats = results["fast"][1]
        assert stats.strategy == "trusted_ukbb_layout"
        assert stats.headers_read == 5 * 3 + 5 + 6 * 2 + 2  # that run read whole

    def test_inlinevf_blocks_out_of_order_are_read_whole(self):
        fz, members = factory_members_in_order(seed=34)
        names = list(members)
        vf_start = 6 * 5
        block = names[vf_start + 5:vf_start + 10]
        reordered = {n: members[n] for n in names[:vf_start + 5] + block[::-1] + names[vf_start + 10:]}
        results = assert_all_strategies_agree(ordered_zip(reordered), fz.name)
        assert results["fast"][1].headers_read == 6 * 3 + 6 * 5 + 2  # the InlineVF run read whole

    def test_a_manifest_that_misdescribes_a_member_drops_the_trust(self):
        fz, members = factory_members_in_order(seed=35)
        described = descriptions(members)
        vf_frame = next(n for n, d in described.items() if d == "CINE_segmented_SAX_InlineVF")
        described[vf_frame] = "CINE_segmented_SAX_b1"
        results = assert_all_strategies_agree(ordered_zip(members, described=described), fz.name)
        stats = results["fast"][1]
        assert stats.strategy == "all_headers"
        assert any("contradicts the manifest" in note for note in stats.notes)

    def test_shuffled_zip(self):
        """The factory's own zips: member order shuffled, runs of one or two frames, read whole."""
        fz = fac.ukbb_participant_zip(n_slices=6, n_phases=5, duplicate_slice=2, seed=36)
        assert_all_strategies_agree(fz.data, fz.name)


# --- the real study --------------------------------------------------------------------------------


def fingerprint(study) -> dict:
    images = hashlib.sha256()
    for image in study.images:
        images.update(str(image.shape).encode() + str(image.dtype).encode())
        images.update(np.ascontiguousarray(image).tobytes())
    outlines = hashlib.sha256()
    for outline in study.outlines:
        outlines.update(b"none" if outline is None else
                        np.packbits(np.ascontiguousarray(outline)).tobytes() + str(outline.shape).encode())
    return {
        "images_sha256": images.hexdigest(), "outlines_sha256": outlines.hexdigest(),
        "pixel_spacing_mm": list(study.pixel_spacing_mm), "slice_spacing_mm": study.slice_spacing_mm,
        "slice_thickness_mm": study.slice_thickness_mm, "slice_positions_mm": list(study.slice_positions_mm),
        "end_diastolic_trigger_times_ms": list(study.end_diastolic_trigger_times_ms),
        "series_descriptions": list(study.series_descriptions), "qc_flags": list(study.qc_flags),
        "patient_id": study.patient_id, "in_plane_view": study.in_plane_view,
    }


# What the decoder gave on the real study before the minimal reader and the trusted layout (commit ee1746a).
REAL_STUDY_BEFORE = {
    "images_sha256": "ca89215549d52da582e42baa0204f4d71940fea586acc0ccee0cc7c31fe5736b",
    "outlines_sha256": "9959ac56f3e2cb11c96f12d4367ec33fde911f8df5f98a9c85647122c8d42306",
    "pixel_spacing_mm": [1.3672, 1.3672], "slice_spacing_mm": 8.0, "slice_thickness_mm": 8.0,
    "slice_positions_mm": [46.29474888904298, 54.29492279863514, 62.29509670822729, 70.29527061781937,
                           78.29492155533593, 86.29509546492807, 94.2952693745202, 102.29544328411234,
                           110.29438085679648, 118.29455476638861, 126.29472867598074],
    "end_diastolic_trigger_times_ms": [10.0] * 11, "series_descriptions": [""] * 11, "qc_flags": [],
    "patient_id": "SCD0000501", "in_plane_view": "none",
}


class TestRealStudy:
    def test_every_strategy_gives_what_the_decoder_gave_before(self):
        data = REAL_ZIP.read_bytes()
        results = assert_all_strategies_agree(data, REAL_ZIP.name)
        for strategy, (study, _) in results.items():
            got = fingerprint(study)
            # positions are dot products of the DICOM geometry: their last bit depends on the CPU's
            # vector kernels (seen: AMD EPYC vs Intel Xeon), so they are compared to 1e-12 relative
            np.testing.assert_allclose(got.pop("slice_positions_mm"), REAL_STUDY_BEFORE["slice_positions_mm"],
                                       rtol=1e-12, err_msg=strategy)
            assert got == {k: v for k, v in REAL_STUDY_BEFORE.items() if k != "slice_positions_mm"}, strategy
        fast = results["fast"][1]
        assert fast.strategy == "all_headers"  # no manifest: every header, by the minimal reader
        assert fast.headers_read == 220 and fast.headers_read_with_pydicom == 0


class TestFolders:
    @pytest.mark.parametrize("strategy", FAST)
    def test_folder_decodes_the_same(self, strategy):
        fz = fac.any_vendor_members(n_slices=6, n_phases=4, ed_phase_offset=1, seed=37)
        reference = decode_dicom_members(fz.opener_mapping(), "file:///v", strategy="scan_all_headers")
        study = decode_dicom_members(fz.opener_mapping(), "file:///v", strategy=strategy)
        assert_same_study(study, reference)

    def test_unknown_strategy(self):
        with pytest.raises(ValueError, match="unknown strategy 'guess'"):
            decode_participant_zip(io.BytesIO(b""), "x.zip", strategy="guess")
