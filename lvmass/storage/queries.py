"""The pipeline's output as SQL tables, locally: DuckDB views over the Parquet, and the example queries.

``lvmass`` and ``lvmass_errors`` are the view names ``sql/example_queries.sql`` is written against
(BigQuery external tables carry the same names under a dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lvmass.core.schema import ERRORS_DIRNAME, RESULTS_DIRNAME

EXAMPLE_QUERIES_FILE = Path(__file__).resolve().parent / "sql" / "example_queries.sql"


def example_queries(path: Path = EXAMPLE_QUERIES_FILE) -> list[str]:
    """The example file's statements, in order, comments removed."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def _sql_files(files: list[str]) -> str:
    """A DuckDB list literal of file paths (quotes doubled)."""
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def connect(output: str) -> Any:
    """An in-memory DuckDB connection with the views ``lvmass`` (hive-partitioned by method) and
    ``lvmass_errors`` over a pipeline output folder.

    The views read the files the folder's ledger commit names (``lvmass.storage.ledger.committed_files``),
    so a run in progress, or one that was stopped, is never half read; a folder without a ledger (files
    written by hand, or by an lvmass older than the ledger) is read as every ``lvmass/*/*.parquet`` and
    ``errors/*.parquet``."""
    import duckdb

    from lvmass.storage import ledger  # reads through Beam's FileSystems: imported here, not with the module

    root = str(output).rstrip("/")
    committed = ledger.committed_files(root, RESULTS_DIRNAME)
    committed_errors = ledger.committed_files(root, ERRORS_DIRNAME)
    results = _sql_files(committed) if committed else f"'{root}/{RESULTS_DIRNAME}/*/*.parquet'"
    errors = _sql_files(committed_errors) if committed_errors else f"'{root}/{ERRORS_DIRNAME}/*.parquet'"
    con = duckdb.connect()
    con.execute(f"CREATE VIEW lvmass AS SELECT * FROM read_parquet({results}, hive_partitioning = true)")
    con.execute(f"CREATE VIEW lvmass_errors AS SELECT * FROM read_parquet({errors})")
    return con
