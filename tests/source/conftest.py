"""Sandbox and pipeline helpers for the source tests (real sandbox over HTTP, real destinations)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import SourceRunner

SMALL = dict(seed=7, accounts=1, profiles=220, events=2000)

# The test server uses trust auth; dlt insists on a password field being present.
os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused-trust-auth")


@pytest.fixture
def sandbox():
    """A fresh sandbox (function scope: tests change its data)."""
    from klaviyo_sandbox import Sandbox

    with Sandbox(rate_limits=False, **SMALL) as sb:
        yield sb


class Runner(SourceRunner):
    """Source runs into pipelines ``kt_<name>`` / datasets ``klaviyo_<name>``."""


@pytest.fixture
def runner(sandbox, destination, tmp_path, unique_name):
    return Runner(sandbox, destination, tmp_path, unique_name)


def truth_ids(sb: Any, type_: str) -> set[str]:
    """Ids of every record of a type, from the sandbox's ground truth."""
    return {r["id"] for r in sb.control.records(type_)}
