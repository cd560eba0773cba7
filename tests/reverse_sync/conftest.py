"""Fixtures of the reverse-sync tests: a sandbox whose incoming requests are counted, the warehouse
(DuckDB file or the real PostgreSQL, from the shared ``destination`` fixture) and audience loading."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import dlt
import pyarrow as pa
import pytest

from klaviyo_sandbox import Sandbox
from klaviyo_source.reverse_sync import make_client


class RequestCounter:
    """WSGI middleware in front of the sandbox: counts the requests that really arrive, by method + path."""

    def __init__(self, app: Any):
        self.app = app
        self.seen: Counter[tuple[str, str]] = Counter()
        self.order: list[tuple[str, str]] = []  # every request, in arrival order
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/api/"):
            with self._lock:
                self.seen[(environ["REQUEST_METHOD"], path)] += 1
                self.order.append((environ["REQUEST_METHOD"], path))
        return self.app(environ, start_response)

    def __getattr__(self, name: str) -> Any:  # route(), mount() ... reach the real app
        return getattr(self.app, name)

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.order.clear()

    def total(self, method: str | None = None, prefix: str = "") -> int:
        return sum(n for (m, p), n in self.seen.items() if (method is None or m == method) and p.startswith(prefix))

    def writes(self) -> int:
        return sum(n for (m, _), n in self.seen.items() if m != "GET")


@pytest.fixture(scope="module", autouse=True)
def _no_airflow_secrets_lookups():
    """With apache-airflow installed dlt asks Airflow Variables for every config key (~20 ms each);
    these tests configure everything explicitly, so switch that provider off while they run."""
    import os

    from dlt.common.configuration.container import Container
    from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext

    previous = os.environ.get("PROVIDERS__ENABLE_AIRFLOW_SECRETS")
    os.environ["PROVIDERS__ENABLE_AIRFLOW_SECRETS"] = "false"
    Container()[PluggableRunContext].reload_providers()
    yield
    if previous is None:
        os.environ.pop("PROVIDERS__ENABLE_AIRFLOW_SECRETS", None)
    else:
        os.environ["PROVIDERS__ENABLE_AIRFLOW_SECRETS"] = previous
    Container()[PluggableRunContext].reload_providers()


@pytest.fixture(autouse=True)
def _postgres_password(monkeypatch):
    # dlt wants a password in the credentials even for the trust-auth test server
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused-trust-auth")


@pytest.fixture
def sandbox():
    """A small sandbox (no rate limits) with a request counter in front; yields (sandbox, counter)."""
    sb = Sandbox(seed=11, accounts=1, profiles=20, events=0, rate_limits=False)
    counter = RequestCounter(sb.app)
    sb.app = counter
    with sb:
        yield sb, counter


@pytest.fixture
def client(sandbox):
    sb, _ = sandbox
    return make_client(sb.api_key, sb.base_url, pacing=False, max_attempts=3, backoff_factor=0.05)


@pytest.fixture
def warehouse(destination, unique_name, tmp_path):
    """Where the audience lives: (destination, dataset name, pipelines dir); PostgreSQL schemas are dropped after."""
    dataset = f"rs_{unique_name}"
    yield destination, dataset, str(tmp_path / "pipelines")
    if destination.destination_type.endswith("postgres"):
        pipeline = dlt.pipeline("rs_cleanup", destination=destination, dataset_name=dataset,
                                pipelines_dir=str(tmp_path / "cleanup"))
        with pipeline.sql_client() as sql:
            if sql.has_dataset():
                sql.drop_dataset()


def load_table(warehouse, table_name: str, rows: list[dict[str, Any]] | pa.Table) -> None:
    """Replace ``table_name`` in the warehouse dataset with ``rows``.

    Test setup writes through the destination's SQL client (a dlt load costs seconds per call,
    and the suite loads dozens of small audiences); the round-trip test loads through dlt."""
    destination, dataset, pipelines_dir = warehouse
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    pipeline = dlt.pipeline("rs_audience_loader", destination=destination, dataset_name=dataset,
                            pipelines_dir=pipelines_dir + "_loader")
    with pipeline.sql_client() as sql:
        if not sql.has_dataset():
            sql.create_dataset()
        name = sql.make_qualified_table_name(table_name)
        if destination.destination_type.endswith("duckdb"):
            connection = sql.native_connection
            connection.register("_audience_rows", table)
            connection.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _audience_rows")
            connection.unregister("_audience_rows")
            return
        types = {pa.types.is_boolean: "boolean", pa.types.is_integer: "bigint", pa.types.is_floating: "double precision"}
        columns = ", ".join(
            f'"{field.name}" ' + next((t for check, t in types.items() if check(field.type)), "text")
            for field in table.schema)
        sql.execute_sql(f"DROP TABLE IF EXISTS {name}")
        sql.execute_sql(f"CREATE TABLE {name} ({columns})")
        if table.num_rows:
            from psycopg2.extras import execute_values

            with sql.native_connection.cursor() as cursor:
                execute_values(cursor, f"INSERT INTO {name} VALUES %s",
                               [tuple(r.values()) for r in table.to_pylist()])
            sql.native_connection.commit()


@pytest.fixture
def load(warehouse):
    """``load(table_name, rows)``: replace a table of the warehouse dataset."""
    return lambda table_name, rows: load_table(warehouse, table_name, rows)
