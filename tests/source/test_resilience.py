"""Faults, crashes, wiped state, the same-second boundary, rate limits, errors, secrets, the gateway."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from klaviyo_source import describe, klaviyo_source
from klaviyo_source.client import KlaviyoClient, buckets_for
from klaviyo_source.errors import KlaviyoAPIError, KlaviyoConfigError
from klaviyo_source.streams import STREAMS
from tests.source.conftest import SMALL, Runner, truth_ids

REPO = Path(__file__).resolve().parents[2]


def _assert_exact(runner: Runner, table: str, type_: str) -> None:
    ids = runner.ids(table)
    assert len(ids) == len(set(ids)), f"duplicate rows in {table}"
    assert set(ids) == truth_ids(runner.sb, type_), f"{table} differs from the sandbox"


def test_429_storms_5xx_and_dropped_connections_lose_nothing(runner):
    rules = [
        {"match": "get_profiles", "kind": "throttle", "retry_after": 1, "times": 3},  # a 429 storm
        {"match": "get_profiles", "kind": "drop", "skip": 1, "times": 2},  # connection dropped mid-body
        {"match": "get_events", "kind": "error", "status": 503, "times": 2},
        {"match": "get_events", "kind": "drop", "skip": 1, "times": 2},
        {"match": "get_campaigns", "kind": "error", "status": 502, "skip": 2, "times": 2},
        {"match": "get_campaigns", "kind": "drop", "skip": 3, "times": 1},
    ]
    runner.sb.control.set_faults({"seed": 3, "rules": rules})
    runner.run(["profiles", "events", "campaigns"], backoff_factor=0.05, max_attempts=12)
    fired = [rule["fired"] for rule in runner.sb.faults.describe()]
    assert fired == [rule["times"] for rule in rules]  # every fault really happened
    for table, type_ in (("profiles", "profile"), ("events", "event"), ("campaigns", "campaign")):
        _assert_exact(runner, table, type_)


def test_crash_mid_extraction_then_rerun_has_no_gaps_or_duplicates(runner):
    sb = runner.sb
    # the third profiles page fails hard (a 400 is not retried): the first load dies mid-way
    sb.control.set_faults({"rules": [{"match": "get_profiles", "kind": "error", "status": 400, "skip": 2, "times": 1}]})
    with pytest.raises(Exception) as failure:
        runner.run(["profiles", "events"])
    assert "GET /api/profiles -> 400" in describe(failure.value)
    sb.control.set_faults(None)
    for i, profile in enumerate(sb.control.records("profile")[:20]):
        sb.control.update_profile(profile["id"], {"last_name": f"Crash{i}"})
    pid = sb.control.records("profile")[0]["id"]
    new_events = [sb.control.insert_event(pid, "Viewed Product", value=float(i)) for i in range(5)]
    runner.run(["profiles", "events"])
    _assert_exact(runner, "profiles", "profile")
    _assert_exact(runner, "events", "event")
    assert runner.rows("SELECT count(*) FROM profiles WHERE last_name LIKE 'Crash%'") == [(20,)]
    assert set(new_events) <= set(runner.ids("events"))


# the killed child process loads a DuckDB file; recovery on PostgreSQL is covered by the fault-crash test
@pytest.mark.parametrize("destination", ["duckdb"], indirect=True)
def test_process_killed_mid_run_then_rerun(runner, tmp_path):
    """SIGKILL the pipeline process while it extracts (slowed by faults), then rerun in-process."""
    sb = runner.sb
    sb.control.set_faults({"rules": [{"match": "*", "kind": "slow", "delay": 0.4}]})
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import dlt
        from klaviyo_source import klaviyo_source
        pipeline = dlt.pipeline(pipeline_name="kt_{runner.name}", destination=dlt.destinations.duckdb({str(tmp_path / 'klaviyo.duckdb')!r}),
                                dataset_name="{runner.dataset}", pipelines_dir={runner.pipelines_dir!r})
        pipeline.run(klaviyo_source(api_key={sb.api_key!r}, base_url={sb.base_url!r}, resources=["profiles", "events"]),
                     loader_file_format="parquet")
        print("finished")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while sb.faults.describe()[0]["fired"] < 2:  # extraction is under way (its requests are being slowed)
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started extracting"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sb.control.set_faults(None)
    runner.run(["profiles", "events"])
    _assert_exact(runner, "profiles", "profile")
    _assert_exact(runner, "events", "event")


def test_state_survives_a_wiped_pipeline_folder(runner):
    sb = runner.sb
    runner.run(["profiles", "events"])
    watermark = max(p["attributes"]["updated"] for p in sb.control.records("profile"))
    shutil.rmtree(runner.pipelines_dir)
    for profile in sb.control.records("profile")[:3]:
        sb.control.update_profile(profile["id"], {"title": "Restored"})
    pipeline, _ = runner.run(["profiles", "events"])
    # the incremental state came back from the destination: only the changed profiles were read
    expected = sum(1 for p in sb.control.records("profile") if p["attributes"]["updated"] >= watermark)
    assert pipeline.last_trace.last_normalize_info.row_counts.get("profiles") == expected
    assert expected < 20
    assert runner.rows("SELECT count(*) FROM profiles WHERE title = 'Restored'") == [(3,)]
    _assert_exact(runner, "profiles", "profile")


def test_profiles_sharing_one_updated_second_across_page_breaks_are_never_lost(runner):
    sb = runner.sb
    frozen = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(seconds=5)
    sb.control.set_clock(now=frozen)
    profiles = sb.control.records("profile")
    for profile in profiles[:130]:  # 130 profiles, one `updated` second, spanning pages of 100
        sb.control.update_profile(profile["id"], {"organization": "first wave"})
    runner.run(["profiles"])
    for profile in profiles[130:200]:  # same second again, after the watermark was stored
        sb.control.update_profile(profile["id"], {"organization": "second wave"})
    runner.run(["profiles"])
    sb.control.set_clock(now=None)
    counts = dict(runner.rows("SELECT organization, count(*) FROM profiles GROUP BY organization"))
    assert counts.get("first wave") == 130 and counts.get("second wave") == 70
    stored = runner.rows("SELECT count(DISTINCT updated) FROM profiles WHERE organization LIKE '% wave'")
    assert stored == [(1,)]
    _assert_exact(runner, "profiles", "profile")


def test_bad_key_fails_fast_with_one_line_and_no_secret(sandbox, tmp_path, unique_name):
    import dlt

    bad_key = "pk_thisIsAWrongKey_123456"
    pipeline = dlt.pipeline(pipeline_name=f"kt_{unique_name}", destination=dlt.destinations.duckdb(str(tmp_path / "x.duckdb")),
                            dataset_name="bad_key_data", pipelines_dir=str(tmp_path / "p"))
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        pipeline.run(klaviyo_source(api_key=bad_key, base_url=sandbox.base_url, resources=["profiles"]))
    assert time.monotonic() - started < 10, "a 401 must not be retried"
    line = describe(failure.value)
    assert "\n" not in line
    assert "GET /api/profiles -> 401" in line and "api_key" in line
    assert bad_key not in line and bad_key not in str(failure.value)


def test_config_errors_are_one_line(sandbox):
    cases = [
        (dict(resources=["profiles", "nope"]), "unknown resource 'nope'"),
        (dict(start_date="last tuesday"), "start_date='last tuesday' is not a date"),
        (dict(event_lookback="a while"), "event_lookback"),
        (dict(auth="basic"), "auth='basic' is unknown"),
        (dict(start_date="2999-01-01"), "start_date=2999-01-01T00:00:00+00:00 is in the future"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(Exception) as failure:
            klaviyo_source(api_key=sandbox.api_key, base_url=sandbox.base_url, **kwargs)
        line = describe(failure.value)
        assert expected in line and "\n" not in line, line
        assert sandbox.api_key not in line


# fails before anything is loaded: the destination plays no part
@pytest.mark.parametrize("destination", ["duckdb"], indirect=True)
def test_unknown_metric_name_is_one_line(runner):
    with pytest.raises(Exception) as failure:
        runner.run(["events"], metrics=["No Such Metric"])
    assert "metrics: unknown metric id/name 'No Such Metric'" in describe(failure.value)


def test_metrics_option_restricts_events(runner):
    runner.run(["events"], metrics=["Placed Order"])
    placed = {m["id"] for m in runner.sb.control.records("metric") if m["attributes"]["name"] == "Placed Order"}
    truth = {e["id"] for e in runner.sb.control.records("event") if e["relationships"]["metric"] in placed}
    assert set(runner.ids("events")) == truth and truth


def test_secrets_never_reach_logs_tables_or_pipeline_files(runner, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    pipeline, info = runner.run(["profiles", "metrics"])
    key = runner.sb.api_key
    assert key not in caplog.text
    assert key not in str(info)
    for path in Path(runner.pipelines_dir).rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    with pipeline.sql_client() as client:
        tables = [r[0] for r in client.execute_sql(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{runner.dataset}'")]
        for table in tables:
            dump = str(client.execute_sql(f"SELECT * FROM {runner.dataset}.{table}"))
            assert key not in dump, table


def test_pacing_keeps_a_rate_limited_sandbox_free_of_429s():
    from concurrent.futures import ThreadPoolExecutor

    from klaviyo_sandbox import Sandbox

    requests_made = 40  # /api/metrics: 10/s burst -> at least 3 s; the sandbox answers ~20/s unpaced
    with Sandbox(rate_limits=True, seed=7, profiles=20, events=50) as sb:
        def hammer(pacing: bool) -> tuple[int, float]:
            client = KlaviyoClient(api_key=sb.api_key, base_url=sb.base_url, buckets=buckets_for(STREAMS),
                                   pacing=pacing, max_attempts=30, backoff_factor=0.01)
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:  # four resources sharing one endpoint's pacer
                list(pool.map(lambda _: client.get("/api/metrics"), range(requests_made)))
            return client.stats.status_429, time.monotonic() - started

        sb.set_rate_limits(enabled=False)
        _, serving = hammer(pacing=False)  # how long the sandbox needs to answer them, no limits
        sb.set_rate_limits(enabled=True)
        throttled, elapsed = hammer(pacing=True)
        tier = next(s for s in STREAMS if s.name == "metrics").rate_tier
        assert throttled == 0
        # waiting imposed by the limits (3 s) + at most the serving time on top
        assert tier.min_seconds(requests_made) <= elapsed <= tier.min_seconds(requests_made) * 1.1 + serving + 0.5
        time.sleep(1.1)
        unpaced_throttled, _ = hammer(pacing=False)
        assert unpaced_throttled > 0  # the limits are real: without pacing the same load bounces


def test_gateway_with_two_connections_reads_each_account(tmp_path, unique_name):
    import dlt
    from klaviyo_sandbox import Sandbox

    with Sandbox(rate_limits=False, seed=11, accounts=2, profiles=50, events=200) as sb:
        seen = []
        for account in sb.accounts:
            pipeline = dlt.pipeline(pipeline_name=f"kt_{unique_name}_{account.id[-4:]}",
                                    destination=dlt.destinations.duckdb(str(tmp_path / f"{account.id}.duckdb")),
                                    dataset_name="gateway_data", pipelines_dir=str(tmp_path / "p"))
            source = klaviyo_source(api_key=sb.maton_api_key, auth="maton", base_url=f"{sb.base_url}/klaviyo",
                                    maton_connection=account.maton_connection_id, resources=["profiles", "events"])
            pipeline.run(source, loader_file_format="parquet")
            with pipeline.sql_client() as client:
                ids = {r[0] for r in client.execute_sql("SELECT id FROM profiles")}
                events = client.execute_sql("SELECT count(*) FROM events")[0][0]
            truth = {r.id for r in sb.store.all(account.id, "profile")}
            assert ids == truth and len(ids) == 50
            assert events == len(sb.store.all(account.id, "event"))
            seen.append(ids)
        assert not (seen[0] & seen[1])
