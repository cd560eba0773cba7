"""Keys with surrounding whitespace (a secrets file's trailing newline) work, and no key — nor any
pushed email or name — is left in anything a run writes: stdout, stderr (dlt at DEBUG, ``--debug``
tracebacks), the pipeline folders (decoded trace pickles, load packages) and the destination tables.
Every path reads a key: sync, reverse sync and the Maton key; text and JSON logs.

Each run is a real ``klaviyo-dlt`` process with its own HOME and working directory, so whatever it
leaves is under one folder that is searched completely.  Pushed emails do live in the warehouse (the
audience and the reverse sync's state are tables there); everywhere else they must not appear.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from klaviyo_source.cli_errors import EXIT_AUTH, EXIT_OK

pytestmark = pytest.mark.slow

# distinctive keys: their middles are searched too, so a cut-off key is also found
KEY = "pk_leakcheck_7f3a9c2e5b1d4e6f8a0b2c4d6e8f0a1b"
MATON_KEY = "maton_leakcheck_c0ffee51d3a7b9e2f4a6c8e0b2d4"
WRONG_KEY = "pk_wrongkey_9e8d7c6b5a4f3e2d1c0b9a8f7e6d"
WRONG_MATON_KEY = "maton_wrongkey_1a2b3c4d5e6f7a8b9c0d1e2f"
AUDIENCE = [(f"leakcheck.person{i}@example.org", f"Leakfirstname{i}") for i in range(40)]


def _needles(secret: str) -> list[str]:
    body = secret.split("_")[-1]
    return [secret, body[:16], body[-16:]]


def _surrounded(key: str) -> str:
    return f"  {key}\n"  # as `KEY="$(cat secret)"$'\n'` or a padded secrets file gives it


@pytest.fixture(scope="module")
def sandbox():
    from klaviyo_sandbox import Sandbox

    with Sandbox(seed=5, accounts=1, profiles=60, events=300, rate_limits=False, api_key=KEY,
                 maton_api_key=MATON_KEY) as sb:
        yield sb


@dataclass
class Run:
    code: int
    out: str
    err: str
    root: Path

    def leftovers(self) -> dict[str, str]:
        """Every file the run left under its folder, as text: pickles decoded, gzip inflated,
        parquet read; DuckDB files as the text of every row of every table."""
        found = {"<stdout>": self.out, "<stderr>": self.err}
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            found[str(path.relative_to(self.root))] = _as_text(path)
        return found


def _as_text(path: Path) -> str:
    raw = path.read_bytes()
    text = raw.decode("utf-8", "replace")
    if path.suffix == ".pickle":
        return text + "\n" + repr(pickle.loads(raw))
    if path.suffix == ".gz":
        return gzip.decompress(raw).decode("utf-8", "replace")
    if path.suffix == ".parquet":
        return repr(pq.read_table(path).to_pylist())
    if path.suffix == ".duckdb":
        return _duckdb_text(path)
    return text


def _duckdb_text(path: Path) -> str:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
        return "\n".join(repr(con.execute(f'SELECT * FROM "{s}"."{t}"').fetchall()) for s, t in tables)


def _klaviyo_dlt(tmp_path: Path, args: list[str], **env: str) -> Run:
    root = tmp_path / "run"
    (root / "home").mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("KLAVIYO_", "MATON_", "SOURCES__", "RUNTIME__"))}
    clean.update(HOME=str(root / "home"), RUNTIME__LOG_LEVEL="DEBUG", PROVIDERS__ENABLE_AIRFLOW_SECRETS="false",
                 **env)
    done = subprocess.run([sys.executable, "-m", "klaviyo_source.cli", *args], cwd=root, env=clean,
                          capture_output=True, text=True, timeout=600)
    return Run(done.returncode, done.stdout, done.stderr, root)


def _assert_nowhere(run: Run, needles: list[str], skip_warehouse: bool = False) -> None:
    for where, text in run.leftovers().items():
        if skip_warehouse and where.endswith(".duckdb"):
            continue
        for needle in needles:
            assert needle not in text, f"{needle!r} found in {where}"


def _warehouse_with_audience(tmp_path: Path) -> Path:
    db = tmp_path / "run" / "warehouse.duckdb"
    db.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA klaviyo_data")
        con.execute("CREATE TABLE klaviyo_data.audience (email VARCHAR, first_name VARCHAR)")
        con.executemany("INSERT INTO klaviyo_data.audience VALUES (?, ?)", AUDIENCE)
    return db


def _format_args(log_format: str) -> list[str]:
    return ["--debug", "--log-format", log_format]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sync_reads_a_key_with_whitespace_and_leaves_it_nowhere(sandbox, tmp_path, log_format):
    args = [*_format_args(log_format), "sync", "profiles", "lists", "--base-url", sandbox.base_url,
            "--duckdb-path", "k.duckdb", "--pipelines-dir", "pipelines", "--progress", "off"]
    run = _klaviyo_dlt(tmp_path, args, KLAVIYO_API_KEY=_surrounded(KEY))
    assert run.code == EXIT_OK, run.err
    with duckdb.connect(str(run.root / "k.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM klaviyo_data.profiles").fetchall()[0][0] == 60
    assert (run.root / "pipelines" / "klaviyo" / "trace.pickle").exists()
    _assert_nowhere(run, _needles(KEY))
    # extracted people are in the warehouse only: not in the logs, not left in the pipeline folder
    emails = [p.attributes["email"] for p in sandbox.store.all(sandbox.account.id, "profile")
              if p.attributes.get("email")]
    assert len(emails) > 30
    _assert_nowhere(run, emails, skip_warehouse=True)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sync_with_a_rejected_key_with_whitespace_leaves_it_nowhere(sandbox, tmp_path, log_format):
    args = [*_format_args(log_format), "sync", "profiles", "--base-url", sandbox.base_url,
            "--duckdb-path", "k.duckdb", "--pipelines-dir", "pipelines", "--progress", "off"]
    run = _klaviyo_dlt(tmp_path, args, KLAVIYO_API_KEY=_surrounded(WRONG_KEY))
    assert run.code == EXIT_AUTH, run.err
    assert "401" in run.err
    assert (run.root / "pipelines" / "klaviyo" / "trace.pickle").exists()
    _assert_nowhere(run, _needles(WRONG_KEY))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_reverse_sync_at_debug_logs_no_key_and_no_pushed_person(sandbox, tmp_path, log_format):
    db = _warehouse_with_audience(tmp_path)
    list_name = f"Leak check {log_format}"
    args = [*_format_args(log_format), "reverse-sync", "--table", "audience", "--email", "email",
            "--attribute", "first_name=first_name", "--list-name", list_name, "--create-list", "--list-mode",
            "mirror", "--base-url", sandbox.base_url, "--duckdb-path", "warehouse.duckdb", "--pipelines-dir",
            "pipelines"]
    people = [value for pair in AUDIENCE for value in pair] + ["leakcheck.person", "Leakfirstname"]
    run = _klaviyo_dlt(tmp_path, args, KLAVIYO_API_KEY=_surrounded(KEY))
    assert run.code == EXIT_OK, run.err
    assert "DEBUG" in run.err.upper() or '"debug"' in run.err  # dlt did log at DEBUG
    pushed = {p.attributes["email"] for p in sandbox.store.all(sandbox.account.id, "profile")}
    assert {email for email, _ in AUDIENCE} <= pushed
    _assert_nowhere(run, _needles(KEY))
    _assert_nowhere(run, people, skip_warehouse=True)

    # five people leave the audience: mirror mode looks their profile ids up by email and removes them
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM klaviyo_data.audience WHERE email IN (SELECT email FROM klaviyo_data.audience "
                    "ORDER BY email LIMIT 5)")
    again = _klaviyo_dlt(tmp_path, args, KLAVIYO_API_KEY=_surrounded(KEY))
    assert again.code == EXIT_OK, again.err
    lists = {r.attributes["name"]: r.id for r in sandbox.store.all(sandbox.account.id, "list")}
    assert len(sandbox.store.members(sandbox.account.id, "list", lists[list_name])) == len(AUDIENCE) - 5
    assert re.search(r"GET request to http\S*/api/profiles(?![\w/-])", again.err)  # the lookup by email ran
    _assert_nowhere(again, _needles(KEY))
    _assert_nowhere(again, people, skip_warehouse=True)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_reverse_sync_with_a_rejected_key_with_whitespace_leaves_it_nowhere(sandbox, tmp_path, log_format):
    _warehouse_with_audience(tmp_path)
    args = [*_format_args(log_format), "reverse-sync", "--table", "audience", "--email", "email",
            "--list-name", "Never created", "--create-list",
            "--base-url", sandbox.base_url, "--duckdb-path", "warehouse.duckdb", "--pipelines-dir", "pipelines"]
    run = _klaviyo_dlt(tmp_path, args, KLAVIYO_API_KEY=_surrounded(WRONG_KEY))
    assert run.code == EXIT_AUTH, run.err
    _assert_nowhere(run, _needles(WRONG_KEY))
    _assert_nowhere(run, [email for email, _ in AUDIENCE], skip_warehouse=True)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_maton_key_with_whitespace_syncs_and_is_left_nowhere(sandbox, tmp_path, log_format):
    connection = sandbox.account.maton_connection_id
    args = [*_format_args(log_format), "sync", "profiles", "--auth", "maton", "--maton-connection", connection,
            "--base-url", f"{sandbox.base_url}/klaviyo", "--duckdb-path", "k.duckdb", "--pipelines-dir", "pipelines",
            "--progress", "off"]
    run = _klaviyo_dlt(tmp_path, args, MATON_API_KEY=_surrounded(MATON_KEY))
    assert run.code == EXIT_OK, run.err
    listed = _klaviyo_dlt(tmp_path, [*_format_args(log_format), "connections", "--ctrl-url", sandbox.base_url, "list"],
                          MATON_API_KEY=_surrounded(MATON_KEY))
    assert listed.code == EXIT_OK, listed.err
    assert connection in listed.out
    _assert_nowhere(run, _needles(MATON_KEY))
    _assert_nowhere(listed, _needles(MATON_KEY))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_rejected_maton_key_with_whitespace_is_left_nowhere(sandbox, tmp_path, log_format):
    args = [*_format_args(log_format), "sync", "profiles", "--auth", "maton", "--maton-connection",
            sandbox.account.maton_connection_id, "--base-url", f"{sandbox.base_url}/klaviyo", "--duckdb-path",
            "k.duckdb", "--pipelines-dir", "pipelines", "--progress", "off"]
    run = _klaviyo_dlt(tmp_path, args, MATON_API_KEY=_surrounded(WRONG_MATON_KEY))
    assert run.code == EXIT_AUTH, run.err
    _assert_nowhere(run, _needles(WRONG_MATON_KEY))
