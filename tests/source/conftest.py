"""Sandbox and pipeline helpers for the source tests (real sandbox over HTTP, real destinations)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import dlt
import pytest

from klaviyo_source import klaviyo_source
from klaviyo_source.pacing import PACERS

SMALL = dict(seed=7, accounts=1, profiles=220, events=2000)

# The test server uses trust auth; dlt insists on a password field being present.
os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused-trust-auth")


@pytest.fixture
def sandbox():
    """A fresh sandbox (function scope: tests change its data)."""
    from klaviyo_sandbox import Sandbox

    with Sandbox(rate_limits=False, **SMALL) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _fresh_pacers():
    PACERS.clear()
    yield
    PACERS.clear()


class Runner:
    """Runs the Klaviyo source against a sandbox into one destination, in one pipelines_dir."""

    def __init__(self, sb: Any, destination: Any, tmp_path: Any, name: str):
        self.sb = sb
        self.destination = destination
        self.pipelines_dir = str(tmp_path / "pipelines")
        self.name = name
        self.dataset = f"klaviyo_{name}"

    def pipeline(self) -> dlt.Pipeline:
        return dlt.pipeline(
            pipeline_name=f"kt_{self.name}",
            destination=self.destination,
            dataset_name=self.dataset,
            pipelines_dir=self.pipelines_dir,
        )

    def source(self, **kwargs: Any):
        kwargs.setdefault("api_key", self.sb.api_key)
        kwargs.setdefault("base_url", self.sb.base_url)
        return klaviyo_source(**kwargs)

    def run(self, resources: list[str] | None = None, **kwargs: Any):
        pipeline = self.pipeline()
        source = self.source(resources=resources, **kwargs)
        file_format = "parquet" if self.destination.destination_name == "duckdb" else None
        info = pipeline.run(source, loader_file_format=file_format)
        return pipeline, info

    def rows(self, sql: str) -> list[tuple]:
        with self.pipeline().sql_client() as client:
            return [tuple(r) for r in client.execute_sql(sql)]

    def ids(self, table: str) -> list[str]:
        return [r[0] for r in self.rows(f"SELECT id FROM {table}")]


@pytest.fixture
def runner(sandbox, destination, tmp_path, unique_name):
    return Runner(sandbox, destination, tmp_path, unique_name)


def truth_ids(sb: Any, type_: str) -> set[str]:
    """Ids of every record of a type, from the sandbox's ground truth."""
    return {r["id"] for r in sb.control.records(type_)}
