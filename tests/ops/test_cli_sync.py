"""``klaviyo-dlt sync`` / ``status`` against the sandbox over HTTP, into DuckDB and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import duckdb
import pytest

from klaviyo_source.cli_errors import EXIT_OK


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _duck(path, sql: str):
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def _truth(sb, type_: str, account: int = 0):
    return sb.store.all(sb.accounts[account].id, type_)


def test_sync_into_duckdb_then_incremental_then_status(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    db = tmp_path / "warehouse.duckdb"
    run = cli("sync", "profiles", "events", "metrics", "--base-url", sandbox.base_url, "--duckdb-path", str(db),
              "--progress", "text")
    assert run.code == EXIT_OK, run.err

    profiles, events, metrics = (_truth(sandbox, t) for t in ("profile", "event", "metric"))
    assert {r[0] for r in _duck(db, "SELECT id FROM klaviyo_data.profiles")} == {p.id for p in profiles}
    assert {r[0] for r in _duck(db, "SELECT id FROM klaviyo_data.events")} == {e.id for e in events}
    assert _duck(db, "SELECT count(*) FROM klaviyo_data.metrics")[0][0] == len(metrics)
    # the summary table names each table with its row count; progress went to stderr
    for table, count in (("profiles", len(profiles)), ("events", len(events)), ("metrics", len(metrics))):
        assert any(table in line and f" {count} " in line for line in run.out.splitlines()), run.out
    assert f"events {len(events):,}" in run.err

    # one profile changes upstream: the next run loads exactly that one
    changed = profiles[5].id
    sandbox.control.update_profile(changed, {"first_name": "Renamed"})
    run = cli("--log-format", "json", "sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", str(db),
              "--progress", "off")
    assert run.code == EXIT_OK, run.err
    second = json.loads(run.out)["rows"]["profiles"]
    assert 1 <= second < len(profiles)  # the change (plus the boundary re-read), not a reload
    assert _duck(db, f"SELECT first_name FROM klaviyo_data.profiles WHERE id = '{changed}'") == [("Renamed",)]
    assert _duck(db, "SELECT count(*) FROM klaviyo_data.profiles")[0][0] == len(profiles)

    status = cli("--log-format", "json", "status", "--duckdb-path", str(db))
    assert status.code == EXIT_OK, status.err
    report = json.loads(status.out)
    assert report["has_runs"] and not report["last_run_failed"]
    by_name = {r["resource"]: r for r in report["resources"]}
    newest = max(_ts(p.attributes["updated"]) for p in _truth(sandbox, "profile"))
    assert _ts(by_name["profiles"]["watermark"]) == newest
    assert by_name["profiles"]["rows_last_run"] == second and by_name["profiles"]["total_rows"] == len(profiles)
    assert by_name["events"]["total_rows"] == len(events)
    # events: the watermark dlt stored (the source clamps it to the clock), as dlt itself reads it
    import dlt

    state = dlt.attach("klaviyo", pipelines_dir=str(tmp_path / "pipelines")).state
    stored = state["sources"]["klaviyo"]["resources"]["events"]["incremental"]["datetime"]["last_value"]
    assert _ts(by_name["events"]["watermark"]) == _ts(str(stored))
    loaded = _duck(db, "SELECT min(datetime) FROM klaviyo_data.events")[0][0]
    assert loaded <= _ts(str(stored)) <= datetime.now(timezone.utc)

    text = cli("status", "--duckdb-path", str(db))
    assert text.code == EXIT_OK and "profiles" in text.out and "ok" in text.out


def test_date_window_and_full_refresh_of_one_resource(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    db = tmp_path / "w.duckdb"
    events = _truth(sandbox, "event")
    times = sorted(_ts(e.attributes["datetime"]) for e in events)
    start, end = times[len(times) // 4], times[len(times) // 2]
    run = cli("sync", "events", "--start-date", start.isoformat(), "--end-date", end.isoformat(),
              "--base-url", sandbox.base_url, "--duckdb-path", str(db), "--progress", "off")
    assert run.code == EXIT_OK, run.err
    in_window = {e.id for e in events if start <= _ts(e.attributes["datetime"]) < end}
    assert {r[0] for r in _duck(db, "SELECT id FROM klaviyo_data.events")} == in_window

    run = cli("sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", str(db), "--progress", "off")
    assert run.code == EXIT_OK, run.err

    # rows lost in the warehouse are not re-read incrementally; --full-refresh reloads that resource only
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM klaviyo_data.profiles WHERE id IN (SELECT id FROM klaviyo_data.profiles LIMIT 10)")
        before = con.execute("SELECT count(*) FROM klaviyo_data.profiles").fetchone()[0]
    run = cli("sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", str(db), "--progress", "off")
    assert run.code == EXIT_OK, run.err
    assert _duck(db, "SELECT count(*) FROM klaviyo_data.profiles")[0][0] == before
    run = cli("sync", "profiles", "--full-refresh", "profiles", "--base-url", sandbox.base_url,
              "--duckdb-path", str(db), "--progress", "off")
    assert run.code == EXIT_OK, run.err
    assert {r[0] for r in _duck(db, "SELECT id FROM klaviyo_data.profiles")} == {p.id for p in _truth(sandbox, "profile")}
    # the events of the bounded window were left alone
    assert {r[0] for r in _duck(db, "SELECT id FROM klaviyo_data.events")} == in_window


@pytest.mark.postgres
def test_sync_into_postgres(cli, sandbox, postgres_dsn, unique_name, monkeypatch):
    import psycopg2

    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", postgres_dsn)
    dataset = f"ops_cli_{unique_name}"
    try:
        run = cli("sync", "profiles", "metrics", "--destination", "postgres", "--dataset-name", dataset,
                  "--pipeline-name", f"ops_{unique_name}", "--base-url", sandbox.base_url, "--progress", "off")
        assert run.code == EXIT_OK, run.err
        assert "postgres" in run.out
        with psycopg2.connect(postgres_dsn) as con, con.cursor() as cur:
            cur.execute(f"SELECT id FROM {dataset}.profiles")
            assert {r[0] for r in cur.fetchall()} == {p.id for p in _truth(sandbox, "profile")}
            cur.execute(f"SELECT count(*) FROM {dataset}.metrics")
            assert cur.fetchone()[0] == len(_truth(sandbox, "metric"))
        status = cli("--log-format", "json", "status", "--destination", "postgres", "--dataset-name", dataset,
                     "--pipeline-name", f"ops_{unique_name}")
        report = json.loads(status.out)
        assert {r["resource"]: r["total_rows"] for r in report["resources"]}["profiles"] == len(_truth(sandbox, "profile"))
    finally:
        with psycopg2.connect(postgres_dsn) as con, con.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {dataset} CASCADE")
            cur.execute(f"DROP SCHEMA IF EXISTS {dataset}_staging CASCADE")


def test_json_logs_for_schedulers(sandbox, tmp_path):
    """``--log-format json``: every line on stdout and stderr is a JSON object (a fresh process, as cron runs it)."""
    env = dict(os.environ, KLAVIYO_API_KEY=sandbox.api_key)
    script = os.path.join(os.path.dirname(sys.executable), "klaviyo-dlt")
    done = subprocess.run(
        [script, "--log-format", "json", "sync", "metrics", "profiles", "--base-url", sandbox.base_url,
         "--duckdb-path", str(tmp_path / "j.duckdb"), "--pipelines-dir", str(tmp_path / "p")],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_OK, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    err = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    result = next(o for o in out if o.get("event") == "sync_result")
    assert result["ok"] and result["rows"]["profiles"] == len(_truth(sandbox, "profile"))
    assert any(e.get("event") == "progress" and e["requests"].get("profiles", 0) >= 1 for e in err)
    assert sandbox.api_key not in done.stdout + done.stderr


def test_progress_counts_requests_and_429_waits(cli, sandbox, tmp_path, monkeypatch):
    """JSON progress lines carry rows per table, requests per endpoint and the 429 waits the sync sat out."""
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)

    def last_progress(name: str, *extra: str) -> dict:
        run = cli("--log-format", "json", "sync", "profiles", "--base-url", sandbox.base_url,
                  "--duckdb-path", str(tmp_path / f"{name}.duckdb"), "--pipelines-dir", str(tmp_path / name), *extra)
        assert run.code == EXIT_OK, run.err
        progress = [json.loads(line) for line in run.err.splitlines() if line.startswith("{")]
        return [p for p in progress if p.get("event") == "progress"][-1]

    calm = last_progress("calm")
    sandbox.set_faults({"rules": [{"match": "GET /api/profiles", "kind": "throttle", "retry_after": 0.2, "times": 3}]})
    stormy = last_progress("stormy")
    assert calm["rows"]["profiles"] == stormy["rows"]["profiles"] == len(_truth(sandbox, "profile"))
    assert calm["waits_429"] == 0 and stormy["waits_429"] == 3
    # every page once (and the source's id sweep), plus the three throttled attempts
    assert calm["requests"]["profiles"] >= -(-len(_truth(sandbox, "profile")) // 100)
    assert stormy["requests"]["profiles"] == calm["requests"]["profiles"] + 3


def test_status_reports_a_failed_last_run(cli, sandbox, tmp_path, monkeypatch):
    db = str(tmp_path / "s.duckdb")
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    assert cli("sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", db, "--progress", "off").code == 0
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_rotated_0000000000000000000000")  # the key was rotated
    failed = cli("sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", db, "--progress", "off")
    assert failed.code == 3
    status = cli("--log-format", "json", "status", "--duckdb-path", db)
    report = json.loads(status.out)
    assert report["last_run_failed"] and "401" in report["last_error"]
    profiles = {r["resource"]: r for r in report["resources"]}["profiles"]
    assert profiles["failed"] and profiles["rows_last_run"] == 0
    assert profiles["total_rows"] == len(_truth(sandbox, "profile"))  # nothing lost
    newest = max(_ts(p.attributes["updated"]) for p in _truth(sandbox, "profile"))
    assert _ts(profiles["watermark"]) == newest  # the watermark did not move
    text = cli("status", "--duckdb-path", db)
    assert "FAILED" in text.out and "pk_rotated" not in text.out


def test_sync_through_the_maton_gateway_picks_the_connection(cli, sandbox3, tmp_path, monkeypatch):
    monkeypatch.setenv("MATON_API_KEY", sandbox3.maton_api_key)
    second = sandbox3.accounts[1]
    db = tmp_path / "m.duckdb"
    run = cli("sync", "profiles", "--auth", "maton", "--maton-connection", second.maton_connection_id,
              "--base-url", f"{sandbox3.base_url}/klaviyo", "--duckdb-path", str(db), "--progress", "off")
    assert run.code == EXIT_OK, run.err
    assert {r[0] for r in _duck(db, "SELECT id FROM klaviyo_data.profiles")} == set(
        sandbox3.store.ids(second.id, "profile"))
    assert sandbox3.maton_api_key not in run.out + run.err


def test_rich_progress_renders_and_ends_with_the_summary(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    run = cli("sync", "metrics", "--progress", "rich", "--base-url", sandbox.base_url,
              "--duckdb-path", str(tmp_path / "r.duckdb"))
    assert run.code == EXIT_OK, run.err
    assert "metrics" in run.out and f" {len(_truth(sandbox, 'metric'))} " in run.out
