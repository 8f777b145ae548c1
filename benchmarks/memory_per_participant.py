"""Peak RSS of a worker for every input of the corpora, one input per run: is any input able to take a
worker past 2.5 GB?

``python benchmarks/memory_per_participant.py`` -> ``benchmarks/results/participant_memory.json``

The inputs: the bad-input corpus (``tests/bad_inputs.py``, what ``docs/reliability.md`` lists) and the
worst cases the byte budget is for (``lvmass.core.budget``), written here:

* ``worst_20x64mib``: the issue's zip, 20 short-axis slices of just under 64 MiB each (5700 x 5800
  16-bit pixels: each member under the per-member cap) that deflates to a few MB;
* ``near_budget_20x1500``: 20 slices of 1500 x 1500 pixels at 0.2 mm, just under the budget: the most
  memory an accepted participant may take;
* ``nifti_big_cine``: a 4-D NIfTI cine of 300 frames of 256 x 256 x 12 (470 MB of voxels, a few MB
  gzipped) whose frames around the ED one must be read (gzip's CRC) but never held;
* ``nifti_over_budget``: a NIfTI whose ED frame alone is beyond the budget.

Each input is the whole job as a user starts it, in a fresh process (``python -m beam_pipeline`` on the
FnApiRunner, whose DoFns run in that process: the worker), with ``--methods`` and models as given (the
default: InlineVF only; ``--job_arg=--methods=ml4h_seg,ml4h_reg,inlinevf`` adds TensorFlow and both models
to the baseline). The peak RSS is that process's high-water mark (``VmHWM``, read at its exit).
``--budget_mib 0`` runs with no budget (the code before it), for the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LIMIT_MB = 2500.0
# The job, with the budget set by the first argument (0: none) before the pipeline is imported.
# Its peak is /proc/self/status' VmHWM, printed at exit: ru_maxrss would also count the pages a forked
# child shared with this (large) parent before it exec'd.
RUNNER = """
import atexit, sys

def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("LVMASS_VMHWM_KB=" + line.split()[1] + "\\n")

atexit.register(_peak)
from lvmass.core import budget
mib = int(sys.argv[1])
if mib:
    budget.MAX_PARTICIPANT_BYTES = mib * budget.MIB
else:
    budget.MAX_PARTICIPANT_BYTES = 1 << 62
