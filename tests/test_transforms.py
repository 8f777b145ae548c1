"""The Beam shell's pure helpers and composites, on hand-made studies with known answers.

The ML4H_seg path is checked end to end against a SavedModel whose output is known exactly (the band
segmenter of tests/savedmodel_factory.py): a study whose pixel values *are* its labels must come out
with exactly the myocardial mass of those labels.
"""

from __future__ import annotations

import dataclasses
import io
import math
import traceback
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.inference import SavedModelHandler
from beam_pipeline.transforms import (
    CalibrateAndIndex,
    DecodeFn,
    DecodeParticipants,
    ReadParticipants,
    SegmentAndMeasure,
    ToErrorRecords,
    load_phenotypes,
)
from lvmass.core import contracts
from lvmass.core.decode import decode_participant_zip
from lvmass.core.mass import SexCentering
from lvmass.core.measure import (
    participant_from_study,
)
from lvmass.core.phenotypes import Phenotype, PhenotypeTable
from lvmass.core.schema import (
    CALIBRATION_SEX_CENTERED,
)
from tests.dicom_factory import BlockFetchingReader, any_vendor_members, ukbb_participant_zip, zip_members
from tests.hand_made import (
    MALE,
    band_thresholds,
    expected_mass_g,
    label_study,
    measurement,
)
from tests.savedmodel_factory import save_band_segmenter


def test_read_and_decode_composites(tmp_path):
    """UK Biobank and any-vendor zips decode; bad ones become one error row each, with the right stage."""
    ukbb = ukbb_participant_zip(1000001, n_slices=8, seed=3)
    (tmp_path / ukbb.name).write_bytes(ukbb.data)
    vendor = zip_members(any_vendor_members(n_slices=7, seed=4).members)
    (tmp_path / "1000077.zip").write_bytes(vendor)
    (tmp_path / "scan.zip").write_bytes(vendor)
    (tmp_path / "1000078_20209_2_0.zip").write_bytes(b"plain text")

    with BeamTestPipeline(runner="FnApiRunner") as p:
        participants, errors = (
            p | ReadParticipants(str(tmp_path / "*.zip")) | DecodeParticipants(with_inlinevf=True))
        assert_that(participants | beam.Map(lambda t: (t.participant_id, t.eid, t.instance, t.n_slices,
                                                       t.image.shape, t.inlinevf_labels is not None)),
                    equal_to([("1000001", 1000001, 2, 8, contracts.TENSOR_SHAPE, True),
                              ("1000077", 1000077, 0, 7, contracts.TENSOR_SHAPE, False),
                              ("scan", None, 0, 7, contracts.TENSOR_SHAPE, False)]))  # no eid: its stem
        assert_that(errors | beam.Map(lambda e: (Path(e.source_uri).name, e.eid, e.stage, e.error_type)),
                    equal_to([("1000078_20209_2_0.zip", 1000078, "read", "DecodeError")]),
                    label="Errors")


def test_ml4h_seg_path_reproduces_the_exact_mass(tmp_path):
    """Known-output SavedModel -> RunInference -> argmax -> measure: exactly the labels' mass."""
    studies = [label_study(9, eid=1000001, uri="mem://1000001_20209_2_0.zip"),
               label_study(11, eid=1000002, uri="mem://1000002_20209_2_0.zip")]
    participants = [participant_from_study(s, with_inlinevf=False) for s, _ in studies]
    low, high = band_thresholds(participants[0].image)
    # the same thresholds separate the bands of the second study (checked, not assumed)
    low2, high2 = band_thresholds(participants[1].image)
    assert max(low, low2) < min(high, high2)
    model_dir = save_band_segmenter(tmp_path / "seg", low=max(low, low2) - 1e-3, high=min(high, high2) - 1e-3)
    handler = SavedModelHandler(str(model_dir), kind=contracts.MODEL_KIND_SEG, max_batch_size=2)
    expected = {p.eid: expected_mass_g(labels) for p, (_, labels) in zip(participants, studies, strict=True)}

    def check(results):
        got = {m.eid: m for m in results}
        assert sorted(got) == sorted(expected)
        for eid, m in got.items():
            assert m.method == contracts.METHOD_ML4H_SEG
            assert m.model_version == "band-seg-1"
            assert m.lv_mass_raw_g == pytest.approx(expected[eid], rel=1e-12)
            assert m.myocardium_volume_ml * contracts.MYOCARDIAL_DENSITY_G_PER_ML == pytest.approx(
                m.lv_mass_raw_g, rel=1e-12)
            assert m.lv_cavity_volume_ml > 0

    with BeamTestPipeline(runner="FnApiRunner") as p:
        measured, errors = p | beam.Create(participants) | SegmentAndMeasure(handler)
        assert_that(measured, check)
        assert_that(errors, equal_to([]), label="NoErrors")


