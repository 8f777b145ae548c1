"""Command-line conventions shared by every ``lvmass`` subcommand and ``python -m`` entry.

* Options are spelled ``--flag_name``, as Beam's own PipelineOptions are (``--direct_num_workers``), so
  one command line can mix ours and Beam's; ``--flag-name`` is accepted for every one of them.
* Every command has ``--log_level`` (DEBUG, INFO, WARNING, ERROR; default INFO).
* Every option carries a help text (a test walks every parser).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LOG_LEVEL = "INFO"
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the project's conventions (module docstring).

    ``--flag-name`` is rewritten to ``--flag_name`` before parsing when the parser knows the latter;
    anything it does not know is left alone (``parse_known_args`` hands it on to Beam unchanged).
    Subparsers made with ``add_subparsers`` are of this class too and follow the same rules.
    """

    def __init__(self, *args: Any, log_level: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if log_level:
            self.add_argument("--log_level", choices=LOG_LEVELS, default=DEFAULT_LOG_LEVEL,
                              type=str.upper, help=f"logging level (default {DEFAULT_LOG_LEVEL})")

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", type(self))
        return super().add_subparsers(**kwargs)

    def _underscore_spelling(self, token: str) -> str:
        if not token.startswith("--") or token == "--":
            return token
        name, sep, value = token.partition("=")
        if "-" not in name[2:]:
            return token
        candidate = "--" + name[2:].replace("-", "_")
        return candidate + sep + value if candidate in self._option_string_actions else token

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        if args is not None:
            args = list(args)
            stop = args.index("--") if "--" in args else len(args)
            args = [self._underscore_spelling(a) for a in args[:stop]] + args[stop:]
        else:
            return self.parse_known_args(sys.argv[1:], namespace)
        return super().parse_known_args(args, namespace)


def configure_logging(level: str = DEFAULT_LOG_LEVEL) -> None:
    """Log to stderr at ``level`` (one of LOG_LEVELS), the same format for every command."""
    if level.upper() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {LOG_LEVELS}. Received: {level!r}")
    logging.basicConfig(level=getattr(logging, level.upper()), format=LOG_FORMAT, force=True)


def log_level_of(argv: Sequence[str] | None) -> str:
    """The ``--log_level`` an argv asks for (the default when absent or unparseable), read before the
    command's own parsing so that its errors are logged at the right level."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--log_level", "--log-level", type=str.upper, default=DEFAULT_LOG_LEVEL)
    known, _ = probe.parse_known_args(list(argv) if argv is not None else None)
    return known.log_level if known.log_level in LOG_LEVELS else DEFAULT_LOG_LEVEL
