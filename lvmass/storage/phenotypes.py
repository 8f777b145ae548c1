"""The phenotype file (CSV or Parquet, local or ``gs://``) read into ``lvmass.core.phenotypes``' table: the
one opener the pipeline and the analysis share."""

from __future__ import annotations

from lvmass.core.phenotypes import PhenotypeTable, read_phenotype_table
from lvmass.storage import filesystems


def read_phenotype_file(path: str, *, lenient: bool = False) -> PhenotypeTable:
    """The table of the file at ``path`` (``read_phenotype_table``: ``lenient`` keeps going past bad rows,
    recording them as ``rejected``). ``OSError`` when it cannot be read, ``ValueError`` (naming the file)
    when it is not a phenotype table."""
    with filesystems.open_read(path) as stream:
        return read_phenotype_table(filesystems.ensure_seekable(stream), source=path, lenient=lenient)
