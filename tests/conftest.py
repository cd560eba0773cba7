"""Shared fixtures: destinations (DuckDB file, the real PostgreSQL server) and CI strictness.

Under ``KLAVIYO_DLT_CI=1`` (set by ``.ci/run``) tests that need PostgreSQL fail when it
is unreachable; elsewhere (a laptop without PostgreSQL) they skip and say why.
"""

from __future__ import annotations

import os
import uuid

import pytest

# every sandbox response during the suite is validated against the Klaviyo spec (drift fails the test)
pytest_plugins = ["klaviyo_sandbox.conformance_plugin"]

POSTGRES_DSN = os.environ.get("KLAVIYO_DLT_TEST_POSTGRES", "postgresql://postgres:postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("KLAVIYO_DLT_CI") == "1"


def _postgres_reachable() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_DSN, connect_timeout=3).close()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The DSN of the test PostgreSQL server; skips (or fails under CI) when unreachable."""
    problem = _postgres_reachable()
    if problem:
        message = f"PostgreSQL at {POSTGRES_DSN} unreachable ({problem}); set KLAVIYO_DLT_TEST_POSTGRES"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_DSN


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def destination(request, tmp_path):
    """A dlt destination for one test: a DuckDB file under tmp_path, or the real PostgreSQL server."""
    import dlt

    if request.param == "duckdb":
        return dlt.destinations.duckdb(str(tmp_path / "klaviyo.duckdb"))
    dsn = request.getfixturevalue("postgres_dsn")
    return dlt.destinations.postgres(dsn)


@pytest.fixture
def unique_name() -> str:
    """A short unique suffix for pipeline and dataset names (tests share one PostgreSQL)."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def _fresh_pacers():
    """Every test starts with fresh rate pacers (they are shared per endpoint within a process)."""
    from klaviyo_source.pacing import PACERS

    PACERS.clear()
    yield
    PACERS.clear()


class SourceRunner:
    """Runs the Klaviyo source against a sandbox into one destination and reads the tables back."""

    pipeline_prefix = "kt"
    dataset_prefix = "klaviyo"
    source_defaults: dict = {}

    def __init__(self, sb, destination, tmp_path, name: str):
        self.sb = sb
        self.destination = destination
        self.pipelines_dir = str(tmp_path / "pipelines")
        self.name = name
        self.dataset = f"{self.dataset_prefix}_{name}"

    def pipeline(self):
        import dlt

        return dlt.pipeline(pipeline_name=f"{self.pipeline_prefix}_{self.name}", destination=self.destination,
                            dataset_name=self.dataset, pipelines_dir=self.pipelines_dir)

    def source(self, **kwargs):
        from klaviyo_source import klaviyo_source

        kwargs = {"api_key": self.sb.api_key, "base_url": self.sb.base_url, **self.source_defaults, **kwargs}
        return klaviyo_source(**kwargs)

    def run(self, resources: list[str] | None = None, **kwargs):
        pipeline = self.pipeline()
        file_format = "parquet" if self.destination.destination_name == "duckdb" else None
        info = pipeline.run(self.source(resources=resources, **kwargs), loader_file_format=file_format)
        return pipeline, info

    def rows(self, sql: str) -> list[tuple]:
        with self.pipeline().sql_client() as client:
            return [tuple(r) for r in client.execute_sql(sql)]

    def ids(self, table: str) -> list[str]:
        return [r[0] for r in self.rows(f"SELECT id FROM {table}")]

    def count(self, table: str, where: str = "") -> int:
        return self.rows(f"SELECT count(*) FROM {table}{' WHERE ' + where if where else ''}")[0][0]