def test_calibrate_and_index_fits_centering_and_p90(tmp_path):
    """Centring moves each sex's mean raw mass onto its manual mean; p90 flags the top 10%."""
    rng = np.random.default_rng(7)
    rows, measurements = ["eid,sex,age,height_cm,weight_kg,manual_lv_mass_g"], []
    for eid in range(1, 41):
        sex = "male" if eid % 2 else "female"
        manual = (120.0 if sex == "male" else 85.0) + rng.normal(0, 10)
        raw = manual * 1.5 + 20 + rng.normal(0, 5)
        manual_text = f"{manual:.3f}" if eid % 4 != 1 else ""  # a quarter without manual mass
        if eid != 40:  # participant 40 has no phenotype row
            rows.append(f"{eid},{sex},60,{170 + eid % 7},{70 + eid % 9},{manual_text}")
        measurements.append(measurement(method=contracts.METHOD_INLINEVF, raw=float(raw), eid=eid))
    pheno = tmp_path / "pheno.csv"
    pheno.write_text("\n".join(rows) + "\n")

    def check(records):
        by_method = {}
        for r in records:
            by_method.setdefault(r.method, []).append(r)
        assert sorted(by_method) == [contracts.METHOD_INLINEVF, contracts.METHOD_INLINEVF_RECALIBRATED]
        vf = by_method[contracts.METHOD_INLINEVF]
        assert len(vf) == 40
        for sex in contracts.SEXES:
            of_sex = [r for r in vf if r.sex == sex]
            manual = [m for m in (_manual(r.eid, rows) for r in of_sex) if m is not None]
            assert all(r.calibration == CALIBRATION_SEX_CENTERED for r in of_sex)
            assert np.mean([r.lv_mass_g for r in of_sex]) == pytest.approx(np.mean(manual), abs=1e-9)
            n_p90 = sum(bool(r.lvh_p90) for r in of_sex)
            assert 1 <= n_p90 <= math.ceil(0.1 * len(of_sex))
        missing = next(r for r in vf if r.eid == 40)
        assert missing.sex is None and missing.lv_mass_g is None and missing.lv_mass_raw_g is not None
        assert contracts.QC_NO_PHENOTYPE in missing.qc_flags and missing.lvh_p90 is None

    with BeamTestPipeline(runner="FnApiRunner") as p:
        records = p | beam.Create(measurements) | CalibrateAndIndex(str(pheno))
        assert_that(records, check)


def _manual(eid: int, rows: list[str]) -> float | None:
    for line in rows[1:]:
        fields = line.split(",")
        if int(fields[0]) == eid:
            return float(fields[5]) if fields[5] else None
    return None


class TestToErrorRecords:
    def test_failed_batch_gives_one_row_per_participant(self):
        batch = [(f"gs://b/{eid}_20209_2_0.zip", object()) for eid in (1, 2, 3)]
        oom = RuntimeError("OOM")
        bad = [(batch, (RuntimeError, repr(oom), traceback.format_exception(oom)))]
        with BeamTestPipeline(runner="FnApiRunner") as p:
            records = p | beam.Create(bad) | ToErrorRecords("inference", batched=True)
            assert_that(records | beam.Map(lambda r: (r.eid, r.stage, r.message)),
                        equal_to([(1, "inference", "OOM"), (2, "inference", "OOM"), (3, "inference", "OOM")]))


# --- Findings of the pipeline review -----------------------------------------------------------------


