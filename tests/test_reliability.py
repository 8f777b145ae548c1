"""One bad input never costs a run, a wrong number never passes QC, and the output says when it is
complete: each defect found by trying ~60 kinds of broken inputs, reproduced through the pipeline.

Every test runs the real pipeline (FnApiRunner) on small DICOM zips written with pydicom and reads the
Parquet back with pyarrow; the numbers in the docstrings are the issue's."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pydicom
import pytest

from beam_pipeline.inference import SavedModelHandler
from beam_pipeline.pipeline import (
    EXIT_BAD_OPTIONS,
    EXIT_BAD_OUTPUT,
    EXIT_NO_INPUTS,
    EXIT_OK,
    main,
    run,
)
from lvmass.core import contracts
from lvmass.core.model_input import ModelInput
from lvmass.core.schema import SUCCESS_FILENAME, SUMMARY_FILENAME
from lvmass.storage.models import bundled_model_dir
from tests.dicom_factory import StackGeometry, ukbb_participant_zip

pytestmark = pytest.mark.slow
RUNNER = "--runner=FnApiRunner"


def write_zip(folder: Path, eid: int, *, name: str | None = None, seed: int | None = None, **kw) -> Path:
    fz = ukbb_participant_zip(eid, n_slices=7, n_phases=2, seed=eid % 1000 if seed is None else seed, **kw)
    path = folder / (name or fz.name)
    path.write_bytes(fz.data)
    return path


def write_synthetic(folder: Path, eid: int) -> Path:
    """A realistic participant (``lvmass.synth``, a few phases): what a real heart acquisition looks like."""
    from lvmass.synth import render_participant
    from lvmass.synth.config import SynthConfig

    data = render_participant(eid, eid % 997, config=SynthConfig(fidelity="lite"))
    path = folder / data.zip_name
    path.write_bytes(data.zip_bytes)
    return path


def mutate_dicoms(path: Path, change) -> None:
    """Rewrite every DICOM member of a zip with ``change(dataset)`` applied (pydicom, in memory)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            if name.endswith(".dcm"):
                ds = pydicom.dcmread(io.BytesIO(data))
                change(ds)
                buffer = io.BytesIO()
                ds.save_as(buffer)
                data = buffer.getvalue()
            archive.writestr(name, data)
    path.write_bytes(out.getvalue())


def results(out: Path):
    return pads.dataset(str(out / "lvmass"), format="parquet", partitioning="hive").to_table().to_pandas()


def errors(out: Path):
    return pads.dataset(str(out / "errors"), format="parquet").to_table().to_pandas()


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


def test_an_eid_beyond_int64_is_a_read_dead_letter_and_the_others_are_written(inputs, tmp_path):
    """Defect 1: '99999999999999999999_20209_2_0.zip' crashed the Parquet writer (OverflowError)."""
    write_zip(inputs, 1000001)
    write_zip(inputs, 1000002, name="99999999999999999999_20209_2_0.zip")
    out = tmp_path / "out"
    summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf", RUNNER])
    assert summary["reconciled"] and summary["participants_written"] == 1
    assert set(results(out)["eid"]) == {1000001}
    (error,) = errors(out).itertuples()
    assert error.stage == "read" and "outside 0..9223372036854775807" in error.message
    assert error.eid is None or np.isnan(error.eid)


def test_abc_eid_is_a_read_dead_letter_not_instance_0(inputs, tmp_path):
    """Defect 11: 'abc_20209_2_0.zip' took its instance as 0."""
    write_zip(inputs, 1000003, name="abc_20209_2_0.zip")
    out = tmp_path / "out"
    summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf", RUNNER])
    assert summary["participants_failed"] == 1 and summary["reconciled"]
    assert errors(out)["stage"].tolist() == ["read"]
    assert "eid 'abc' is not a number" in errors(out)["message"][0]


def _noise(ds):
    rng = np.random.default_rng(int(ds.InstanceNumber))
    ds.PixelData = rng.integers(0, 4096, (ds.Rows, ds.Columns), dtype=np.uint16).tobytes()


def _negative_spacing(ds):
    ds.PixelSpacing = [-1.8, -1.8]


