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
