"""Exactly once, whatever happens: a run killed at a stage boundary or a file finalisation, then resumed.

Each case runs ``lvmass run`` in a process of its own (``tests/fault_injection.py``) and kills it, with
SIGTERM or SIGKILL, just before the point named: a pipeline stage, a Beam sink moving its temp file into
place, the run's commit, each atomic write of the ledger (the run's manifest, each derived file,
``_SUCCESS``, its copies), the clean-up. Then it checks that

* the killed folder reads as its last committed state: no commit at all, or the previous run's, or (once
  ``_SUCCESS`` is written) the new one; the readers (``analysis.io``) see exactly that;
* the same command with ``--skip_existing`` resumes it, and then every input is accounted for once, no
  row is lost or duplicated, nothing the killed run left remains, and the derived table, the dead
  letters and ``summary.json`` equal an uninterrupted one-shot run's, byte for byte.

One-shot runs are killed at every kind of point, incremental runs (a second wave into a folder holding a
committed first one) at the points where the two differ. Both signals are used; every point with both,
repeated and at random, is ``benchmarks/soak_faults.py``'s job (results in
``benchmarks/results/fault_soak.json``). InlineVF only and small zips keep each case a few seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import io as aio
from beam_pipeline.pipeline import run
from lvmass.core.schema import RUNS_DIRNAME, SUMMARY_FILENAME
from lvmass.core.summary import summary_json
from lvmass.storage import ledger
from tests.dicom_factory import ukbb_participant_zip
from tests.fault_injection import POINTS, SIGNALS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
RUNNER = "--runner=FnApiRunner"
WAVE_1 = (1000001, 1000002)
WAVE_2 = (1000003, 1000004)
BROKEN = "1000005_20209_2_0.zip"  # wave 2: a dead letter (not a zip), so errors are committed too


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The inputs, a phenotype file, an uninterrupted one-shot run over all of them (the reference) and a
    folder holding the first wave only (the base of every incremental case)."""
    root = tmp_path_factory.mktemp("faults")
    inputs = root / "in"
    inputs.mkdir()
    for eid in (*WAVE_1, *WAVE_2):
        fz = ukbb_participant_zip(eid, n_slices=6, n_phases=2, seed=eid % 1000)
        (inputs / fz.name).write_bytes(fz.data)
    (inputs / BROKEN).write_bytes(b"not a zip")
    phenotypes = root / "pheno.csv"
    phenotypes.write_text("eid,sex,age,height_cm,weight_kg,manual_lv_mass_g\n1000001,F,60,165,60,85\n"
                          "1000002,M,61,180,80,110\n1000003,F,62,160,55,80\n1000004,M,63,175,75,\n"
                          "1000006,X,64,170,70,\n")

    def argv(output: Path, pattern: str = "*.zip") -> list[str]:
        return [f"--input={inputs}/{pattern}", f"--output={output}", "--methods=inlinevf",
                f"--phenotypes={phenotypes}", "--min_calibration_n=1", RUNNER]

    reference = root / "reference"
    run(argv(reference))
    wave_1 = root / "wave1"
    run(argv(wave_1, "100000[12]_*.zip"))
    return {"root": root, "argv": argv, "reference": reference, "wave_1": wave_1,
            "inputs": sorted(str(p) for p in inputs.iterdir())}


def kill(point: str, nth: int, sig: str, argv: list[str]) -> None:
    """Run ``lvmass run argv`` in a process of its own, killed with ``sig`` at the ``nth`` ``point``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tests.fault_injection", point, str(nth), sig, "--", *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -SIGNALS[sig], (
        f"{point} #{nth} was not reached (exit {done.returncode}):\n{done.stderr[-3000:]}")


def derived_state(output: Path) -> dict[str, bytes]:
    """What a reader reads: the files the commit names and ``summary.json`` (as ``_SUCCESS`` holds it)."""
    commit = ledger.read_commit(str(output))
    assert commit is not None, f"{output}: no commit"
    state = {f.path: (output / f.path).read_bytes() for f in commit.files}
    state[SUMMARY_FILENAME] = summary_json(commit.summary).encode()
    return state


def assert_reads_as_committed(output: Path, allowed: list[dict[str, bytes] | None]) -> None:
    """The killed folder reads as one of the committed states ``allowed`` (None: nothing committed), and
    ``analysis.io`` reads exactly its rows."""
    commit = ledger.read_commit(str(output))
    if commit is None:
        assert None in allowed, f"{output}: the commit is gone"
        with pytest.raises(aio.InputError):  # "no committed run", or nothing there at all
            aio.read_results(str(output))
        return
    state = derived_state(output)
    assert state in [a for a in allowed if a is not None], f"{output}: a state that was never committed"
    rows = sum(f.rows for f in commit.files_of(ledger.KIND_RESULTS))
    if rows:
        assert len(aio.read_results(str(output))) == rows


def assert_exactly_once(output: Path, corpus) -> None:
    """Every input once, each row once, nothing left behind, and the reference's bytes."""
    runs = ledger.committed_runs(str(output))
    done = [entry.uri for r in runs for entry in r.inputs if entry.outcome in ledger.DONE_OUTCOMES]
    assert sorted(done) == corpus["inputs"], "an input lost or processed twice"
    assert ledger.pending_runs(str(output)) == []
    assert derived_state(output) == derived_state(corpus["reference"])
    assert (output / SUMMARY_FILENAME).read_bytes() == (corpus["reference"] / SUMMARY_FILENAME).read_bytes()
    results = aio.read_results(str(output))
    assert not results.duplicated(["participant_id", "instance", "method"]).any()
    committed = {r.run_id for r in runs}
    assert {p.name for p in (output / RUNS_DIRNAME).iterdir()} == committed
    assert not (output / ledger.TEMP_DIRNAME).exists()
    named = {f.path for f in ledger.read_commit(str(output)).files}
    for folder in ("lvmass", "errors"):
        on_disk = {p.relative_to(output).as_posix() for p in (output / folder).rglob("*") if p.is_file()}
        assert on_disk == {n for n in named if n.startswith(f"{folder}/")}


