"""Files: where the domain's records are read from and written to, locally and on ``gs://``.

Beam's ``FileSystems`` as the one file-system client (:mod:`lvmass.storage.filesystems`), the output
folder's ledger and its finalise step (:mod:`lvmass.storage.ledger`), the output as SQL tables (DuckDB,
:mod:`lvmass.storage.queries`; BigQuery DDL, :mod:`lvmass.storage.bigquery` and ``sql/``) and TFRecords
(:mod:`lvmass.storage.tfrecord`). It imports :mod:`lvmass.core`, never a pipeline, trainer or analysis.
"""
