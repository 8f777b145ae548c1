"""Dataflow Flex Template entry point (``FLEX_TEMPLATE_PYTHON_PY_FILE``): build the lvmass job, submit it,
return without waiting.

Dataflow's launcher runs ``python main.py --input=... --output=... --runner=DataflowRunner --project=...``
with the template's parameters (``metadata.json``) and the job's environment. Our options go to
``beam_pipeline.options.parse_args``, the rest to Beam's ``PipelineOptions``, and the output is prepared
(``prepare_output``: refused when it holds files, unless ``--overwrite``; with ``--skip_existing`` what a
stopped run left is cleaned and the committed inputs are left out), exactly as ``lvmass run`` does. The job's
last step commits the run and finalises the folder on a worker (``transforms.CommitRun``), so nothing is
left for the launcher to do after it. Two things differ from ``lvmass run``:

* the launcher passes every parameter as ``--name=value``, so an on/off option arrives as
  ``--large_model=true``; :func:`template_argv` turns that into argparse's ``--large_model`` (``false``:
  left out);
* the program must exit once the job is submitted (Dataflow's rule for Flex Templates): it calls
  ``Pipeline.run()`` but never ``wait_until_finish()``, and reads no ``summary.json``.

Offline, ``tests/test_dataflow_job.py`` runs :func:`launch` with ``--template_location`` on a storage
emulator, which makes Beam write the job it would submit, and checks that job.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from beam_pipeline.options import ConfigError, build_parser, check_inputs, parse_args
from beam_pipeline.pipeline import build_pipeline, prepare_output

logger = logging.getLogger("lvmass.flex_template")
TRUE_VALUES = ("true", "1", "yes")
FALSE_VALUES = ("false", "0", "no", "")


def boolean_flags(parser: argparse.ArgumentParser | None = None) -> frozenset[str]:
    """The ``--flag`` options of ``lvmass run`` that take no value (``store_true``)."""
    parser = parser or build_parser()
    return frozenset(
        option
        for action in parser._actions  # argparse keeps no public list of its options
        if isinstance(action, argparse._StoreTrueAction)
        for option in action.option_strings
        if option.startswith("--")
    )


def template_argv(argv: Sequence[str], flags: frozenset[str] | None = None) -> list[str]:
    """``--large_model=true`` -> ``--large_model``; ``--large_model=false`` -> nothing; all else as given.

    Raises ValueError naming the option when an on/off option has any other value."""
    flags = boolean_flags() if flags is None else flags
    out: list[str] = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if not sep or name.replace("-", "_") not in {f.replace("-", "_") for f in flags}:
            out.append(arg)
            continue
        if value.strip().lower() in TRUE_VALUES:
            out.append(name)
        elif value.strip().lower() not in FALSE_VALUES:
            raise ValueError(f"{name} takes true or false. Received: {value!r}")
    return out


def launch(argv: Sequence[str]) -> Any:
    """Build the job from the template's arguments and submit it; returns Beam's result at once."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    config, beam_args = parse_args(template_argv(argv))
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    check_inputs(config)
    existing = prepare_output(config)  # --overwrite / --skip_existing (and recovery) as lvmass run does
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config, existing_keys=existing)
    logger.info("submitting lvmass %s: %s -> %s (methods %s)", config.mode, config.input, config.output,
                ",".join(config.methods))
    return pipeline.run()  # no wait_until_finish(): the launcher must exit for the job to start


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        launch(args)
    except (ConfigError, ValueError) as exc:
        print(f"lvmass flex template: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