# (point, nth call, signal): every stage boundary and every file finalisation of a one-shot run. The
# ledger's atomic writes of an InlineVF run, in order: 1 the run's manifest, 2-3 the two methods' derived
# files, 4 the dead letters, 5 _SUCCESS, 6 summary.json, 7-8 the BigQuery manifests.
ONE_SHOT = [
    ("read", 1, "KILL"), ("decode", 1, "TERM"), ("measure", 2, "KILL"), ("write", 1, "TERM"),
    ("sink_rename", 1, "TERM"), ("sink_rename", 2, "KILL"), ("commit", 1, "TERM"),
    ("ledger_write", 1, "KILL"), ("ledger_write", 2, "TERM"), ("ledger_write", 4, "KILL"),
    ("ledger_write", 5, "TERM"), ("ledger_write", 6, "KILL"),
]
# A second wave into a folder holding a committed first one: its commit must survive every kill until
# the new _SUCCESS replaces it, and the resume must not redo the first wave.
INCREMENTAL = [
    ("measure", 1, "TERM"), ("sink_rename", 2, "TERM"), ("finalise", 1, "KILL"),
    ("ledger_write", 3, "KILL"), ("ledger_write", 5, "KILL"), ("ledger_write", 7, "TERM"),
    ("garbage", 1, "TERM"),
]


@pytest.mark.parametrize(("point", "nth", "sig"), ONE_SHOT, ids=[f"{p}{n}-{s}" for p, n, s in ONE_SHOT])
def test_a_killed_one_shot_run_resumes_exactly_once(corpus, point, nth, sig):
    output = corpus["root"] / f"one-{point}{nth}-{sig}"
    kill(point, nth, sig, corpus["argv"](output))
    assert_reads_as_committed(output, [None, derived_state(corpus["reference"])])
    summary = run([*corpus["argv"](output), "--skip_existing"])
    assert summary["reconciled"]
    assert_exactly_once(output, corpus)


@pytest.mark.parametrize(("point", "nth", "sig"), INCREMENTAL,
                         ids=[f"{p}{n}-{s}" for p, n, s in INCREMENTAL])
def test_a_killed_incremental_run_resumes_exactly_once(corpus, point, nth, sig):
    output = corpus["root"] / f"inc-{point}{nth}-{sig}"
    shutil.copytree(corpus["wave_1"], output)
    before = derived_state(output)
    kill(point, nth, sig, [*corpus["argv"](output), "--skip_existing"])
    assert_reads_as_committed(output, [before, derived_state(corpus["reference"])])
    summary = run([*corpus["argv"](output), "--skip_existing"])
    assert summary["reconciled"]
    assert summary["run"]["inputs_skipped_existing"] >= len(WAVE_1)
    assert_exactly_once(output, corpus)


def test_an_uninterrupted_second_wave_equals_the_one_shot_run(corpus):
    """The headline: cohort values derived from every committed measurement, not per wave."""
    output = corpus["root"] / "inc-uninterrupted"
    shutil.copytree(corpus["wave_1"], output)
    summary = run([*corpus["argv"](output), "--skip_existing"])
    assert summary["run"]["inputs_skipped_existing"] == len(WAVE_1)
    assert summary["run"]["inputs_matched"] == len(corpus["inputs"]) - len(WAVE_1)
    assert_exactly_once(output, corpus)


def test_every_point_is_documented():
    doc = (REPO / "docs" / "reliability.md").read_text()
    for name in POINTS:
        assert f"`{name}`" in doc, name
    assert set(SIGNALS) == {"TERM", "KILL"} and SIGNALS["KILL"] == signal.SIGKILL