def test_nonsense_never_gives_a_qc_passing_mass_from_any_method(inputs, tmp_path):
    """Defect 2: ML4H_reg wrote 89.9 g (noise), 86.8 g (8 x 8 images), 124.2 g (negative PixelSpacing)
    with qc_pass true, and those rows entered the 90th-percentile thresholds."""
    good = write_synthetic(inputs, 1000010)
    noise = write_synthetic(inputs, 1000011)
    mutate_dicoms(noise, _noise)
    write_zip(inputs, 1000012, geometry=StackGeometry(rows=8, cols=8))
    negative = write_synthetic(inputs, 1000013)
    mutate_dicoms(negative, _negative_spacing)
    out = tmp_path / "out"
    summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=ml4h_reg,inlinevf", RUNNER])
    assert summary["reconciled"]
    rows = results(out)
    bad = rows[rows["eid"].isin([1000011, 1000012, 1000013])]
    assert not bad["qc_pass"].any()
    flagged = bad[bad["method"] == contracts.METHOD_ML4H_REG]
    for flags in flagged["qc_flags"]:
        assert contracts.QC_IMAGE_IMPLAUSIBLE in flags
    # negative PixelSpacing never becomes a tensor: a dead letter naming the reason
    negative_errors = errors(out)
    negative_errors = negative_errors[negative_errors["eid"] == 1000013]
    if len(negative_errors):
        assert "PixelSpacing" in negative_errors["message"].iloc[0]
    else:
        assert 1000013 not in set(rows["eid"]) or not rows[rows["eid"] == 1000013]["qc_pass"].any()
    good_rows = rows[rows["eid"] == 1000010]
    assert not any(contracts.QC_IMAGE_IMPLAUSIBLE in flags for flags in good_rows["qc_flags"]), good


def test_the_summary_and_the_marker_come_after_every_file(inputs, tmp_path):
    """Defect 3: summary.json said reconciled before the Parquet files existed. Now the run's files are
    read back before it is committed (its manifest lists them with their rows), and _SUCCESS, the
    folder's commit record, names derived files that all exist and hold the rows it says; summary.json
    is its copy, written after it."""
    write_zip(inputs, 1000020)
    out = tmp_path / "out"
    summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf", RUNNER])
    assert summary["files_written"]
    for path in summary["files_written"]:
        assert (out / path).is_file(), path
    assert any(p.startswith("lvmass/method=inlinevf/") for p in summary["files_written"])
    assert any(p.startswith("errors/") for p in summary["files_written"])
    marker = json.loads((out / SUCCESS_FILENAME).read_text())
    assert marker["latest_run"] == summary["run"]["run_id"] and marker["reconciled"] is True
    for entry in marker["files"]:
        assert pads.dataset(str(out / entry["path"])).count_rows() == entry["rows"]
    assert json.loads((out / SUMMARY_FILENAME).read_text()) == marker["summary"]
    assert (out / SUCCESS_FILENAME).stat().st_mtime_ns <= (out / SUMMARY_FILENAME).stat().st_mtime_ns
    (manifest,) = (out / "_ledger" / "runs").glob("*.json")
    assert json.loads(manifest.read_text())["run_id"] == summary["run"]["run_id"]


def test_bad_phenotype_rows_are_dead_letters_and_the_run_goes_on(inputs, tmp_path):
    """Defect 6: one bad row (sex 'X', a duplicated eid) aborted the whole run."""
    for eid in (1000030, 1000031, 1000032):
        write_zip(inputs, eid)
    phenotypes = tmp_path / "pheno.csv"
    phenotypes.write_text("eid,sex,age,height_cm,weight_kg\n1000030,F,60,165,60\n1000031,X,61,170,70\n"
                          "1000032,M,62,180,80\n1000032,M,62,181,80\n")
    out = tmp_path / "out"
    summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf",
                   f"--phenotypes={phenotypes}", RUNNER])
    assert summary["reconciled"] and summary["participants_written"] == 3
    assert summary["phenotype_rows_rejected"] == 2
    rejected = errors(out)
    rejected = rejected[rejected["stage"] == "phenotypes"].sort_values("eid")
    assert rejected["eid"].tolist() == [1000031, 1000032]
    assert "sex 'X'" in rejected["message"].iloc[0] and "more than once" in rejected["message"].iloc[1]
    rows = results(out).set_index(["eid", "method"])
    assert rows.loc[(1000030, "inlinevf"), "sex"] == "female"
    assert contracts.QC_NO_PHENOTYPE in rows.loc[(1000031, "inlinevf"), "qc_flags"]


def test_an_unreadable_phenotype_file_stops_the_run_before_any_work(inputs, tmp_path, capsys):
    write_zip(inputs, 1000040)
    phenotypes = tmp_path / "pheno.csv"
    phenotypes.write_text("eid;sex;age\n1000040;F;60\n")
    out = tmp_path / "out"
    code = main([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf",
                 f"--phenotypes={phenotypes}", RUNNER])
    assert code == EXIT_BAD_OPTIONS
    assert "looks semicolon-delimited" in capsys.readouterr().err
    assert not out.exists()


