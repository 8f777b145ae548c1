"""``lvmass synth --participants N --out DIR [--seed S] [--fidelity full|lite] [--workers W]
[--overwrite]``. Options are spelled ``--flag_name``; ``--flag-name`` is accepted too."""

from __future__ import annotations

import json
import sys
import time

from lvmass.cli_args import ArgumentParser, configure_logging
from lvmass.synth.config import FIDELITIES, LAYOUTS, SynthConfig


def build_parser() -> ArgumentParser:
    """The ``lvmass synth`` options."""
    p = ArgumentParser(
        prog="lvmass synth",
        description="Write a synthetic UK Biobank-format short-axis "
        "cohort (participant zips, phenotypes, ground truth).",
    )
    p.add_argument("--participants", type=int, required=True, help="number of participants")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--fidelity",
        choices=FIDELITIES,
        default=SynthConfig.fidelity,
        help=f"full: all 50 phases of every slice; lite: a few phases (default {SynthConfig.fidelity})",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument(
        "--appearance_scale",
        type=float,
        default=SynthConfig.appearance_scale,
        help="widen the appearance variation (contrast, noise, bias, FOV...) by this factor",
    )
    p.add_argument("--layout", choices=LAYOUTS, default="ukbb", help="zip layout (default ukbb)")
    p.add_argument(
        "--manual_fraction",
        type=float,
        default=SynthConfig.manual_mass_fraction,
        help="share of participants with a (simulated reader's) manual LV mass "
        f"(default {SynthConfig.manual_mass_fraction}; raise it for a ML4H_reg training cohort)",
    )
    p.add_argument("--first_eid", type=int, default=None, help="consecutive eids from this one")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous cohort in --out (without it a non-empty --out is refused)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from lvmass.synth.cohort import generate_cohort

    started = time.monotonic()
    try:
        paths = generate_cohort(
            args.out,
            participants=args.participants,
            seed=args.seed,
            fidelity=args.fidelity,
            workers=args.workers,
            appearance_scale=args.appearance_scale,
            progress=not args.no_progress,
            first_eid=args.first_eid,
            config=SynthConfig(layout=args.layout, manual_mass_fraction=args.manual_fraction),
            overwrite=args.overwrite,
        )
    except ValueError as exc:
        print(f"lvmass synth: {exc}", file=sys.stderr)
        return 2
    summary = json.loads(paths.truth_json.read_text())["cohort"]
    elapsed = time.monotonic() - started
    print(f"wrote {summary['n_participants']} participants to {paths.root} in {elapsed:.1f} s")
    mass = summary["true_lv_mass_g"]
    bias = summary["inlinevf"]["expected_bias_factor"] or float("nan")
    print(f"  true LV mass {mass['mean']:.1f} g (sd {mass['sd'] or 0:.1f}); raw InlineVF bias x{bias:.2f}")
    print("  prevalence: " + ", ".join(f"{k} {v:.0%}" for k, v in summary["observed_prevalence"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
