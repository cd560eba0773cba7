"""Fixtures for the operational surface: a sandbox with three accounts (each with a Maton
connection), and a helper that runs the ``klaviyo-dlt`` CLI in-process with its exit code."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from klaviyo_source.pacing import PACERS

# trust auth on the test server; dlt wants a password field to be present
os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused-trust-auth")

SIZES = dict(profiles=120, events=1200)


@pytest.fixture(autouse=True)
def _fresh_pacers():
    PACERS.clear()
    yield
    PACERS.clear()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No ambient keys: every test states the credentials it uses."""
    for name in ("KLAVIYO_API_KEY", "MATON_API_KEY", "MATON_CTRL_URL", "SOURCES__KLAVIYO__API_KEY",
                 "SOURCES__KLAVIYO__ACCOUNTS", "RUNTIME__LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    yield
    os.environ.pop("RUNTIME__LOG_FORMAT", None)  # set by --log-format json


@pytest.fixture
def sandbox():
    """A fresh one-account sandbox (function scope: tests change data, faults and connections)."""
    from klaviyo_sandbox import Sandbox

    with Sandbox(seed=11, accounts=1, rate_limits=False, **SIZES) as sb:
        yield sb


@pytest.fixture
def sandbox3():
    """A fresh sandbox with three accounts, each reachable through its own Maton connection."""
    from klaviyo_sandbox import Sandbox

    with Sandbox(seed=11, accounts=3, rate_limits=False, **SIZES) as sb:
        yield sb


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys, tmp_path):
    """``cli(*argv)`` runs ``klaviyo-dlt`` in this process; returns exit code, stdout, stderr.

    Commands that take ``--pipelines-dir`` get one under ``tmp_path`` unless given."""
    from klaviyo_source.cli import main

    def run(*argv: str) -> CliRun:
        args = list(argv)
        command = next((a for a in args if not a.startswith("-") and a not in ("json", "text")), None)
        if command in ("sync", "status", "reverse-sync") and "--pipelines-dir" not in args:
            args += ["--pipelines-dir", str(tmp_path / "pipelines")]
        capsys.readouterr()
        code = main(args)
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run
