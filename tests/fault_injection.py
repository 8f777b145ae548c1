"""Kill an ``lvmass run`` at a chosen point, as a preempted worker or a cancelled job would.

Run as a script, in a process of its own (the kill is real: the process is gone, nothing is flushed or
cleaned up)::

    python -m tests.fault_injection POINT NTH SIGNAL -- <lvmass run arguments>

The run goes as usual until the ``NTH`` time it reaches ``POINT``, and there sends itself ``SIGNAL``
(``TERM`` or ``KILL``). Points (:data:`POINTS`) are the stage boundaries of the pipeline and every file
finalisation: the Beam sinks' renames of their temp files, and each atomic write of the ledger (the
run's manifest, the derived files, ``_SUCCESS``, its copies). The wrapped functions are patched in this
process only, before the pipeline is built; FnApiRunner runs every DoFn in it.

``tests/test_fault_injection.py`` (fast cases, in ``make test``) and ``benchmarks/soak_faults.py`` (every
point, both signals, randomised, repeated) use it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


@dataclass(frozen=True)
class FaultPoint:
    """Where to kill: the ``target`` (``module:attribute``) is wrapped, and the process is killed just
    before its ``nth`` call (``only_under_output``: count only calls whose last argument is a path inside
    the run's ``--output``)."""

    target: str
    what: str
    only_under_output: bool = False


POINTS: dict[str, FaultPoint] = {
    "read": FaultPoint("beam_pipeline.transforms.inputs:decode_file",
                       "inputs matched and shuffled; before a zip is decoded"),
    "decode": FaultPoint("beam_pipeline.transforms.inputs:participant_from_study",
                         "studies decoded; before a tensor is built"),
    "measure": FaultPoint("beam_pipeline.transforms.methods:measure_inlinevf",
                          "tensors built; before a participant is measured"),
    "write": FaultPoint("beam_pipeline.transforms.outputs:measurement_row",
                        "measured; before a row reaches the sink"),
    "sink_rename": FaultPoint("os:rename", "a Beam sink moving its temp file to its final name",
                              only_under_output=True),
    "commit": FaultPoint("lvmass.storage.ledger:commit_run",
                         "every sink's files final; before the run is read back and committed"),
    "finalise": FaultPoint("lvmass.storage.ledger:finalise", "the run committed; before the finalise"),
    "ledger_write": FaultPoint("lvmass.storage.filesystems:_move_into_place",
                               "a ledger file written whole under _tmp/, before it is moved into place "
                               "(run manifest, derived files, _SUCCESS, summary.json, BigQuery manifests)",
                               only_under_output=True),
    "garbage": FaultPoint("lvmass.storage.filesystems:delete_files",
                          "committed; before files no commit names are deleted"),
}


def _output_of(argv: Sequence[str]) -> str:
    for k, arg in enumerate(argv):
        if arg.startswith("--output="):
            return arg.split("=", 1)[1]
        if arg == "--output":
            return argv[k + 1]
    raise ValueError(f"no --output in {list(argv)}")


def install(point: str, nth: int, sig: int, output: str) -> None:
    """Wrap ``POINTS[point].target`` so that its ``nth`` counted call kills this process with ``sig``."""
    spec = POINTS[point]
    module_name, attribute = spec.target.split(":")
    module = importlib.import_module(module_name)
    original: Callable[..., Any] = getattr(module, attribute)
    output = os.path.abspath(output)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if spec.only_under_output:
            last = str(args[-1]) if args else ""
            if not os.path.abspath(last).startswith(output + os.sep):
                return original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            sys.stderr.write(f"fault_injection: {signal.Signals(sig).name} at {point} call {nth}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    setattr(module, attribute, wrapper)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m tests.fault_injection POINT NTH SIGNAL -- <lvmass run arguments>")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m tests.fault_injection")
    parser.add_argument("point", choices=sorted(POINTS))
    parser.add_argument("nth", type=int)
    parser.add_argument("signal", choices=sorted(SIGNALS))
    args = parser.parse_args(argv[:split])
    run_argv = argv[split + 1:]
    import beam_pipeline.pipeline as pipeline  # the modules to patch are imported with it

    install(args.point, args.nth, SIGNALS[args.signal], _output_of(run_argv))
    return pipeline.main(run_argv)


if __name__ == "__main__":
    sys.exit(main())
