"""Progress of a long local run (``beam_pipeline.progress``): the line a user reads, the board the workers
write and the launcher sums, and the reporter's rate and time left on a clock the test controls."""

from __future__ import annotations

import os

import pytest

from beam_pipeline.progress import BoardWriter, Progress, ProgressReporter, progress_line, read_board


class TestProgressLine:
    def test_done_of_matched_rate_and_time_left(self):
        line = progress_line(Progress(matched=1000, done=412, failed=3), elapsed_s=200.0, rate_per_s=2.3)
        assert line == ("progress: 412 of 1,000 participants done (41%; 3 failed), 2.30 per s, "
                        "about 4 min 16 s left")

    def test_before_any_input_is_listed_and_before_a_rate_is_known(self):
        listing = progress_line(Progress(), elapsed_s=3.2, rate_per_s=None)
        assert listing == "progress: listing the inputs (3 s)"
        assert progress_line(Progress(matched=40000), elapsed_s=12, rate_per_s=None) == (
            "progress: 0 of 40,000 participants done (0%), 12 s in, rate not known yet")

    def test_skipped_inputs_are_not_to_do_and_hours_read_as_hours(self):
        line = progress_line(Progress(matched=50000, skipped=10000, done=1000), elapsed_s=60, rate_per_s=2.0)
        assert line == ("progress: 1,000 of 40,000 participants done (2%), 10,000 already in the output, "
                        "2.00 per s, about 5 h 25 min left")

    def test_the_final_line_gives_the_whole_run(self):
        line = progress_line(Progress(matched=7, done=7, failed=4), elapsed_s=14.2, rate_per_s=None,
                             final=True)
        assert line == "progress: 7 of 7 participants done (100%; 4 failed) in 14 s, 0.49 per s"


class TestBoard:
    def test_writers_counts_are_summed_and_half_files_are_never_read(self, tmp_path):
        first, second = BoardWriter(str(tmp_path)), BoardWriter(str(tmp_path))
        for _ in range(3):
            first.add("matched")
        second.add("done", "failed")
        second.add("done")
        (tmp_path / "junk.progress.json").write_text("{not json")
        assert read_board(str(tmp_path)) == Progress(matched=3, done=2, failed=1)
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]

    def test_an_unknown_event_or_folder(self, tmp_path):
        with pytest.raises(ValueError, match="unknown progress event 'finished'"):
            BoardWriter(str(tmp_path)).add("finished")
        assert read_board(str(tmp_path / "missing")) == Progress()


class TestReporter:
    def test_rate_over_the_last_minute_and_a_final_line(self):
        now = [0.0]
        progress = [Progress(matched=100)]
        lines: list[str] = []
        reporter = ProgressReporter(lambda: progress[0], every_s=5, log=lines.append, clock=lambda: now[0])
        for t, done in ((5, 0), (10, 10), (15, 20), (100, 30)):
            now[0], progress[0] = float(t), Progress(matched=100, done=done)
            reporter.report()
        assert lines[0].endswith("rate not known yet")
        assert lines[2].endswith("2.00 per s, about 40 s left")  # 20 done in 10 s since the first reading
        assert "0.12 per s" in lines[3]  # the window forgets the early, faster pace: 10 done in 85 s
        assert reporter.stop() == "progress: 30 of 100 participants done (30%) in 1 min 40 s, 0.30 per s"

    def test_the_thread_logs_every_interval_and_stops(self):
        lines: list[str] = []
        reporter = ProgressReporter(lambda: Progress(matched=2, done=1), every_s=0.05, log=lines.append)
        reporter.start()
        import time

        time.sleep(0.3)
        final = reporter.stop()
        assert len(lines) >= 3 and lines[-1] == final and final.startswith("progress: 1 of 2")

    def test_interval_must_be_positive(self):
        with pytest.raises(ValueError, match="every_s must be > 0"):
            ProgressReporter(Progress, every_s=0)
