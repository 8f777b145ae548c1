"""The ``lvmass`` console entry: every subcommand dispatches to its package's ``main``."""

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
