"""The output folder's ledger (``lvmass.storage.ledger``) and the derivation (``lvmass.core.derive``), as
plain functions over real files: runs are staged, read back, committed and finalised without Beam.

What is checked: a run whose files lack rows is not committed; the facts round-trip exactly; derived
files are named by their content, so two finalises of the same facts give the same files; the derived
table of three committed runs equals one run's of the same measurements, byte for byte; ``recover``
deletes what no commit names and nothing else; the readers take only what ``_SUCCESS`` names; runs with
other settings are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis import io as aio
from lvmass.core import contracts
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.derive import DerivationSettings, measurement_from_row, measurement_row
from lvmass.core.identity import input_identity
from lvmass.core.measure import Measurement
from lvmass.core.phenotypes import Phenotype, PhenotypeTable
from lvmass.core.schema import ERRORS_SCHEMA, MEASUREMENTS_SCHEMA, SUCCESS_FILENAME, ErrorRecord
from lvmass.storage import ledger, queries

SETTINGS = ledger.FinaliseSettings(
    mode="infer", result_methods=(contracts.METHOD_INLINEVF, contracts.METHOD_INLINEVF_RECALIBRATED),
    phenotypes_path=None, derivation=DerivationSettings(min_calibration_n=1),
    options={"methods": ["inlinevf"]})
FACTS = {"mode": "infer", "methods": ["inlinevf"]}


def measurement(eid: int, raw: float) -> Measurement:
    return Measurement(source_uri=f"gs://b/{eid}_20209_2_0.zip", participant_id=str(eid), eid=eid, instance=2,
                       method=contracts.METHOD_INLINEVF, lv_mass_raw_g=raw, myocardium_volume_ml=raw / 1.05,
                       lv_cavity_volume_ml=120.0 + eid % 7, n_slices=10, acquired_voxel_mm=(1.8, 1.9, 10.0),
                       grid_pixel_mm=1.86, in_plane_scale=1.8 / 1.86, qc_flags=(),
                       model_version=None)


PHENOTYPES = PhenotypeTable(rows={(eid, None): Phenotype(eid=eid, sex="male" if eid % 2 else "female",
                                                         height_cm=170.0, weight_kg=70.0,
                                                         manual_lv_mass_g=90.0 + eid % 11)
                                  for eid in range(1, 13)})


def stage_run(output: Path, run_id: str, measurements: list[Measurement], errors: list[ErrorRecord] = (),
              *, commit: bool = True, missing_rows: int = 0) -> None:
    """What a run's sinks leave (its facts and dead letters in its folder), then its commit."""
    files = []
    for kind, rows, schema in ((ledger.KIND_MEASUREMENTS,
                                [measurement_row(m, pipeline_version=PIPELINE_VERSION) for m in measurements],
                                MEASUREMENTS_SCHEMA),
                               (ledger.KIND_ERRORS, [e.to_row() for e in errors], ERRORS_SCHEMA)):
        path = Path(ledger.staged_prefix(str(output), run_id, kind) + "-00000-of-00001.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ledger.parquet_bytes(rows, schema))
        files.append(str(path))
    if commit:
        uris = [m.source_uri for m in measurements] + [e.source_uri for e in errors]
        ledger.commit_run(str(output), run_id=run_id, mode="infer", fact_options=FACTS, options={},
                          inputs=ledger.input_entries([input_identity(u) for u in uris],
                                                      [m.source_uri for m in measurements],
                                                      [e.source_uri for e in errors]),
                          inputs_skipped_existing=0, files=files,
                          expected_rows={ledger.KIND_MEASUREMENTS: len(measurements) + missing_rows,
                                         ledger.KIND_ERRORS: len(errors)})


def derived_bytes(output: Path) -> dict[str, bytes]:
    commit = ledger.read_commit(str(output))
    return {f.path: (output / f.path).read_bytes() for f in commit.files} | {
        "summary.json": (output / "summary.json").read_bytes()}


MEASUREMENTS = [measurement(eid, 140.0 + 3.5 * eid) for eid in range(1, 13)]
BROKEN = ErrorRecord(source_uri="gs://b/99_20209_2_0.zip", participant_id="99", eid=99, instance=2,
                     stage="decode", error_type="DecodeError",
                     message="gs://b/99_20209_2_0.zip: series: none",
                     pipeline_version=PIPELINE_VERSION)


def test_facts_round_trip_exactly():
    m = MEASUREMENTS[3]
    row = measurement_row(m, pipeline_version="x")
    table = pq.read_table(io.BytesIO(ledger.parquet_bytes([row], MEASUREMENTS_SCHEMA)))
    assert measurement_from_row(table.to_pylist()[0]) == m


def test_a_run_whose_files_lack_rows_is_not_committed(tmp_path):
    with pytest.raises(ledger.CommitError, match=r"measurements files hold 12 rows, the run produced 13"):
        stage_run(tmp_path, "r1", MEASUREMENTS, missing_rows=1)
    assert ledger.committed_runs(str(tmp_path)) == []
    assert ledger.recover(str(tmp_path))  # the next run deletes its files
    assert not (tmp_path / "_runs").exists()


def test_three_runs_derive_what_one_run_derives_byte_for_byte(tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    stage_run(one, "r0", MEASUREMENTS, [BROKEN])
    ledger.finalise(str(one), SETTINGS, PHENOTYPES, latest_run="r0")
    for k, chunk in enumerate((MEASUREMENTS[:5], MEASUREMENTS[5:9], MEASUREMENTS[9:])):
        stage_run(three, f"r{k}", chunk, [BROKEN] if k == 1 else [])
        ledger.finalise(str(three), SETTINGS, PHENOTYPES, latest_run=f"r{k}")
    assert derived_bytes(one) == derived_bytes(three)
    summary = json.loads((three / "summary.json").read_text())
    assert (summary["inputs_matched"], summary["participants_written"], summary["participants_failed"]) == (
        13, 12, 1)
    assert "run_id" not in summary and summary["reconciled"]
    # only the current generation is left, and the readers read exactly it
    on_disk = sorted(p.relative_to(three).as_posix() for p in (three / "lvmass").rglob("*.parquet"))
    assert on_disk == sorted(f.path for f in ledger.read_commit(str(three)).files_of(ledger.KIND_RESULTS))
    assert len(aio.read_results(str(three))) == 24
    assert queries.connect(str(three)).execute("SELECT count(*) FROM lvmass").fetchone()[0] == 24


def test_a_finalise_of_the_same_facts_writes_nothing_new(tmp_path):
    stage_run(tmp_path, "r0", MEASUREMENTS)
    first = ledger.finalise(str(tmp_path), SETTINGS, PHENOTYPES, latest_run="r0")
    mtimes = {f.path: (tmp_path / f.path).stat().st_mtime_ns for f in first.files}
    second = ledger.finalise(str(tmp_path), SETTINGS, PHENOTYPES, latest_run="r0")
    assert second.files == first.files and second.generation == first.generation
    assert {f.path: (tmp_path / f.path).stat().st_mtime_ns for f in second.files} == mtimes


def test_recover_keeps_the_last_commit_and_deletes_the_rest(tmp_path):
    stage_run(tmp_path, "r0", MEASUREMENTS[:6])
    ledger.finalise(str(tmp_path), SETTINGS, PHENOTYPES, latest_run="r0")
    before = derived_bytes(tmp_path)
    # a later run killed: its staged files, a derived file no commit names, a temp file, a stale copy
    stage_run(tmp_path, "r1", MEASUREMENTS[6:], commit=False)
    (tmp_path / "lvmass" / "method=inlinevf" / "results-0123456789abcdef.parquet").write_bytes(b"half")
    (tmp_path / ledger.TEMP_DIRNAME).mkdir()
    (tmp_path / ledger.TEMP_DIRNAME / "x.tmp").write_bytes(b"x")
    (tmp_path / "summary.json").write_text("{}")
    deleted = ledger.recover(str(tmp_path))
    assert len(deleted) == 4
    assert derived_bytes(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "_runs").iterdir()) == ["r0"]
    assert ledger.done_keys(ledger.committed_runs(str(tmp_path))) == {(str(e), 2) for e in range(1, 7)}


def test_readers_take_only_what_the_commit_names(tmp_path):
    stage_run(tmp_path, "r0", MEASUREMENTS)
    ledger.finalise(str(tmp_path), SETTINGS, PHENOTYPES, latest_run="r0")
    stray = tmp_path / "lvmass" / "method=inlinevf" / "beam-temp-results-1" / "part.parquet"
    stray.parent.mkdir()
    stray.write_bytes((tmp_path / ledger.read_commit(str(tmp_path)).files[0].path).read_bytes())
    assert len(aio.read_results(str(tmp_path))) == 24  # not 36
    assert queries.connect(str(tmp_path)).execute("SELECT count(*) FROM lvmass").fetchone()[0] == 24
    assert (tmp_path / "_ledger" / "bigquery" / "lvmass.manifest").read_text().count("\n") == 2


def test_a_folder_whose_first_run_never_committed_reads_as_nothing(tmp_path):
    stage_run(tmp_path, "r0", MEASUREMENTS, commit=False)
    assert ledger.read_commit(str(tmp_path)) is None and ledger.is_ledger_folder(str(tmp_path))
    with pytest.raises(aio.InputError, match="no committed run"):
        aio.read_results(str(tmp_path))


@pytest.mark.parametrize("marker", ["", '{"run_id": "old", "summary": "summary.json", "reconciled": true}'])
def test_markers_older_than_the_ledger_are_not_commits(tmp_path, marker):
    (tmp_path / SUCCESS_FILENAME).write_text(marker)
    assert ledger.read_commit(str(tmp_path)) is None


def test_runs_with_other_settings_are_refused(tmp_path):
    stage_run(tmp_path, "r0", MEASUREMENTS[:2])
    runs = ledger.committed_runs(str(tmp_path))
    ledger.check_compatible(runs, FACTS, "OUT")
    with pytest.raises(ValueError, match=r"holds run r0 measured with other settings \(methods: "):
        ledger.check_compatible(runs, {**FACTS, "methods": ["ml4h_reg"]}, "OUT")
