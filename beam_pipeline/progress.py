"""Progress of a long local run: participants done of matched, the rate, and the time left, every few seconds.

Why a board and not Beam's counters: on the local runners (FnApiRunner, the DirectRunner, also in
``multi_processing`` mode) the launching process sees metrics only when the run has finished, and the work
happens in other threads or processes. So each worker-side step that sees a participant finish writes its
running counts to a small file of its own in a local folder (:class:`BoardWriter`, rewritten atomically),
and the launcher sums the files every few seconds (:func:`read_board`, :class:`ProgressReporter`) and logs
one line (:func:`progress_line`). On Dataflow there is no shared folder: the same events are Beam counters
(``lvmass/inputs_matched``, ``inputs_skipped_existing``, ``participants_done``,
``participants_done_with_error``), which the job's metrics show while it runs.

Events: ``matched`` (an input found), ``skipped`` (already in the output, ``--skip_existing``), ``done`` (a
participant finished its slowest method, or failed before it) and ``failed`` (done with a dead letter).
The participants to do are matched less skipped. Counts are approximate while a retried bundle is
counted twice; the summary at the end (``summary.json``) is the exact account.

Pure Python: no Beam.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

EVENTS = ("matched", "skipped", "done", "failed")
DEFAULT_EVERY_S = 5.0
RATE_WINDOW_S = 60.0  # the rate is measured over about the last minute, so it follows the run's pace
BOARD_SUFFIX = ".progress.json"


@dataclass(frozen=True)
class Progress:
    """The run's counts at one moment."""

    matched: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0

    @property
    def to_do(self) -> int:
        """Participants this run processes: matched less those already in the output."""
        return max(0, self.matched - self.skipped)


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"4 min 15 s"``, ``"2 h 05 min"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(progress: Progress, *, elapsed_s: float, rate_per_s: float | None,
                  final: bool = False) -> str:
    """One line for the log: ``progress: 412 of 1,000 participants done (41%; 3 failed), 2.3 per s,
    about 4 min 15 s left`` (``rate_per_s`` None: not known yet)."""
    if progress.matched == 0:
        return f"progress: listing the inputs ({_duration(elapsed_s)})"
    total = progress.to_do
    done = min(progress.done, total)
    share = f"{100.0 * done / total:.0f}%" if total else "100%"
    failed = f"; {progress.failed:,} failed" if progress.failed else ""
    head = f"progress: {done:,} of {total:,} participants done ({share}{failed})"
    if progress.skipped:
        head += f", {progress.skipped:,} already in the output"
    if final:
        rate = f", {done / elapsed_s:.2f} per s" if elapsed_s > 0 and done else ""
        return f"{head} in {_duration(elapsed_s)}{rate}"
    if not rate_per_s or rate_per_s <= 0:
        return f"{head}, {_duration(elapsed_s)} in, rate not known yet"
    left = (total - done) / rate_per_s
    return f"{head}, {rate_per_s:.2f} per s, about {_duration(left)} left"


class BoardWriter:
    """One worker-side step's running counts, in a file of its own under the board folder."""

    def __init__(self, folder: str):
        self._path = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex}{BOARD_SUFFIX}")
        self._counts = dict.fromkeys(EVENTS, 0)

    def add(self, *events: str) -> None:
        """Count ``events`` once each and rewrite the file (a write to a temporary name, then a rename,
        so a reader never sees half a file)."""
        for event in events:
            if event not in self._counts:
                raise ValueError(f"unknown progress event {event!r}; expected one of {EVENTS}")
            self._counts[event] += 1
        temporary = self._path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as fh:
            json.dump(self._counts, fh)
        os.replace(temporary, self._path)


def read_board(folder: str) -> Progress:
    """The counts of every writer under ``folder``, summed; files that cannot be read count nothing."""
    totals = dict.fromkeys(EVENTS, 0)
    try:
        names = [n for n in os.listdir(folder) if n.endswith(BOARD_SUFFIX)]
    except OSError:
        return Progress()
    for name in names:
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                counts = json.load(fh)
        except (OSError, ValueError):
            continue
        for event in EVENTS:
            value = counts.get(event, 0) if isinstance(counts, Mapping) else 0
            totals[event] += int(value) if isinstance(value, int) else 0
    return Progress(**totals)


class ProgressReporter:
    """Logs :func:`progress_line` every ``every_s`` seconds from a background thread, and once more at
    :meth:`stop`. ``read`` returns the counts (:func:`read_board` of the run's folder); ``clock`` is
    ``time.monotonic`` (tests pass their own)."""

    def __init__(self, read: Callable[[], Progress], *, every_s: float = DEFAULT_EVERY_S,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0. Received: {every_s}")
        self._read = read
        self._every_s = every_s
        self._log = log or (lambda line: logger.info("%s", line))
        self._clock = clock
        self._started = clock()
        self._history: list[tuple[float, int]] = []  # (time, done), for the rate
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rate_per_s(self, now: float, done: int) -> float | None:
        """Participants per second over about the last :data:`RATE_WINDOW_S` (None before two readings
        with progress between them)."""
        self._history.append((now, done))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW_S:
            self._history.pop(0)
        then, done_then = self._history[0]
        if now <= then or done <= done_then:
            return None
        return (done - done_then) / (now - then)

    def report(self, *, final: bool = False) -> str:
        """Read the counts and log one line; returns it."""
        now = self._clock()
        progress = self._read()
        rate = None if final else self.rate_per_s(now, progress.done)
        line = progress_line(progress, elapsed_s=now - self._started, rate_per_s=rate, final=final)
        self._log(line)
        return line

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.report()
            except Exception:  # a progress line must never stop the run
                logger.debug("progress report failed", exc_info=True)

    def start(self) -> ProgressReporter:
        self._started = self._clock()
        self._thread = threading.Thread(target=self._loop, name="lvmass-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> str:
        """Stop the thread and log the final line (returned)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._every_s + 1.0)
        return self.report(final=True)
