"""Read the audience (a table or a SQL query) from the destination dataset as Arrow.

The warehouse is reached through a dlt pipeline bound to the same destination and
dataset the extraction loads into (DuckDB file or PostgreSQL), so credentials and
dataset naming follow dlt's rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa

from klaviyo_source.db_errors import describe, is_unavailable
from klaviyo_source.loaded_files import drop_loaded_files

PIPELINE_NAME = "klaviyo_reverse_sync"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SourceError(ValueError):
    """The audience table/query cannot be read; the message says why."""


class WarehouseUnavailable(SourceError):
    """The warehouse could not be reached or opened (server down, file missing or read-only): a
    run-time failure, unlike a wrong table, query or column."""


def resolve_destination(destination: Any, credentials: Any = None) -> Any:
    """``"duckdb"``/``"postgres"`` + credentials (file path / DSN), a path ending in ``.duckdb``,
    a ``postgresql://`` DSN, or a ready dlt destination."""
    if not isinstance(destination, str):
        return destination
    if destination.startswith(("postgresql://", "postgres://")):
        return dlt.destinations.postgres(destination)
    if destination.endswith(".duckdb"):
        return dlt.destinations.duckdb(str(Path(destination).resolve()))
    if destination == "duckdb":
        return dlt.destinations.duckdb(str(Path(credentials).resolve()) if credentials else None)
    if destination == "postgres":
        return dlt.destinations.postgres(credentials)
    raise SourceError(f"unknown destination {destination!r}: use duckdb, postgres, a .duckdb path or a postgresql:// DSN")


class Warehouse:
    """The destination dataset, opened through a dlt pipeline (reads via its SQL client)."""

    def __init__(self, destination: Any, dataset_name: str, *, credentials: Any = None,
                 pipelines_dir: str | None = None, pipeline_name: str = PIPELINE_NAME):
        if pipeline_name == dataset_name:  # DuckDB fails when they are equal
            pipeline_name = f"{pipeline_name}_rs"
        self.dataset_name = dataset_name
        self.pipeline = dlt.pipeline(
            pipeline_name=pipeline_name,
            destination=resolve_destination(destination, credentials),
            dataset_name=dataset_name,
            pipelines_dir=pipelines_dir,
        )
        drop_loaded_files(self.pipeline)  # state rows (emails) stay in the warehouse only
        self.is_duckdb = self.pipeline.destination.destination_type.endswith("duckdb")

    def read_arrow(self, sql: str) -> pa.Table:
        """Run a query in the dataset and return all rows as one Arrow table."""
        with self.pipeline.sql_client() as client:
            if self.is_duckdb:
                # dlt's DB-API cursor.arrow() calls fetch_arrow_table(), gone in duckdb 2.x
                return client.native_connection.sql(sql).to_arrow_table()
            with client.execute_query(sql) as cursor:
                table = cursor.arrow()
                return table if table is not None else pa.table({})

    def table_exists(self, table: str) -> bool:
        return table in self.table_columns_map()

    def table_columns(self, table: str) -> list[str]:
        return self.table_columns_map().get(table, [])

    def table_columns_map(self) -> dict[str, list[str]]:
        """Tables of the dataset and their columns (information_schema, both engines)."""
        with self.pipeline.sql_client() as client:
            if not client.has_dataset():
                return {}
            schema = client.fully_qualified_dataset_name(quote=False)
            rows = client.execute_sql(
                "select table_name, column_name from information_schema.columns "
                "where table_schema = %s order by ordinal_position", schema)
        found: dict[str, list[str]] = {}
        for table, column in rows or []:
            found.setdefault(table, []).append(column)
        return found


def audience_sql(table: str | None, query: str | None) -> str:
    """The SQL that yields the audience rows: the query as given, or ``select * from <table>``."""
    if query is not None:
        return query.strip().rstrip(";")
    parts = (table or "").split(".")
    if not all(_IDENTIFIER.match(p) for p in parts):
        raise SourceError(f"table {table!r} is not a plain table name; use `query` for anything else")
    return "select * from " + ".".join(f'"{p}"' for p in parts)


def read_audience(warehouse: Warehouse, table: str | None, query: str | None, columns: list[str]) -> pa.Table:
    """Read the audience and check the mapped columns exist (one line naming the missing ones)."""
    sql = audience_sql(table, query)
    try:
        rows = warehouse.read_arrow(sql)
    except Exception as exc:  # noqa: BLE001 - the database's own message is the useful part
        error = WarehouseUnavailable if is_unavailable(exc) else SourceError
        raise error(f"cannot read the audience from dataset {warehouse.dataset_name!r}: {describe(exc)}") from None
    if rows.num_rows == 0 and not rows.column_names:  # empty result without a schema (DB-API path)
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise SourceError(
            f"mapped column(s) {', '.join(missing)} not in the audience; it has: {', '.join(rows.column_names)}")
    return rows