@dataclasses.dataclass
class FakeReadableFile:
    """What ``fileio.ReadMatches`` hands the decoder: metadata and an ``open()``."""

    metadata: object
    stream: object

    def open(self, mime_type="application/octet-stream", compression_type=None):
        return self.stream


class TestRemoteZipIsFetchedOnce:
    def _readable(self, path: str, data: bytes) -> tuple[FakeReadableFile, BlockFetchingReader]:
        from apache_beam.io.filesystem import FileMetadata

        reader = BlockFetchingReader(data, block_size=16 * 1024)
        return FakeReadableFile(FileMetadata(path, len(data)), reader), reader

    def test_gs_zip_is_fetched_exactly_once(self):
        """A gs:// zip is read whole into memory before decoding: one pass over the object, where
        seeking in the remote stream fetched it ~17 times over (refetch on each backward seek)."""
        z = ukbb_participant_zip(1000001, n_slices=8, seed=3)
        readable, reader = self._readable(f"gs://b/20209/{z.name}", z.data)
        (study,) = DecodeFn("first_trigger_time").process(readable)
        assert study.n_slices == 8 and study.has_inlinevf
        assert reader.bytes_fetched == len(z.data)

    def test_local_zip_is_streamed(self, tmp_path):
        """A local zip stays a seekable stream: only the members needed are read, not the whole file."""
        z = ukbb_participant_zip(1000001, n_slices=8, seed=3)
        readable, reader = self._readable(str(tmp_path / z.name), z.data)
        (study,) = DecodeFn("first_trigger_time", with_inlinevf=False).process(readable)
        assert study.n_slices == 8 and not study.has_inlinevf
        assert reader.fetches > 1  # read on demand, never in one request


def test_geometry_flags_come_from_the_decoder_once(monkeypatch):
    """participant_from_study keeps the decoder's geometry flags and does not recompute them."""
    import lvmass.core.qc as qc

    z = ukbb_participant_zip(1000001, n_slices=9, drop_slice=4, seed=7)
    study = decode_participant_zip(io.BytesIO(z.data), z.name)
    calls = []
    monkeypatch.setattr(qc, "geometry_qc_flags", lambda *args: calls.append(args) or ())
    participant = participant_from_study(study, with_inlinevf=False)
    assert calls == []
    assert contracts.QC_NONCONTIGUOUS_SLICES in participant.qc_flags


def test_a_record_calibration_rejects_is_a_dead_letter(monkeypatch):
    """A phenotype the arithmetic rejects (height 0: DuBois raises) costs that participant one error row
    at stage ``phenotypes``; the others are written and the job goes on."""
    from beam_pipeline.transforms import outputs

    bad = Phenotype(eid=2, sex="intersex", height_cm=160.0, weight_kg=60.0)  # not through the reader:
    # the LVH thresholds know female and male only, so calibrating this row raises
    table = PhenotypeTable(rows={(1, None): MALE, (2, None): bad})
    monkeypatch.setattr(outputs, "load_phenotypes", lambda path: table)
    measurements = [measurement(method=contracts.METHOD_ML4H_REG, raw=130.0, eid=1),
                    measurement(method=contracts.METHOD_INLINEVF, raw=150.0, eid=2)]
    with BeamTestPipeline(runner="FnApiRunner") as p:
        records, errors = p | beam.Create(measurements) | CalibrateAndIndex(None, with_errors=True)
        assert_that(records | beam.Map(lambda r: (r.eid, r.method)),
                    equal_to([(1, contracts.METHOD_ML4H_REG)]))
        assert_that(errors | beam.Map(lambda e: (e.eid, e.instance, e.stage, e.error_type, e.source_uri)),
                    equal_to([(2, 2, "phenotypes", "ValueError", "gs://b/2_20209_2_0.zip")]), label="Errors")