def test_the_same_participant_twice_is_written_once(tmp_path):
    """Defect 7: the same participant found twice (two folders) was written twice, silently."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first = write_zip(tmp_path / "a", 1000050)
    shutil.copy(first, tmp_path / "b" / first.name)
    write_zip(tmp_path / "b", 1000051)
    out = tmp_path / "out"
    summary = run([f"--input={tmp_path}/*/*.zip", f"--output={out}", "--methods=inlinevf", RUNNER])
    assert summary["reconciled"] and summary["inputs_matched"] == 3
    rows = results(out)
    assert len(rows[(rows["eid"] == 1000050) & (rows["method"] == "inlinevf")]) == 1
    (duplicate,) = errors(out).itertuples()
    assert duplicate.error_type == "DuplicateInput" and duplicate.source_uri.endswith(f"b/{first.name}")
    assert f"a/{first.name}" in duplicate.message


def test_a_non_empty_output_is_refused_replaced_or_extended(inputs, tmp_path, capsys):
    """Defect 8: a rerun with other --methods left old method partitions beside the new ones. Also the
    incremental run over a growing input: no duplicated rows."""
    write_zip(inputs, 1000060)
    write_zip(inputs, 1000061)
    out = tmp_path / "out"
    assert run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf", RUNNER])["reconciled"]
    # refused, with its own exit code and one line
    code = main([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf", RUNNER])
    assert code == EXIT_BAD_OUTPUT and "already holds files" in capsys.readouterr().err
    # a new imaging release: one more participant; only it is processed
    write_zip(inputs, 1000062)
    summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf", "--skip_existing",
                   RUNNER])
    assert summary["run"]["inputs_skipped_existing"] == 2 and summary["run"]["participants_written"] == 1
    assert summary["participants_written"] == 3 and summary["reconciled"]  # the folder: every run
    rows = results(out)
    counts = rows.groupby(["eid", "method"]).size()
    assert set(counts) == {1} and set(rows["eid"]) == {1000060, 1000061, 1000062}
    # other methods into the same output with --skip_existing: refused (readers would mix runs)
    with pytest.raises(Exception, match="measured with other settings"):
        run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=ml4h_reg", "--skip_existing", RUNNER])
    # --overwrite: the old partitions are gone
    summary = run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=ml4h_reg", "--overwrite", RUNNER])
    assert summary["reconciled"]
    assert sorted(p.name for p in (out / "lvmass").iterdir()) == ["method=ml4h_reg"]


def test_inputs_and_outputs_that_cannot_work_get_one_line_and_their_own_exit_code(inputs, tmp_path, capsys):
    """Defect 9: a glob matching nothing exited 0; a path without a wildcard failed with
    'ValueError: ALLOW_IF_WILDCARD'; an unwritable output was a traceback."""
    out = tmp_path / "out"
    code = main([f"--input={inputs}/*.zip", f"--output={out}", "--methods=inlinevf", RUNNER])
    assert code == EXIT_NO_INPUTS
    assert "matches no participant zip or folder" in capsys.readouterr().err
    zip_path = write_zip(inputs, 1000070)
    assert main([f"--input={zip_path}", f"--output={out}", "--methods=inlinevf", RUNNER]) == EXIT_OK
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    code = main([f"--input={zip_path}", f"--output={blocked}", "--methods=inlinevf", RUNNER])
    assert code == EXIT_BAD_OUTPUT and "is not writable" in capsys.readouterr().err


def test_ml4h_reg_is_bit_identical_whatever_the_batch():
    """Defect 10: two identical runs differed in ML4H_reg's last digits, because a participant's result
    depended on the batch Beam put it in."""
    handler = SavedModelHandler(bundled_model_dir(contracts.MODEL_KIND_REG), kind=contracts.MODEL_KIND_REG)
    model = handler.load_model()
    rng = np.random.default_rng(5)
    examples = [ModelInput(rng.normal(size=contracts.TENSOR_SHAPE).astype(np.float32),
                           np.array([1.86, 1.86, 10.0], dtype=np.float32)) for _ in range(3)]
    alone = [handler.run_inference([e], model)[0].inference for e in examples]
    together = [r.inference for r in handler.run_inference(examples, model)]
    reversed_ = [r.inference for r in handler.run_inference(examples[::-1], model)][::-1]
    assert alone == together == reversed_


def test_two_identical_runs_write_identical_rows(inputs, tmp_path):
    write_zip(inputs, 1000080)
    write_zip(inputs, 1000081)
    frames = []
    for name in ("a", "b"):
        out = tmp_path / name
        run([f"--input={inputs}/*.zip", f"--output={out}", "--methods=ml4h_reg,inlinevf", RUNNER,
             "--batch_size=2"])
        frame = results(out).sort_values(["eid", "method"]).reset_index(drop=True)
        frames.append(frame.drop(columns=["pipeline_version"]))
    assert frames[0].to_json() == frames[1].to_json()


def test_readers_find_the_marker_documented():
    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    assert SUCCESS_FILENAME in doc and os.sep not in SUCCESS_FILENAME