import lvmass.core.decode as decode
decode.MAX_PARTICIPANT_BYTES = budget.MAX_PARTICIPANT_BYTES
from beam_pipeline.pipeline import main
sys.exit(main(sys.argv[2:]))
"""


def big_stack_zip(path: Path, *, n_slices: int, rows: int, cols: int, spacing_mm: float) -> None:
    """A UK Biobank-like zip of ``n_slices`` single-frame slices of ``rows`` x ``cols`` pixels, written one
    member at a time (the generator never holds the whole zip)."""
    from tests.dicom_factory import StackGeometry, stack_frame

    g = StackGeometry(rows=rows, cols=cols, pixel_spacing_mm=(spacing_mm, spacing_mm))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for k in range(n_slices):
            pixels = np.full((rows, cols), 1000 + 10 * k, dtype=np.uint16)
            archive.writestr(f"slice{k:02d}.dcm", stack_frame(g, k, pixels=pixels))


def nifti_cine(path: Path, *, shape: tuple[int, int, int, int]) -> None:
    """A gzipped 4-D NIfTI cine of ``shape`` (x, y, slices, frames), int16, written frame by frame."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms((1.8, 1.8, 10.0, 30.0))
    header.set_xyzt_units("mm", "msec")
    affine = np.diag([1.8, 1.8, 10.0, 1.0])
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    x, y, z, t = shape
    frame = np.zeros((x, y, z), dtype=np.int16)
    frame[x // 4: 3 * x // 4, y // 4: 3 * y // 4, :] = 500
    frame[x // 3: 2 * x // 3, y // 3: 2 * y // 3, :] = 200
    data = frame.tobytes(order="F")
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header.binaryblock + b"\0" * (352 - len(header.binaryblock)))
        for _ in range(t):
            out.write(data)


def build_inputs(folder: Path, *, worst_cases: bool) -> list[Path]:
    """The corpus and the worst cases, one input each (a file, or a folder of DICOMs)."""
    from tests.bad_inputs import build_corpus

    corpus = folder / "corpus"
    corpus.mkdir()
    build_corpus(corpus)
    inputs = sorted(corpus.iterdir())
    if worst_cases:
        extra = folder / "worst"
        extra.mkdir()
        big_stack_zip(extra / "4000001_20209_2_0.zip", n_slices=20, rows=5700, cols=5800, spacing_mm=0.05)
        big_stack_zip(extra / "4000002_20209_2_0.zip", n_slices=20, rows=1500, cols=1500, spacing_mm=0.2)
        (extra / "4000003").mkdir()
        nifti_cine(extra / "4000003" / "sa.nii.gz", shape=(256, 256, 12, 300))
        (extra / "4000004").mkdir()
        nifti_cine(extra / "4000004" / "sa.nii.gz", shape=(1800, 1800, 12, 2))
        inputs += [extra / "4000001_20209_2_0.zip", extra / "4000002_20209_2_0.zip",
                   extra / "4000003" / "sa.nii.gz", extra / "4000004" / "sa.nii.gz"]
    return inputs


CASE_NAMES = {"4000001_20209_2_0.zip": "worst_20x64mib", "4000002_20209_2_0.zip": "near_budget_20x1500",
              "4000003/sa.nii.gz": "nifti_big_cine", "4000004/sa.nii.gz": "nifti_over_budget"}


def _summary(stdout: str) -> dict | None:
    start = stdout.find("{")
    try:
        return json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


def run_one(path: Path, out: Path, budget_mib: int, job_args: list[str]) -> dict:
    """Run the job on one input in a fresh process: its peak RSS (``os.wait4``) and outcome."""
    argv = [sys.executable, "-c", RUNNER, str(budget_mib), f"--input={path}", f"--output={out}",
            "--runner=FnApiRunner", "--progress_every_s=0", "--log_level=WARNING", *job_args]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=so, stderr=se,
                                env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
        _, status, _ = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    summary = _summary(stdout)
    marks = [int(line.split("=", 1)[1]) for line in stderr.splitlines()
             if line.startswith("LVMASS_VMHWM_KB=")]
    if not marks:
        raise RuntimeError(f"{path}: the job printed no peak (exit {proc.returncode}): {stderr[-2000:]}")
    return {"exit_code": proc.returncode, "peak_rss_mb": round(marks[-1] / 1024, 1),
            "wall_s": round(time.perf_counter() - started, 1),
            "outcome": _outcome(out, summary),
            "stderr_tail": "" if proc.returncode in (0, 1) else stderr[-600:]}


def _outcome(out: Path, summary: dict | None) -> str:
    """``written`` or the dead letter's stage and message (read back from the committed errors file)."""
    if summary is None:
        return "no summary"
    if summary.get("participants_written"):
        return "written"
    import pyarrow.parquet as pq

    from analysis import io as aio

    messages = [m for f in aio.errors_files(str(out)) for m in pq.read_table(f).to_pydict()["message"]]
    return "dead letter: " + (messages[0][:300] if messages else "?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "participant_memory.json")
    parser.add_argument("--budget_mib", type=int, default=None,
                        help="the per-participant budget (default: lvmass.core.budget's); 0: none")
    parser.add_argument("--no_worst_cases", action="store_true", help="the corpus only")
    parser.add_argument("--only", nargs="*", default=None, help="input names to run (default: all)")
    parser.add_argument("--job_arg", action="append", default=[],
                        help="an argument for every job (default --methods=inlinevf)")
    args = parser.parse_args(argv)
    from lvmass.core import budget

    default_mib = budget.MAX_PARTICIPANT_BYTES // budget.MIB
    budget_mib = args.budget_mib if args.budget_mib is not None else default_mib
    job_args = args.job_arg or ["--methods=inlinevf"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lvmass-memory-") as tmp:
        root = Path(tmp)
        inputs = build_inputs(root, worst_cases=not args.no_worst_cases)
        for k, path in enumerate(inputs):
            relative = "/".join(path.parts[-2:]) if path.name == "sa.nii.gz" else path.name
            name = CASE_NAMES.get(relative, path.name)
            if args.only and name not in args.only:
                continue
            result = run_one(path, root / f"out{k}", budget_mib, job_args)
            rows.append({"input": name, **result})
            print(f"{name}: {result['peak_rss_mb']:.0f} MB, {result['outcome'][:120]}", flush=True)
    peak = max(rows, key=lambda r: r["peak_rss_mb"])
    record = {
        "what": "peak RSS of the worker (the FnApiRunner job's process) per input, one input per run",
        "command": "python benchmarks/memory_per_participant.py " + shlex.join(argv or sys.argv[1:]),
        "budget_mib": budget_mib or None,
        "job_args": job_args,
        "limit_mb": LIMIT_MB,
        "max_peak_rss_mb": peak["peak_rss_mb"],
        "max_peak_input": peak["input"],
        "all_under_limit": all(r["peak_rss_mb"] <= LIMIT_MB for r in rows),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_1min": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d"),
        "inputs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"max {peak['peak_rss_mb']:.0f} MB ({peak['input']}); all under {LIMIT_MB:.0f} MB: "
          f"{record['all_under_limit']} -> {args.out}")
    return 0 if record["all_under_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
