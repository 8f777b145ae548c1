"""The pipeline's output as SQL tables, locally: DuckDB views over the Parquet, and the example queries.

``lvmass`` and ``lvmass_errors`` are the view names ``sql/example_queries.sql`` is written against
(BigQuery external tables carry the same names under a dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from beam_pipeline.schema import ERRORS_DIRNAME, RESULTS_DIRNAME

EXAMPLE_QUERIES_FILE = Path(__file__).resolve().parent / "sql" / "example_queries.sql"


def example_queries(path: Path = EXAMPLE_QUERIES_FILE) -> list[str]:
    """The example file's statements, in order, comments removed."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def connect(output: str) -> Any:
    """An in-memory DuckDB connection with the views ``lvmass`` (hive-partitioned by method) and
    ``lvmass_errors`` over a pipeline output folder."""
    import duckdb

    root = str(output).rstrip("/")
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW lvmass AS SELECT * FROM read_parquet('{root}/{RESULTS_DIRNAME}/*/*.parquet', "
        "hive_partitioning = true)"
    )
    con.execute(
        f"CREATE VIEW lvmass_errors AS SELECT * FROM read_parquet('{root}/{ERRORS_DIRNAME}/*.parquet')"
    )
    return con
