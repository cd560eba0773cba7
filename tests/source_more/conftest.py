"""Fixtures for the issue #4 resources: a fresh sandbox per test and a runner into one destination."""

from __future__ import annotations

import os
from typing import Any

import dlt
import pytest

from klaviyo_source import klaviyo_source
from klaviyo_source.pacing import PACERS

SMALL = dict(seed=11, accounts=1, profiles=150, events=1500)

# The test server uses trust auth; dlt insists on a password field being present.
os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused-trust-auth")


@pytest.fixture
def sandbox():
    """A fresh sandbox (tests delete and change its data)."""
    from klaviyo_sandbox import Sandbox

    with Sandbox(rate_limits=False, **SMALL) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _fresh_pacers():
    PACERS.clear()
    yield
    PACERS.clear()


class Runner:
    """Runs the source against the sandbox into one destination and reads the tables back."""

    def __init__(self, sb: Any, destination: Any, tmp_path: Any, name: str):
        self.sb = sb
        self.destination = destination
        self.pipelines_dir = str(tmp_path / "pipelines")
        self.name = name

    def pipeline(self) -> dlt.Pipeline:
        return dlt.pipeline(pipeline_name=f"km_{self.name}", destination=self.destination,
                            dataset_name=f"klaviyo_more_{self.name}", pipelines_dir=self.pipelines_dir)

    def run(self, resources: list[str] | None = None, **kwargs: Any):
        kwargs.setdefault("api_key", self.sb.api_key)
        kwargs.setdefault("base_url", self.sb.base_url)
        kwargs.setdefault("rate_limit_scale", 0.001)  # paced, with the sandbox's limits off
        pipeline = self.pipeline()
        file_format = "parquet" if self.destination.destination_name == "duckdb" else None
        info = pipeline.run(klaviyo_source(resources=resources, **kwargs), loader_file_format=file_format)
        return pipeline, info

    def rows(self, sql: str) -> list[tuple]:
        with self.pipeline().sql_client() as client:
            return [tuple(r) for r in client.execute_sql(sql)]

    def count(self, table: str, where: str = "") -> int:
        return self.rows(f"SELECT count(*) FROM {table}{' WHERE ' + where if where else ''}")[0][0]


@pytest.fixture
def runner(sandbox, destination, tmp_path, unique_name):
    return Runner(sandbox, destination, tmp_path, unique_name)


def truth(sb: Any, type_: str) -> list[Any]:
    """Every stored record of a type (the sandbox's ground truth)."""
    return sb.store.all(sb.account.id, type_)


def truth_links(sb: Any, link: str) -> set[tuple[str, str]]:
    rows = sb.store.execute("SELECT a, b FROM links WHERE account = ? AND link = ?", [sb.account.id, link]).fetchall()
    return {(a, b) for a, b in rows}

