"""The Flex Template's ``metadata.json``, generated from ``lvmass run``'s own options.

Every option of ``beam_pipeline.options.build_parser()`` becomes a template parameter, with its help text
and a validation that Dataflow applies before the launcher starts: ``regexes`` (anchored) and a
``paramType`` for the console's input picker. The validation comes from the option itself where argparse
knows it (choices -> ENUM, int -> NUMBER, on/off -> BOOLEAN); paths and lists get the rule in
:data:`TEXT_RULES`. A new option with no rule is an error here, and so in the tests.

    python docker/flex-template/metadata.py --write   # rewrite metadata.json
    python docker/flex-template/metadata.py --check   # exit 1 if metadata.json is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beam_pipeline.options import build_parser
from lvmass.core import contracts
from lvmass.storage.models import BUNDLED_PREFIX

METADATA_FILE = Path(__file__).resolve().parent / "metadata.json"
TEMPLATE_NAME = "lvmass"
TEMPLATE_DESCRIPTION = ("LV mass, LVMI and LVH from UK Biobank short-axis cine CMR (field 20209) with "
                        "ML4H_seg, ML4H_reg and InlineVF, written as Parquet for BigQuery (or TFRecords "
                        "with mode=tensorize).")

GCS_BUCKET = r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"
GCS_OBJECT = rf"gs://{GCS_BUCKET}/\S+"
_METHOD = "|".join(re.escape(m) for m in contracts.INPUT_METHODS)
_BUNDLED_SEG = re.escape(BUNDLED_PREFIX + contracts.MODEL_KIND_SEG) + "(_paper)?"
_BUNDLED_REG = re.escape(BUNDLED_PREFIX + contracts.MODEL_KIND_REG) + "(_paper)?"

# Options that argparse only knows as strings: (paramType, regex, label).
TEXT_RULES: dict[str, tuple[str, str, str]] = {
    "input": ("GCS_READ_FILE", rf"^{GCS_OBJECT}$",
              "Participant zips (gs:// glob)"),
    "output": ("GCS_WRITE_FOLDER", rf"^gs://{GCS_BUCKET}(/\S*)?$",
               "Output folder (gs://)"),
    "phenotypes": ("GCS_READ_FILE", rf"^{GCS_OBJECT}$",
                   "Phenotype table (CSV or Parquet, gs://)"),
    "methods": ("TEXT", rf"^({_METHOD})(,({_METHOD}))*$",
                "Methods (comma-separated)"),
    "model_seg": ("GCS_READ_FOLDER", rf"^({GCS_OBJECT}|{_BUNDLED_SEG})$",
                  "ML4H_seg SavedModel folder"),
    "model_reg": ("GCS_READ_FOLDER", rf"^({GCS_OBJECT}|{_BUNDLED_REG})$",
                  "ML4H_reg SavedModel folder"),
    "calibration": ("GCS_READ_FILE", rf"^{GCS_OBJECT}\.json$",
                    "Calibration JSON (gs://)"),
}
INTEGER_REGEX = r"^[0-9]+$"
NUMBER_REGEX = r"^[0-9]+(\.[0-9]+)?$"
BOOLEAN_REGEX = r"^(true|false)$"


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _label(action: argparse.Action) -> str:
    return action.dest.replace("_", " ").capitalize()


def parameter(action: argparse.Action) -> dict[str, Any]:
    """One ``ParameterMetadata`` (Dataflow's JSON field names) for one ``lvmass run`` option."""
    name = action.dest
    entry: dict[str, Any] = {
        "name": name,
        "label": _label(action),
        "helpText": " ".join((action.help or "").split()),
        "isOptional": not action.required,
    }
    if not entry["helpText"]:
        raise ValueError(f"--{name} has no help text, which the template shows as its description")
    if isinstance(action, argparse._StoreTrueAction):
        entry.update(paramType="BOOLEAN", regexes=[BOOLEAN_REGEX], defaultValue="false")
    elif action.choices is not None:
        choices = [str(c) for c in action.choices]
        entry.update(paramType="ENUM", regexes=[f"^({'|'.join(re.escape(c) for c in choices)})$"],
                     enumOptions=[{"value": c, "label": c} for c in choices])
        if action.default is not None:
            entry["defaultValue"] = str(action.default)
    elif action.type is int:
        entry.update(paramType="NUMBER", regexes=[INTEGER_REGEX])
    elif action.type is float:
        entry.update(paramType="NUMBER", regexes=[NUMBER_REGEX])
    elif name in TEXT_RULES:
        param_type, regex, label = TEXT_RULES[name]
        entry.update(label=label, paramType=param_type, regexes=[regex])
    else:
        raise ValueError(f"--{name}: no template validation for this option; add it to TEXT_RULES in "
                         f"{Path(__file__).name}")
    if "defaultValue" not in entry and action.default not in (None, argparse.SUPPRESS) \
            and not isinstance(action, argparse._StoreTrueAction):
        entry["defaultValue"] = str(action.default)
    return entry


def build_metadata(parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The whole ``metadata.json`` (Dataflow's ``TemplateMetadata``)."""
    parser = parser or build_parser()
    unused = sorted(set(TEXT_RULES) - {a.dest for a in _options(parser)})
    if unused:
        raise ValueError(f"TEXT_RULES names options lvmass run does not have: {unused}")
    return {
        "name": TEMPLATE_NAME,
        "description": TEMPLATE_DESCRIPTION,
        "streaming": False,
        "parameters": [parameter(action) for action in _options(parser)],
    }


def metadata_text() -> str:
    return json.dumps(build_metadata(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docker/flex-template/metadata.py",
                                     description="Generate the Flex Template metadata.json.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"rewrite {METADATA_FILE}")
    action.add_argument("--check", action="store_true", help="exit 1 if metadata.json is stale")
    args = parser.parse_args(argv)
    if args.write:
        METADATA_FILE.write_text(metadata_text())
        print(METADATA_FILE)
        return 0
    current = METADATA_FILE.read_text() if METADATA_FILE.is_file() else ""
    if current != metadata_text():
        print(f"stale: {METADATA_FILE} (run python docker/flex-template/metadata.py --write)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
