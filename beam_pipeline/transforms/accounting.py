"""Accounting: dead letters as rows (:class:`ToErrorRecords`), progress counted (:class:`RecordProgress`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_pipeline.progress import EVENTS as PROGRESS_EVENTS
from beam_pipeline.progress import BoardWriter
from lvmass.core.dead_letters import error_record

logger = logging.getLogger(__name__)

NAMESPACE = "lvmass"  # the Beam counters' namespace (the model handlers count under lvmass_<kind>)


class ToErrorRecords(beam.PTransform):
    """Dead letters ``(element, (exc_type, repr, traceback))`` -> ``ErrorRecord`` (one per element).

    With ``batched=True`` the dead letter is a failed RunInference batch (a list of keyed examples):
    every participant of the batch gets its own row.
    """

    def __init__(self, stage: str, *, batched: bool = False):
        super().__init__()
        self._stage = stage
        self._batched = batched

    def expand(self, bad):
        stage, batched = self._stage, self._batched
        counter = Metrics.counter(NAMESPACE, f"failed_{stage}")

        def to_records(dead_letter):
            element, (exc_type, exc_repr, traceback_lines) = dead_letter
            elements = list(element) if batched else [element]
            for item in elements:
                record = error_record(stage, item, exc_type, exc_repr, traceback_lines)
                counter.inc()
                logger.warning("dead letter (%s) %s: %s", record.stage, record.source_uri, record.message)
                logger.debug("traceback of %s:\n%s", record.source_uri, "".join(traceback_lines))
                yield record

        return bad | "ToErrorRecord" >> beam.FlatMap(to_records)


# Beam counters of the progress events that have none elsewhere (matched and skipped are counted on input)
PROGRESS_COUNTERS = {"done": "participants_done", "failed": "participants_done_with_error"}


class RecordProgress(beam.PTransform):
    """Count each element as the progress ``events`` of ``beam_pipeline.progress`` (``matched``,
    ``skipped``, ``done``, ``failed``): ``done`` and ``failed`` as Beam counters (``participants_done``,
    ``participants_done_with_error``; ``matched`` and ``skipped`` have theirs already), which Dataflow's job
    metrics show live, and, for a local run, on the progress board ``board_folder`` that the launcher reads
    every few seconds. A branch that emits nothing: its input goes on unchanged to its other consumers."""

    def __init__(self, events: Sequence[str], board_folder: str | None = None):
        super().__init__()
        unknown = sorted(set(events) - set(PROGRESS_EVENTS))
        if unknown or not events:
            raise ValueError(f"events must be some of {PROGRESS_EVENTS}. Received: {list(events)}")
        self._events = tuple(events)
        self._folder = board_folder

    def expand(self, pcoll):
        return pcoll | "Record" >> beam.ParDo(_RecordProgressFn(self._events, self._folder))


class _RecordProgressFn(beam.DoFn):
    def __init__(self, events: tuple[str, ...], folder: str | None):
        super().__init__()
        self._events = events
        self._folder = folder
        self._counters = [Metrics.counter(NAMESPACE, PROGRESS_COUNTERS[e])
                          for e in events if e in PROGRESS_COUNTERS]
        self._writer: BoardWriter | None = None

    def setup(self):
        self._writer = BoardWriter(self._folder) if self._folder else None

    def process(self, element):
        for counter in self._counters:
            counter.inc()
        if self._writer is not None:
            self._writer.add(*self._events)
        return ()
