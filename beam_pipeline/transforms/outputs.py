"""The run's outputs: measurement rows checked and written, dead letters, TFRecords (tensorize), the
cohort derivation inside a pipeline (:class:`CalibrateAndIndex`) and the commit every run ends with
(:class:`CommitRun`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.io.tfrecordio import WriteToTFRecord
from apache_beam.metrics import Metrics

from beam_pipeline.transforms.accounting import NAMESPACE, ToErrorRecords
from lvmass.core.contracts import PIPELINE_VERSION
from lvmass.core.derive import DerivationSettings, derive_results, measurement_row
from lvmass.core.measure import DEFAULT_MIN_CALIBRATION_N
from lvmass.core.phenotypes import Phenotype, PhenotypeTable
from lvmass.core.schema import (
    ERRORS_SCHEMA,
    MEASUREMENTS_SCHEMA,
    STAGE_PHENOTYPES,
    STAGE_TENSOR,
    STAGE_WRITE,
    check_measurement_row,
    writable_error_row,
)
from lvmass.storage import ledger
from lvmass.storage.phenotypes import read_phenotype_file
from lvmass.storage.tfrecord import tfrecord_bytes

logger = logging.getLogger(__name__)


def lookup_phenotype(table: PhenotypeTable, eid: int | None, instance: int) -> Phenotype | None:
    """The phenotype row of a participant (None without one, or without an eid to join on)."""
    return None if eid is None else table.lookup(eid, instance)


def load_phenotypes(path: str | None) -> PhenotypeTable:
    """The ``phenotypes.PhenotypeTable`` (empty without a file); a file that cannot be read fails the
    run, loudly (implausible values in it are recorded as unknown, see ``lvmass.core.phenotypes``)."""
    if not path:
        return PhenotypeTable()
    table = read_phenotype_file(path, lenient=True)
    logger.info("read %d phenotype rows from %s (%s); %d rows left out", len(table), path,
                "per eid x instance" if table.per_instance else "per eid", len(table.rejected))
    return table


class CalibrateAndIndex(beam.PTransform):
    """Measurements + phenotypes -> ``ResultRecord``s with calibrated mass, BSA, LVMI, LVH, LVH_p90.

    The derivation of ``lvmass.core.derive.derive_results`` (the one the pipeline's finalise runs over
    every committed measurement of an output folder), inside a pipeline: every measurement is gathered
    into one list first, because each derived value depends on the whole cohort (the per-sex centering
    of each centred method, the per-sex 90th percentiles). Centering is chosen per sex: fitted on the
    QC-passing participants with a manual mass when at least ``min_calibration_n`` of that sex have one,
    else ``fallback_centering`` (``--calibration`` or the model card) for that sex if it has one, else
    the fit however small; the row's ``calibration`` names the source.

    A record that fails here (a phenotype the arithmetic rejects...) becomes an ``ErrorRecord`` at stage
    ``phenotypes``, never a failed job. With ``with_errors`` the transform returns ``(records, errors)``;
    without, only the records, and the errors are logged and counted (``failed_phenotypes``).
    """

    def __init__(self, phenotypes_path: str | None, fallback_centering: Mapping[str, Any] | None = None, *,
                 min_calibration_n: int = DEFAULT_MIN_CALIBRATION_N, with_errors: bool = False,
                 raw_is_estimate: frozenset[str] = frozenset()):
        super().__init__()
        self._settings = DerivationSettings(fallback_centering=dict(fallback_centering or {}),
                                            min_calibration_n=min_calibration_n,
                                            raw_is_estimate=frozenset(raw_is_estimate))
        self._phenotypes_path = phenotypes_path
        self._with_errors = with_errors

    def expand(self, measurements):
        settings, path = self._settings, self._phenotypes_path
        failed = Metrics.counter(NAMESPACE, f"failed_{STAGE_PHENOTYPES}")
        written = Metrics.counter(NAMESPACE, "result_rows")

        def derive(all_measurements):
            derived = derive_results(all_measurements, load_phenotypes(path), settings)
            for record in derived.records:
                written.inc()
                yield record
            for error in derived.errors:
                failed.inc()
                logger.warning("dead letter (%s) %s: %s", error.stage, error.source_uri, error.message)
                yield beam.pvalue.TaggedOutput("errors", error)

        derived = (
            measurements
            | "Gather" >> beam.combiners.ToList()
            | "Derive" >> beam.FlatMap(derive).with_outputs("errors", main="records")
        )
        return (derived.records, derived.errors) if self._with_errors else derived.records


# --- Tensorize (training data for the trainer) -----------------------------------------------------


class EncodeExamples(beam.PTransform):
    """``ParticipantTensor`` + phenotypes -> (source URI, serialised Example); returns (examples, errors)."""

    def __init__(self, phenotypes_path: str | None):
        super().__init__()
        self._phenotypes_path = phenotypes_path

    def expand(self, participants):
        phenotypes = (
            participants.pipeline
            | "PhenotypesPath" >> beam.Create([self._phenotypes_path or ""])
            | "ReadPhenotypes" >> beam.Map(load_phenotypes)
        )
        encoded = Metrics.counter(NAMESPACE, "examples_encoded")

        def encode(participant, table):
            data = tfrecord_bytes(participant, lookup_phenotype(table, participant.eid, participant.instance))
            encoded.inc()
            return participant.source_uri, data

        examples, bad = (
            participants
            | "Encode" >> beam.Map(encode, beam.pvalue.AsSingleton(phenotypes)).with_exception_handling()
        )
        return examples, bad | "EncodeErrors" >> ToErrorRecords(STAGE_TENSOR)


# --- Writers ---------------------------------------------------------------------------------------


class ValidateMeasurements(beam.PTransform):
    """``Measurement``s -> ``(rows, errors)``: each as its ``MEASUREMENTS_SCHEMA`` row, checked against the
    Parquet types first, so a value the file cannot hold (an int64 overflow, a wrong type) costs that
    measurement a ``write``-stage dead letter instead of failing the writer, and with it the whole run."""

    def expand(self, measurements):
        counted = Metrics.counter(NAMESPACE, "measurement_rows")

        def check(measurement):
            row = measurement_row(measurement, pipeline_version=PIPELINE_VERSION)
            check_measurement_row(row)
            counted.inc()
            return row

        valid, bad = measurements | "Check" >> beam.Map(check).with_exception_handling()
        return valid, bad | "WriteErrors" >> ToErrorRecords(STAGE_WRITE)


class WriteMeasurements(beam.PTransform):
    """Measurement rows -> ``prefix-*.parquet`` (snappy, ``MEASUREMENTS_SCHEMA``): the run's facts, in the
    run's own folder (``ledger.staged_prefix``), where the sink's temp files stay too."""

    def __init__(self, prefix: str, *, num_shards: int = 1):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, rows):
        return rows | "Write" >> WriteToParquet(
            self._prefix, MEASUREMENTS_SCHEMA, codec="snappy", file_name_suffix=".parquet",
            num_shards=self._num_shards, use_compliant_nested_type=True)


class WriteErrors(beam.PTransform):
    """``ErrorRecord``s -> ``prefix-*.parquet`` (``ERRORS_SCHEMA``); an empty-but-valid file when none."""

    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    def expand(self, errors):
        return (
            errors
            | "Rows" >> beam.Map(lambda e: writable_error_row(e.to_row()))
            | "Write" >> WriteToParquet(self._prefix, ERRORS_SCHEMA, codec="snappy",
                                        file_name_suffix=".parquet", num_shards=1,
                                        use_compliant_nested_type=True)
        )


class WriteTFRecords(beam.PTransform):
    """(URI, serialised Example) -> ``prefix-*.tfrecord.gz`` (GZIP, for the trainer): the run's folder,
    from which the finalise moves them to ``OUTPUT/tfrecords/`` once the run is committed."""

    def __init__(self, prefix: str, *, num_shards: int = 0):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards

    def expand(self, examples):
        return (
            examples
            | "Values" >> beam.Values()
            | "Write" >> WriteToTFRecord(self._prefix, file_name_suffix=".tfrecord.gz",
                                         compression_type=CompressionTypes.GZIP, num_shards=self._num_shards)
        )


class CommitRun(beam.PTransform):
    """The run's last step: commit it to the output's ledger, then finalise the folder.

    ``inputs`` is ``(identities, fact_uris, errors, skipped_uris, written_files)``: the inputs processed
    (each input's ``InputIdentity``, as selected), the input of every fact row (measurement or training
    example) the run wrote, its dead letters, the inputs left out as already in the folder, and the file
    names the sinks emit once they have finalised their files. All are side inputs of one element, so
    the step runs only after every file is final. It then calls ``ledger.commit_run`` (the files are read
    back; the run's manifest is written only when they hold every row) and ``ledger.finalise`` (the
    cohort values of every committed run; ``_SUCCESS``).
    Idempotent, so a retried bundle does no harm; a kill anywhere leaves the last commit in force."""

    def __init__(self, output: str, *, run_id: str, fact_options: Mapping[str, Any],
                 options: Mapping[str, Any], settings: ledger.FinaliseSettings, fact_kind: str):
        super().__init__()
        self._output = output
        self._run_id = run_id
        self._fact_options = dict(fact_options)
        self._options = dict(options)
        self._settings = settings
        self._fact_kind = fact_kind

    def expand(self, inputs):
        identities, fact_uris, errors, skipped, written = inputs
        output, run_id, settings, fact_kind = self._output, self._run_id, self._settings, self._fact_kind
        fact_options, options = self._fact_options, self._options

        def commit(_, identity_list, fact_list, error_list, skipped_list, file_list):
            entries = ledger.input_entries(identity_list, fact_list, [e.source_uri for e in error_list])
            ledger.commit_run(output, run_id=run_id, mode=settings.mode, fact_options=fact_options,
                              options=options, inputs=entries, inputs_skipped_existing=len(set(skipped_list)),
                              files=file_list,
                              expected_rows={fact_kind: len(fact_list), ledger.KIND_ERRORS: len(error_list)})
            commit_record = ledger.finalise(output, settings, load_phenotypes(settings.phenotypes_path),
                                            latest_run=run_id)
            return commit_record.generation

        return (
            identities.pipeline
            | "Trigger" >> beam.Create([None])
            | "Commit" >> beam.Map(commit, beam.pvalue.AsList(identities), beam.pvalue.AsList(fact_uris),
                                   beam.pvalue.AsList(errors), beam.pvalue.AsList(skipped),
                                   beam.pvalue.AsList(written))
        )