def test_centering_is_merged_per_sex_with_a_minimum_count(tmp_path):
    """Run: 12 men and 3 women with a manual mass (default minimum 10). Men are centred on the run's own
    fit; women on the --calibration fallback (their 3 manual masses are too few), and the calibration
    column says which."""
    rows, measurements = ["eid,sex,height_cm,weight_kg,manual_lv_mass_g"], []
    for eid in range(1, 16):
        sex = "male" if eid <= 12 else "female"
        manual = 100.0 + eid if sex == "male" else 80.0 + eid
        rows.append(f"{eid},{sex},175,75,{manual}")
        measurements.append(measurement(method=contracts.METHOD_INLINEVF, raw=1.5 * manual, eid=eid))
    pheno = tmp_path / "pheno.csv"
    pheno.write_text("\n".join(rows) + "\n")
    fallback = {contracts.METHOD_INLINEVF: SexCentering.from_means(
        {"female": 120.0, "male": 160.0}, {"female": 70.0, "male": 100.0}, source="calibration_file")}
    male_manual = [100.0 + eid for eid in range(1, 13)]

    def check(records):
        vf = {r.eid: r for r in records if r.method == contracts.METHOD_INLINEVF}
        assert len(vf) == 15
        for r in vf.values():
            if r.sex == "male":
                assert r.calibration == CALIBRATION_SEX_CENTERED
            else:
                assert r.calibration == f"{CALIBRATION_SEX_CENTERED}:calibration_file"
                assert r.lv_mass_g == pytest.approx(r.lv_mass_raw_g - 50.0)
        men = [r.lv_mass_g for r in vf.values() if r.sex == "male"]
        assert np.mean(men) == pytest.approx(np.mean(male_manual))

    with BeamTestPipeline(runner="FnApiRunner") as p:
        records = p | beam.Create(measurements) | CalibrateAndIndex(str(pheno), fallback)
        assert_that(records, check)


def test_manual_mass_joins_the_first_imaging_visit_only(tmp_path):
    """Without an instance column, sex/height/weight go to every visit, manual mass to instance 2 only;
    with one, each visit gets its own row."""
    plain = tmp_path / "plain.csv"
    plain.write_text("eid,sex,height_cm,weight_kg,manual_lv_mass_g\n1,male,180,80,101.5\n")
    table = load_phenotypes(str(plain))
    first, repeat = table.lookup(1, 2), table.lookup(1, 3)
    assert first.manual_lv_mass_g == 101.5 and repeat.manual_lv_mass_g is None
    assert (repeat.sex, repeat.height_cm, repeat.weight_kg) == ("male", 180.0, 80.0)
    per_visit = tmp_path / "visits.csv"
    per_visit.write_text("eid,instance,sex,weight_kg,manual_lv_mass_g\n1,2,male,80,101.5\n1,3,male,84,110\n")
    table = load_phenotypes(str(per_visit))
    assert (table.lookup(1, 2).weight_kg, table.lookup(1, 2).manual_lv_mass_g) == (80.0, 101.5)
    assert (table.lookup(1, 3).weight_kg, table.lookup(1, 3).manual_lv_mass_g) == (84.0, 110.0)
    assert table.lookup(1, 0) is None


def test_calibration_sees_only_the_visits_manual_mass(tmp_path):
    """A repeat-visit scan does not take part in the centering fit with the first visit's manual mass."""
    pheno = tmp_path / "pheno.csv"
    pheno.write_text("eid,sex,height_cm,weight_kg,manual_lv_mass_g\n1,male,180,80,100\n2,male,180,80,80\n")
    measurements = [measurement(method=contracts.METHOD_INLINEVF, raw=150.0, eid=1),
                    dataclasses.replace(measurement(method=contracts.METHOD_INLINEVF, raw=150.0, eid=1),
                                        instance=3, source_uri="gs://b/1_20209_3_0.zip"),
                    measurement(method=contracts.METHOD_INLINEVF, raw=150.0, eid=2)]

    def check(records):
        vf = [r for r in records if r.method == contracts.METHOD_INLINEVF]
        # manual mean over the two first-visit scans (90 g), not over three with 100 g twice (93.3 g)
        assert [r.lv_mass_g for r in vf] == pytest.approx([90.0, 90.0, 90.0])

    with BeamTestPipeline(runner="FnApiRunner") as p:
        assert_that(p | beam.Create(measurements) | CalibrateAndIndex(str(pheno)), check)
