"""The ``lvmass`` console script: one entry, a subcommand per package.

Each subcommand is also reachable as ``python -m <package>``:

==============  ==================================
``synth``       ``python -m lvmass.synth``
``run``         ``python -m beam_pipeline``
``train``       ``python -m trainer.task`` (``lvmass train --vertex ...``: ``python -m trainer.vertex``)
``analyze``     ``python -m analysis``
``phenotypes``  ``lvmass phenotypes`` only (``analysis.ukbb_phenotypes.main``)
``export``      ``lvmass export`` only (``analysis.export.main``)
``qc``          ``python -m analysis.qc_gallery``
==============  ==================================
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> (module, function taking argv, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("lvmass.synth.cli", "main", "write a synthetic UK Biobank-format cohort with known truth"),
    "run": ("beam_pipeline.pipeline", "main", "run the Beam pipeline: participant zips -> LV mass Parquet"),
    "train": ("trainer.task", "main", "train ML4H_seg / ML4H_reg and export SavedModels"),
    "analyze": ("analysis.report", "main", "agreement, disease associations, tables, figures, report"),
    "phenotypes": ("analysis.ukbb_phenotypes", "main", "phenotype table from a UK Biobank export"),
    "export": ("analysis.export", "main", "results as one wide row per participant and visit (CSV/Parquet)"),
    "qc": ("analysis.qc_gallery", "main", "QC gallery: ED slices outlined, mass, flags, worst first (HTML)"),
    "import-ml4h": ("trainer.ml4h_import", "main", "ml4h's released ML4H_seg .h5 as a --model_seg folder"),
}


def _usage() -> str:
    lines = ["usage: lvmass <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'lvmass <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"--version", "version"}:
        from lvmass import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"lvmass: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name == "train" and "--vertex" in rest[: rest.index("--") if "--" in rest else len(rest)]:
        # lvmass train --vertex [Vertex options] -- [trainer.task options]: submit to Vertex AI
        rest = [arg for arg in rest if arg != "--vertex"]
        name, module_name, func_name = "train --vertex", "trainer.vertex", "main"
    else:
        module_name, func_name, _ = SUBCOMMANDS[name]
    entry: Callable[[list[str]], int | None] = getattr(importlib.import_module(module_name), func_name)
    result = entry(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
