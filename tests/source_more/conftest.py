"""Fixtures for the issue #4 resources: a fresh sandbox per test and a runner into one destination."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import SourceRunner

SMALL = dict(seed=11, accounts=1, profiles=150, events=1500)

# The test server uses trust auth; dlt insists on a password field being present.
os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused-trust-auth")


@pytest.fixture
def sandbox():
    """A fresh sandbox (tests delete and change its data)."""
    from klaviyo_sandbox import Sandbox

    with Sandbox(rate_limits=False, **SMALL) as sb:
        yield sb


class Runner(SourceRunner):
    """Source runs into pipelines ``km_<name>`` / datasets ``klaviyo_more_<name>``, paced with the sandbox's limits off."""

    pipeline_prefix = "km"
    dataset_prefix = "klaviyo_more"
    source_defaults = {"rate_limit_scale": 0.001}


@pytest.fixture
def runner(sandbox, destination, tmp_path, unique_name):
    return Runner(sandbox, destination, tmp_path, unique_name)


def truth(sb: Any, type_: str) -> list[Any]:
    """Every stored record of a type (the sandbox's ground truth)."""
    return sb.store.all(sb.account.id, type_)


def truth_links(sb: Any, link: str) -> set[tuple[str, str]]:
    rows = sb.store.execute("SELECT a, b FROM links WHERE account = ? AND link = ?", [sb.account.id, link]).fetchall()
    return {(a, b) for a, b in rows}

