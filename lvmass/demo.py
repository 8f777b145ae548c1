"""The README's demo: synthetic cohort -> Beam pipeline -> analysis report, on this machine.

``python -m lvmass.demo --out demo_out --participants 60`` (what ``make demo`` runs). Each stage is the
same command a user runs on real data; the demo only chains them and prints where things are.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lvmass.cli_args import ArgumentParser, configure_logging

logger = logging.getLogger("lvmass.demo")


def build_parser() -> ArgumentParser:
    """The demo's options."""
    parser = ArgumentParser(prog="python -m lvmass.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (cohort/, results/, report/)")
    parser.add_argument("--participants", type=int, default=200, help="synthetic participants to generate")
    parser.add_argument("--seed", type=int, default=2021, help="seed of the synthetic cohort (default 2021)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the generator and the pipeline (default: all cores)")
    parser.add_argument(
        "--methods", default="", help="comma-separated methods (default: all the bundled models allow)"
    )
    return parser


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _available_methods() -> list[str]:
    """InlineVF always; the ML4H methods when their bundled SavedModels are present."""
    from lvmass.core import contracts

    models_dir = Path(__file__).resolve().parent.parent / "beam_pipeline" / "models"
    methods = []
    for method in (contracts.METHOD_ML4H_SEG, contracts.METHOD_ML4H_REG):
        if (models_dir / method / "saved_model.pb").exists():
            methods.append(method)
    methods.append(contracts.METHOD_INLINEVF)
    return methods


def print_method_summary(results_dir: Path) -> None:
    """The per-method summary: the first of ``lvmass/storage/sql/example_queries.sql``, run by DuckDB."""
    from lvmass.storage.queries import connect, example_queries

    print(connect(str(results_dir)).sql(example_queries()[0]))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging(args.log_level)
    out = Path(args.out).resolve()
    cohort_dir, results_dir, report_dir = out / "cohort", out / "results", out / "report"
    started = time.monotonic()

    from lvmass.synth import generate_cohort

    print(f"[1/3] generating {args.participants} synthetic participants -> {cohort_dir}")
    cohort = generate_cohort(
        cohort_dir, participants=args.participants, seed=args.seed, fidelity="lite",
        workers=args.workers, progress=True, overwrite=True,
    )

    from beam_pipeline.pipeline import run as run_pipeline

    methods = args.methods or ",".join(_available_methods())
    print(f"[2/3] running the Beam pipeline ({methods}) -> {results_dir}")
    run_pipeline([
        f"--input={cohort.zips_dir}/*_20209_*.zip",
        f"--phenotypes={cohort.phenotypes_csv}",
        f"--output={results_dir}",
        f"--methods={methods}",
        "--overwrite",  # the demo regenerates its cohort, so an earlier demo's results are replaced
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={args.workers}",
    ])
    print_method_summary(results_dir)

    from analysis.report import main as analyze

    print(f"[3/3] analysis report -> {report_dir}")
    analyze([
        f"--results={results_dir}", f"--phenotypes={cohort.phenotypes_csv}", f"--out={report_dir}",
        f"--truth={cohort.truth_csv}", f"--seed={args.seed}",
    ])
    print(f"\nDone in {time.monotonic() - started:.0f} s.")
    print(f"Report: {report_dir / 'report.html'}")
    print(f"Results (Parquet, hive-partitioned by method): {results_dir / 'lvmass'}")
    print(f"Errors (dead letters): {results_dir / 'errors'};  run summary: {results_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
