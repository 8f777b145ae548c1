"""The ``lvmass`` console entry: every subcommand dispatches to its package's ``main``."""

import json
import subprocess
import sys

import pytest

from lvmass import cli


class TestDispatch:
    def test_usage_lists_every_subcommand(self, capsys):
        assert cli.main([]) == 0
        out = capsys.readouterr().out
        for name in cli.SUBCOMMANDS:
            assert name in out

    def test_unknown_command_is_refused_with_usage(self, capsys):
        assert cli.main(["fly"]) == 2
        assert "unknown command 'fly'" in capsys.readouterr().err

    @pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
    def test_each_subcommand_has_help(self, name, capsys):
        with pytest.raises(SystemExit) as stop:
            cli.main([name, "--help"])
        assert stop.value.code == 0
        assert "usage" in capsys.readouterr().out.lower()

    @pytest.mark.parametrize(
        "module", ["lvmass.synth", "beam_pipeline", "trainer", "trainer.task", "analysis"]
    )
    def test_each_package_runs_as_a_module(self, module):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert "usage" in done.stdout.lower()


# Every command's parser, for the conventions of lvmass.cli_args (spelling, help, --log_level).
PARSERS = {
    "lvmass run": ("beam_pipeline.options", "build_parser"),
    "lvmass synth": ("lvmass.synth.cli", "build_parser"),
    "lvmass analyze": ("analysis.report", "build_parser"),
    "lvmass phenotypes": ("analysis.ukbb_phenotypes", "build_parser"),
    "lvmass export": ("analysis.export", "build_parser"),
    "lvmass qc": ("analysis.qc_gallery", "build_parser"),
    "python -m lvmass.demo": ("lvmass.demo", "build_parser"),
    "lvmass train": ("trainer.task", "build_parser"),
    "python -m trainer.portable": ("trainer.portable", "build_parser"),
    "python -m trainer.evaluate": ("trainer.evaluate", "build_parser"),
    "python -m trainer.benchmark": ("trainer.benchmark", "build_parser"),
}


def _parser(name: str):
    import importlib

    module, func = PARSERS[name]
    return getattr(importlib.import_module(module), func)()


class TestConventions:
    @pytest.mark.parametrize("name", sorted(PARSERS))
    def test_the_parser_names_the_command_a_user_types(self, name):
        assert _parser(name).prog == name

    @pytest.mark.parametrize("name", sorted(PARSERS))
    def test_every_option_is_spelled_with_underscores_and_has_help(self, name):
        for action in _parser(name)._actions:
            if action.dest == "help":
                continue
            longs = [s for s in action.option_strings if s.startswith("--")]
            assert all("-" not in s[2:] for s in longs), f"{name}: {longs} should use '_'"
            assert action.help, f"{name}: {action.option_strings} has no help text"

    @pytest.mark.parametrize("name", sorted(PARSERS))
    def test_log_level_is_accepted_in_either_case(self, name):
        parser = _parser(name)
        (action,) = [a for a in parser._actions if "--log_level" in a.option_strings]
        assert parser.get_default("log_level") == "INFO"
        assert action.type("debug") == "DEBUG" and "DEBUG" in action.choices
        assert "LOUD" not in action.choices

    def test_hyphen_spelling_is_accepted_and_unknown_options_pass_through(self):
        from beam_pipeline.options import parse_args

        config, beam_args = parse_args(["--input", "x/*.zip", "--output", "out", "--methods", "inlinevf",
                                        "--min-calibration-n=3", "--save-labels", "--runner", "FnApiRunner",
                                        "--direct-num-workers", "2"])
        assert config.min_calibration_n == 3 and config.save_labels
        assert beam_args == ["--runner", "FnApiRunner", "--direct-num-workers", "2"]  # Beam's, untouched

    def test_synth_accepts_both_spellings_of_the_same_flag(self):
        parser = _parser("lvmass synth")
        hyphen = parser.parse_args(["--participants", "3", "--out", "o", "--manual-fraction", "0.5"])
        underscore = parser.parse_args(["--participants", "3", "--out", "o", "--manual_fraction", "0.5"])
        assert hyphen.manual_fraction == underscore.manual_fraction == 0.5

    def test_values_after_a_double_dash_are_not_rewritten(self):
        parser = _parser("lvmass analyze")
        parser.add_argument("rest", nargs="*", help="positional, for this test")
        args = parser.parse_args(["--results", "r", "--phenotypes", "p", "--out", "o", "--", "--min-events"])
        assert args.rest == ["--min-events"]


class TestNewCommands:
    def test_phenotypes_and_export_accept_both_spellings(self):
        phenotypes = _parser("lvmass phenotypes")
        args = phenotypes.parse_args(["--input", "ukb.csv", "--out", "p.csv", "--manual-mass", "m.csv"])
        assert args.manual_mass == "m.csv" and args.instances == [2, 3] and not args.overwrite
        export = _parser("lvmass export").parse_args(["--results", "r", "--out", "w.csv",
                                                      "--log-level", "debug"])
        assert export.log_level == "DEBUG" and not export.overwrite

    @pytest.mark.parametrize("name", ["phenotypes", "export"])
    def test_registered_with_their_modules(self, name):
        module, func, help_ = cli.SUBCOMMANDS[name]
        assert module.startswith("analysis.") and func == "main" and help_


def test_train_with_vertex_submits_through_trainer_vertex(capsys):
    """``lvmass train --vertex [Vertex options] -- [trainer.task options]`` is trainer.vertex's launcher."""
    code = cli.main(["train", "--vertex", "--project", "my-project-123", "--region", "us-central1",
                     "--image", "us-central1-docker.pkg.dev/my-project-123/lvmass/trainer:1",
                     "--base_output_dir", "gs://lvmass-train/jobs/seg-1",
                     "--service_account", "train@my-project-123.iam.gserviceaccount.com", "--dry_run",
                     "--", "--model", "seg", "--train_data", "gs://lvmass-train/t/*.tfrecord.gz"])
    assert code == 0
    job = json.loads(capsys.readouterr().out)
    assert "trainer.task" in json.dumps(job) and "--train_data" in json.dumps(job)
