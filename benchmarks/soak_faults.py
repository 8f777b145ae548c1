"""A randomised soak of the exactly-once guarantee: runs killed anywhere, any number of times, resumed.

``python benchmarks/soak_faults.py --rounds 20 --seed 1`` -> ``benchmarks/results/fault_soak.json``

Each round draws a scenario: a one-shot run, or an incremental one (the inputs arrive in 2 or 3 waves, as
imaging releases do, each wave a ``--skip_existing`` run into the same folder). Every run of the round is
killed with a probability of 0.7 (SIGTERM or SIGKILL, at a point and call drawn from
``tests/fault_injection.py``'s: every stage boundary and every file finalisation), in a process of its
own; a killed run is resumed with ``--skip_existing``, and the resume may be killed again (up to three
kills a run). After the last wave, the folder must hold every input once (the ledger's manifests), no row
twice (``analysis.io``), nothing a killed run left (no uncommitted run folder, no temp file, no derived
file the commit does not name), and its derived table, dead letters and summary must equal, byte for
byte, those of an uninterrupted one-shot run over the same inputs (run last, into another folder). A
kill whose point the run never reached (it finished first) is recorded as such.

``tests/test_fault_injection.py`` runs a fixed set of these cases in ``make test``; this is the long run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KILL_PROBABILITY = 0.7
MAX_KILLS_PER_RUN = 3
# The calls a point can be reached at, per run (a few participants, InlineVF only): drawn uniformly.
NTH = {"read": 3, "decode": 3, "measure": 3, "write": 3, "sink_rename": 2, "commit": 1, "finalise": 1,
       "ledger_write": 8, "garbage": 2}


def make_inputs(pool: Path, n_good: int) -> list[str]:
    """``n_good`` small participant zips, a broken one, a duplicate folder-named-like-a-zip case."""
    from tests.dicom_factory import ukbb_participant_zip

    pool.mkdir(parents=True)
    names = []
    for k in range(n_good):
        eid = 5000001 + k
        fz = ukbb_participant_zip(eid, n_slices=6, n_phases=2, seed=eid % 1000)
        (pool / fz.name).write_bytes(fz.data)
        names.append(fz.name)
    (pool / "5000900_20209_2_0.zip").write_bytes(b"not a zip")
    names.append("5000900_20209_2_0.zip")
    return sorted(names)


def phenotypes(path: Path, n_good: int) -> None:
    lines = ["eid,sex,age,height_cm,weight_kg,manual_lv_mass_g"]
    for k in range(n_good):
        manual = f"{85 + 3 * k}" if k % 3 else ""
        lines.append(f"{5000001 + k},{'F' if k % 2 else 'M'},{50 + k},{160 + k},{60 + k},{manual}")
    lines.append("5000999,X,1,1,1,")  # a rejected row: one dead letter however many runs
    path.write_text("\n".join(lines) + "\n")


def job_argv(inputs: Path, output: Path, pheno: Path) -> list[str]:
    return [f"--input={inputs}/*.zip", f"--output={output}", "--methods=inlinevf", f"--phenotypes={pheno}",
            "--min_calibration_n=1", "--runner=FnApiRunner", "--progress_every_s=0", "--log_level=ERROR"]


def run_job(argv: list[str], kill: tuple[str, int, str] | None) -> int:
    """One run in a process of its own, killed at ``kill`` (point, nth, signal) when given; its exit code
    (negative: the signal that ended it)."""
    command = ([sys.executable, "-m", "tests.fault_injection", kill[0], str(kill[1]), kill[2], "--", *argv]
               if kill else [sys.executable, "-m", "beam_pipeline", *argv])
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, -15, -9):
        raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.returncode


def committed_state(output: Path) -> dict[str, bytes]:
    from lvmass.core.summary import summary_json
    from lvmass.storage import ledger

    commit = ledger.read_commit(str(output))
    if commit is None:
        raise AssertionError(f"{output}: no commit")
    state = {f.path: (output / f.path).read_bytes() for f in commit.files}
    state["summary.json"] = summary_json(commit.summary).encode()
    return state


def check(output: Path, reference: Path, inputs: list[str]) -> list[str]:
    """What is wrong with ``output`` (empty: exactly once, and equal to ``reference``)."""
    from analysis import io as aio
    from lvmass.storage import ledger

    problems = []
    runs = ledger.committed_runs(str(output))
    done = sorted(Path(e.uri).name for r in runs for e in r.inputs if e.outcome in ledger.DONE_OUTCOMES)
    if done != inputs:
        problems.append(f"inputs accounted for {done}, expected each of {inputs} once")
    if ledger.pending_runs(str(output)):
        problems.append("committed runs not finalised")
    if committed_state(output) != committed_state(reference):
        problems.append("derived files or summary differ from the uninterrupted run")
    if (output / "summary.json").read_bytes() != (reference / "summary.json").read_bytes():
        problems.append("summary.json differs")
    if aio.read_results(str(output)).duplicated(["participant_id", "instance", "method"]).any():
        problems.append("a row twice")
    if {p.name for p in (output / "_runs").iterdir()} != {r.run_id for r in runs}:
        problems.append("an uncommitted run's folder remains")
    if (output / ledger.TEMP_DIRNAME).exists():
        problems.append("temp files remain")
    named = {f.path for f in ledger.read_commit(str(output)).files}
    stray = [p.relative_to(output).as_posix() for folder in ("lvmass", "errors")
             for p in (output / folder).rglob("*") if p.is_file()
             and p.relative_to(output).as_posix() not in named]
    if stray:
        problems.append(f"files no commit names: {stray}")
    return problems


def one_round(k: int, rng: random.Random, root: Path, pool: Path, names: list[str], pheno: Path) -> dict:
    from tests.fault_injection import POINTS

    base = root / f"round{k:03d}"
    inputs, output, reference = base / "in", base / "out", base / "ref"
    inputs.mkdir(parents=True)
    n_waves = rng.choice([1, 2, 3])
    order = names[:]
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, len(order)), n_waves - 1))
    waves = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    kills = []
    started = time.perf_counter()
    for w, wave in enumerate(waves):
        for name in wave:
            shutil.copy(pool / name, inputs / name)
        argv = job_argv(inputs, output, pheno) + (["--skip_existing"] if w else [])
        for attempt in range(MAX_KILLS_PER_RUN + 1):
            kill = None
            if attempt < MAX_KILLS_PER_RUN and rng.random() < KILL_PROBABILITY:
                point = rng.choice(sorted(POINTS))
                kill = (point, rng.randint(1, NTH[point]), rng.choice(["TERM", "KILL"]))
            code = run_job(argv if attempt == 0 else [*job_argv(inputs, output, pheno), "--skip_existing"],
                           kill)
            if kill:
                kills.append({"wave": w, "point": kill[0], "nth": kill[1], "signal": kill[2],
                              "reached": code < 0})
            if code == 0:
                break
    run_job(job_argv(inputs, reference, pheno), None)
    problems = check(output, reference, sorted(names))
    return {"round": k, "waves": [len(w) for w in waves], "kills": kills, "problems": problems,
            "wall_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--participants", type=int, default=5, help="good participant zips (plus one broken)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fault_soak.json")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="lvmass-soak-") as tmp:
        root = Path(tmp)
        names = make_inputs(root / "pool", args.participants)
        pheno = root / "pheno.csv"
        phenotypes(pheno, args.participants)
        for k in range(args.rounds):
            result = one_round(k, rng, root, root / "pool", names, pheno)
            rounds.append(result)
            reached = sum(kill["reached"] for kill in result["kills"])
            verdict = "OK" if not result["problems"] else result["problems"]
            print(f"round {k}: waves {result['waves']}, {reached} kills, {verdict} ({result['wall_s']} s)",
                  flush=True)
    kills = [kill for r in rounds for kill in r["kills"]]
    reached = Counter(f"{k['point']}/{k['signal']}" for k in kills if k["reached"])
    record = {
        "what": "runs killed at random points (SIGTERM/SIGKILL), resumed with --skip_existing, checked "
                "exactly once and byte-equal to an uninterrupted one-shot run",
        "command": "python benchmarks/soak_faults.py " + shlex.join(argv or sys.argv[1:]),
        "rounds": len(rounds),
        "rounds_failed": sum(bool(r["problems"]) for r in rounds),
        "kills_reached": sum(reached.values()),
        "kills_not_reached": sum(not k["reached"] for k in kills),
        "kills_reached_by_point_and_signal": dict(sorted(reached.items())),
        "incremental_rounds": sum(len(r["waves"]) > 1 for r in rounds),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_1min": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d"),
        "rounds_detail": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['rounds']} rounds, {record['kills_reached']} kills reached, {record['rounds_failed']} "
          f"failed -> {args.out}")
    return 0 if record["rounds_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
