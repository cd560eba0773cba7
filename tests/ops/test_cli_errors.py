"""Bad input → exit code + one line naming what to fix; no traceback unless --debug; no key leaks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from klaviyo_source.cli_errors import EXIT_AUTH, EXIT_OK, EXIT_SYNC_FAILED, EXIT_USAGE

WRONG_KEY = "pk_wrong_0123456789abcdef0123456789"


def _one_line(run) -> str:
    assert len(run.err_lines) == 1, run.err
    assert "Traceback" not in run.err
    return run.err_lines[0]


def test_missing_key_is_one_line_usage_error(cli):
    run = cli("sync", "profiles")
    assert run.code == EXIT_USAGE
    line = _one_line(run)
    assert "KLAVIYO_API_KEY" in line and "missing" in line
    assert run.out == ""


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sync", "profiles", "no_such_resource"], "unknown resource 'no_such_resource'"),
        (["sync", "--destination", "nowhere_db"], "unknown destination 'nowhere_db'"),
        (["sync", "--start-date", "2024-13-45"], "--start-date: '2024-13-45' is not a date"),
        (["sync", "--end-date", "yesterday-ish"], "--end-date: 'yesterday-ish' is not a date"),
        (["sync", "--start-date", "2024-03-01", "--end-date", "2024-02-01"], "--start-date must be before --end-date"),
        (["sync", "--start-date", "2999-01-01"], "in the future"),
        (["sync", "profiles", "--full-refresh", "events"], "--full-refresh events: not among the selected"),
        (["sync", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["sync", "--dataset-name", "klaviyo"], "equals the DuckDB file name"),
    ],
)
def test_bad_input_names_what_to_fix(cli, monkeypatch, tmp_path, argv, expected):
    monkeypatch.setenv("KLAVIYO_API_KEY", WRONG_KEY)
    monkeypatch.chdir(tmp_path)
    run = cli(*argv)
    assert run.code == EXIT_USAGE, run.err
    assert expected in _one_line(run)
    assert WRONG_KEY not in run.err + run.out
    assert not (tmp_path / "klaviyo.duckdb").exists()  # nothing was loaded


def test_rejected_key_exits_3_without_leaking_it(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", WRONG_KEY)
    run = cli("sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", str(tmp_path / "k.duckdb"),
              "--progress", "off")
    assert run.code == EXIT_AUTH
    errors = [line for line in run.err_lines if line.startswith("klaviyo-dlt: error:")]
    assert len(errors) == 1 and "Traceback" not in run.err
    assert "401" in errors[0] and "api_key" in errors[0]
    assert WRONG_KEY not in run.err + run.out


def test_debug_shows_traceback_but_never_the_key(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", WRONG_KEY)
    run = cli("--debug", "sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path",
              str(tmp_path / "k.duckdb"), "--progress", "off")
    assert run.code == EXIT_AUTH
    assert "Traceback" in run.err
    assert WRONG_KEY not in run.err + run.out


def test_connections_without_maton_key(cli):
    run = cli("connections", "list")
    assert run.code == EXIT_USAGE
    assert "MATON_API_KEY" in _one_line(run)


def test_console_script_exit_code_and_single_line(tmp_path):
    """The installed ``klaviyo-dlt`` entry point, as a scheduler would run it."""
    env = {k: v for k, v in os.environ.items() if k not in ("KLAVIYO_API_KEY", "SOURCES__KLAVIYO__API_KEY")}
    script = os.path.join(os.path.dirname(sys.executable), "klaviyo-dlt")
    done = subprocess.run([script, "sync", "events", "--start-date", "not-a-date"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip().splitlines() == [
        "klaviyo-dlt: error: --start-date: 'not-a-date' is not a date; use YYYY-MM-DD or ISO 8601 like "
        "2024-01-31T00:00:00Z"
    ]


def test_help_documents_exit_codes(cli):
    run = cli("--help")
    assert run.code == EXIT_OK and "exit codes: 0 ok" in run.out and "4 partial failure" in run.out


def test_json_mode_errors_are_json_lines(cli):
    run = cli("--log-format", "json", "sync", "--start-date", "soon")
    assert run.code == EXIT_USAGE
    (line,) = run.err_lines
    import json

    error = json.loads(line)
    assert error["level"] == "error" and error["exit_code"] == EXIT_USAGE and "--start-date" in error["message"]


def test_klaviyo_error_detail_appears_once(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", WRONG_KEY)
    run = cli("sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", str(tmp_path / "k.duckdb"),
              "--progress", "off")
    assert run.code == EXIT_AUTH
    (line,) = [line for line in run.err_lines if line.startswith("klaviyo-dlt: error:")]
    assert line.count("Incorrect authentication credentials") == 1, line


@pytest.mark.postgres
def test_missing_postgres_password_names_the_field(cli, sandbox, postgres_dsn, monkeypatch):
    monkeypatch.delenv("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", raising=False)
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", "postgresql://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    run = cli("sync", "metrics", "--destination", "postgres", "--base-url", sandbox.base_url, "--progress", "off")
    assert run.code == EXIT_USAGE
    (line,) = [line for line in run.err_lines if line.startswith("klaviyo-dlt: error:")]
    assert "Traceback" not in run.err
    assert "password" in line and "DESTINATION__POSTGRES__CREDENTIALS__PASSWORD" in line, line


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", ["sync", "reverse-sync"])
def test_unreachable_postgres_is_a_run_failure_naming_the_server(cli, sandbox, monkeypatch, command):
    """One rule: anything that fails while connecting to Klaviyo or the destination exits 1."""
    port = _closed_port()
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", f"postgresql://postgres:postgres@127.0.0.1:{port}/test")
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    if command == "sync":
        run = cli("sync", "metrics", "--destination", "postgres", "--base-url", sandbox.base_url, "--progress", "off")
    else:
        run = cli("reverse-sync", "--destination", "postgres", "--table", "profiles", "--email", "email",
                  "--list-name", "x", "--create-list", "--dry-run")
    assert run.code == EXIT_SYNC_FAILED, run.err
    line = [line for line in run.err_lines if line.startswith("klaviyo-dlt: error:")][-1]
    assert "127.0.0.1" in line and str(port) in line and "refused" in line, line


def test_missing_duckdb_directory_shows_the_cause(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    path = str(tmp_path / "no" / "such" / "dir" / "k.duckdb")
    for argv in (("sync", "metrics", "--base-url", sandbox.base_url, "--progress", "off"),
                 ("reverse-sync", "--table", "profiles", "--email", "email", "--list-name", "x", "--dry-run")):
        run = cli(*argv, "--duckdb-path", path)
        assert run.code == EXIT_SYNC_FAILED, run.err
        line = [line for line in run.err_lines if line.startswith("klaviyo-dlt: error:")][-1]
        assert "No such file or directory" in line and path in line, line
        assert "check if you configured" not in line


def _without_file_permission_override() -> list[str]:
    """As root, files' permission bits do not apply; run the CLI without that capability."""
    if os.geteuid() != 0:
        return []
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_read_only_duckdb_file_shows_the_cause(sandbox, tmp_path):
    import duckdb

    path = tmp_path / "read_only.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA klaviyo_data; CREATE TABLE klaviyo_data.profiles AS SELECT 'a@b.co' AS email")
    path.chmod(0o444)
    env = {**os.environ, "KLAVIYO_API_KEY": sandbox.api_key}
    script = os.path.join(os.path.dirname(sys.executable), "klaviyo-dlt")
    for argv in (["sync", "metrics", "--base-url", sandbox.base_url, "--progress", "off"],
                 ["reverse-sync", "--table", "profiles", "--email", "email", "--list-name", "x", "--dry-run"]):
        done = subprocess.run([*_without_file_permission_override(), script, *argv, "--duckdb-path", str(path),
                               "--pipelines-dir", str(tmp_path / "p")],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == EXIT_SYNC_FAILED, done.stderr
        line = [line for line in done.stderr.splitlines() if line.startswith("klaviyo-dlt: error:")][-1]
        assert "Permission denied" in line and str(path) in line, line
        assert "check if you configured" not in line


def test_help_states_the_exit_code_rule(cli):
    run = cli("--help")
    assert "network" in run.out and "1 run failed" in run.out, run.out
