"""``python -m trainer.benchmark --record``: the recorded JSON says what was timed, where and how."""

from __future__ import annotations

import json

import pytest

from trainer import benchmark

pytestmark = pytest.mark.slow


def test_record_names_command_machine_and_times(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--model", "seg", "--preset", "cpu", "--crop_px", "32", "--batch_sizes", "1", "--repeats", "1",
            "--record", str(out)]
    assert benchmark.main(argv) == 0
    recorded = json.loads(out.read_text())
    assert recorded["command"] == "python -m trainer.benchmark " + " ".join(argv)
    assert recorded["machine"]["cpus"] >= 1 and recorded["target_s_per_participant"] == 2.0
    assert recorded["preset"] == "cpu" and recorded["inference_source"] == "built preset"
    assert recorded["train_step_s"]["batch1_32px"] > 0 and recorded["inference_s_per_participant"] > 0
    assert json.loads(capsys.readouterr().out) == recorded
