"""What a DAG task does, without Airflow: which window a run reads, the task's retries and report.

The real-scheduler test (``test_airflow_scheduler.py``) runs the same code inside Airflow; these
tests pin each rule on its own, fast, against the sandbox and DuckDB.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import datetime, timedelta, timezone

import dlt
import pytest
from tenacity import wait_none

from klaviyo_dlt.dag_config import DagConfig, resource_groups
from klaviyo_dlt.run_window import RunWindow, backfill_resources, run_window
from klaviyo_dlt.task_run import FatalSyncError, TransientSyncError, prepare_dataset, run_reverse_sync, run_task
from klaviyo_source.cli_errors import UsageError
from klaviyo_source.pipeline_runner import SyncOptions, run_sync

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def test_scheduled_and_manual_runs_ignore_their_data_interval():
    for run_type in ("scheduled", "manual", "asset_triggered"):
        window = run_window(run_type, NOW - DAY, NOW, {"backfill_start": None, "backfill_end": None}, now=NOW)
        assert window == RunWindow() and not window.is_backfill and window.mode == "incremental"


def test_backfill_runs_read_their_data_interval_cut_at_now():
    window = run_window("backfill", NOW - 2 * DAY, NOW - DAY, {}, now=NOW)
    assert (window.start, window.end, window.source) == (NOW - 2 * DAY, NOW - DAY, "data interval")
    assert run_window("backfill", NOW - DAY, NOW + DAY, {}, now=NOW).end == NOW  # Klaviyo 400s on the future
    assert window.as_dict() == {"mode": "backfill", "source": "data interval",
                                "start": (NOW - 2 * DAY).isoformat(), "end": (NOW - DAY).isoformat()}


def test_params_ask_for_a_backfill_of_their_window():
    window = run_window("manual", None, None, {"backfill_start": "2025-01-01", "backfill_end": "2025-02-01"}, now=NOW)
    assert (window.start, window.end, window.source) == (
        datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 2, 1, tzinfo=timezone.utc), "params")


@pytest.mark.parametrize("params, message", [
    ({"backfill_start": "2025-01-01"}, "needs both params backfill_start and backfill_end"),
    ({"backfill_start": "2025-13-45", "backfill_end": "2025-02-01"}, "backfill_start: '2025-13-45' is not a date"),
    ({"backfill_start": "2025-02-01", "backfill_end": "2025-01-01"}, "is empty"),
])
def test_bad_backfill_params_are_one_line_usage_errors(params, message):
    with pytest.raises(UsageError, match=message) as error:
        run_window("manual", None, None, params, now=NOW)
    assert "\n" not in str(error.value)


def test_only_time_cursor_resources_are_backfilled():
    assert backfill_resources(["profiles", "metrics", "events", "lists", "list_members", "flows", "flow_actions",
                               "templates", "catalog_items", "metric_aggregates"]) == [
        "profiles", "events", "lists", "flows", "templates"]


def test_config_errors_name_the_variable():
    with pytest.raises(UsageError, match="KLAVIYO_DLT_RESOURCES: unknown resource 'profilez'"):
        DagConfig.from_env({"KLAVIYO_DLT_RESOURCES": "profilez,events"})
    with pytest.raises(UsageError, match="KLAVIYO_DLT_START_DATE: 'soon' is not a date"):
        DagConfig.from_env({"KLAVIYO_DLT_START_DATE": "soon"})
    with pytest.raises(UsageError, match="KLAVIYO_DLT_RETRIES"):
        DagConfig.from_env({"KLAVIYO_DLT_RETRIES": "three"})
    with pytest.raises(UsageError, match="must be an absolute path"):
        DagConfig.from_env({"KLAVIYO_DLT_DUCKDB_PATH": "klaviyo.duckdb"}).duckdb_file()
    config = DagConfig.from_env({"KLAVIYO_DLT_RESOURCES": "events, list_members,profiles,metrics",
                                 "AIRFLOW_HOME": "/opt/airflow"})
    assert config.groups() == {"profiles": ["profiles"], "events": ["metrics", "events"],
                               "lists_segments": ["list_members"]}
    assert config.duckdb_file() == "/opt/airflow/klaviyo.duckdb" and config.start_date is None
    assert resource_groups(["webhook_topics"]) == {"other": ["webhook_topics"]}


def _options(sandbox, tmp_path, **kwargs) -> SyncOptions:
    values = dict(resources=["profiles"], duckdb_path=str(tmp_path / "k.duckdb"), pipeline_name="klaviyo_profiles",
                  api_key=sandbox.api_key, base_url=sandbox.base_url)
    values.update(kwargs)
    return SyncOptions(**values)


class CountingRunner:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return run_sync(*args, **kwargs)


def _watermark(tmp_path, name: str) -> dict:
    pipeline = dlt.pipeline(pipeline_name=name, destination=dlt.destinations.duckdb(str(tmp_path / "k.duckdb")),
                            dataset_name="klaviyo_data", pipelines_dir=str(tmp_path / f"restore_{uuid.uuid4().hex[:6]}"))
    pipeline.sync_destination()
    resources = pipeline.state["sources"]["klaviyo"]["resources"]
    return {r: s["incremental"] for r, s in resources.items() if "incremental" in s}


def test_a_backfill_reads_its_window_and_moves_no_watermark(sandbox, tmp_path):
    store, account = sandbox.store, sandbox.account
    first = run_task(_options(sandbox, tmp_path, resources=["events"], pipeline_name="klaviyo_events"), "events")
    assert first["rows"]["events"] == len(store.all(account.id, "event"))
    stored = _watermark(tmp_path, "klaviyo_events")
    # events dated 40 days back arrive now: past the lookback, no incremental run reads them
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40)
    profile = store.all(account.id, "profile")[0].id
    late = {sandbox.control.insert_event(profile, "Viewed Product", datetime=start + timedelta(minutes=m))
            for m in (1, 30)}
    window = RunWindow(start, start + timedelta(hours=1), "params")
    backfill = run_task(_options(sandbox, tmp_path, resources=["events"], pipeline_name="klaviyo_events",
                                 start_date=window.start, end_date=window.end), "events", window.as_dict())
    in_window = [e for e in store.all(account.id, "event")
                 if window.start <= datetime.fromisoformat(e.attributes["datetime"].replace("Z", "+00:00")) < window.end]
    assert late <= {e.id for e in in_window}
    assert backfill["rows"]["events"] == len(in_window) and backfill["window"]["mode"] == "backfill"
    assert _watermark(tmp_path, "klaviyo_events") == stored


def test_transient_failures_are_retried_in_the_task(sandbox, tmp_path, caplog):
    calm = run_task(_options(sandbox, tmp_path, pipeline_name="calm", dataset_name="calm_data"), "calm")
    # one 503 more than the HTTP client's own attempts: the extract step fails once
    sandbox.set_faults({"rules": [{"match": "GET /api/profiles", "kind": "error", "status": 503, "times": 1}]})
    runner = CountingRunner()
    caplog.set_level(logging.INFO, logger="klaviyo_dlt")
    summary = run_task(_options(sandbox, tmp_path, source_options={"max_attempts": 1}), "klaviyo_profiles",
                       wait=wait_none(), runner=runner)
    profiles = len(sandbox.store.all(sandbox.account.id, "profile"))
    assert runner.calls == 2 and summary["attempts"] == 2
    assert summary["rows"] == calm["rows"] == {"profiles": profiles} and summary["error"] is None
    # the requests of both attempts: the refused one, then those of a calm run
    assert summary["requests"] == {"profiles": calm["requests"]["profiles"] + 1}
    assert "klaviyo_profiles: attempt 1 failed" in caplog.text
    total = summary["requests_total"]
    assert (f"klaviyo_profiles (incremental): rows profiles={profiles} | requests {total} (profiles={total}), "
            "429 waits 0") in caplog.text


def test_transient_failures_give_up_after_the_attempts(sandbox, tmp_path):
    sandbox.set_faults({"rules": [{"match": "GET /api/profiles", "kind": "error", "status": 503}]})
    runner = CountingRunner()
    with pytest.raises(TransientSyncError, match="503"):
        run_task(_options(sandbox, tmp_path, source_options={"max_attempts": 1}), "p", attempts=2, wait=wait_none(),
                 runner=runner)
    assert runner.calls == 2


@pytest.mark.parametrize("case, code", [("rejected key", 3), ("unknown destination", 2), ("missing key", 2)])
def test_auth_and_config_errors_fail_at_once(sandbox, tmp_path, monkeypatch, case, code):
    monkeypatch.delenv("KLAVIYO_API_KEY", raising=False)
    overrides = {"rejected key": {"api_key": "pk_rotated_000000000000000000000000"},
                 "unknown destination": {"destination": "nosuchdb"},
                 "missing key": {"api_key": None}}[case]
    runner = CountingRunner()
    with pytest.raises(FatalSyncError) as error:
        run_task(_options(sandbox, tmp_path, **overrides), "p", wait=wait_none(), runner=runner)
    assert runner.calls == 1 and error.value.exit_code == code
    message = str(error.value)
    assert "\n" not in message and "pk_rotated" not in message


def test_group_pipelines_sharing_a_dataset_keep_their_sweeps(sandbox, tmp_path):
    """Each group's pipeline restores its own schema: another group loading last must not hide its tables."""
    config = DagConfig.from_env({"KLAVIYO_DLT_DUCKDB_PATH": str(tmp_path / "k.duckdb"),
                                 "KLAVIYO_DLT_RESOURCES": "profiles,lists,list_members",
                                 "KLAVIYO_BASE_URL": sandbox.base_url})

    def run(group: str) -> dict:
        opts = dataclasses.replace(config.group_sync_options(group, config.groups()[group], None, None),
                                   api_key=sandbox.api_key)
        return run_task(opts, group)

    store, account = sandbox.store, sandbox.account
    run("lists_segments")
    run("profiles")  # the newest schema in the dataset is now the profiles group's
    gone = next(lid for lid in store.ids(account.id, "list") if store.members(account.id, "list", lid))
    stays = next(lid for lid in store.ids(account.id, "list") if lid != gone and store.members(account.id, "list", lid))
    leaving = store.members(account.id, "list", stays)[0][0]
    gone_members = {(gone, pid) for pid, _ in store.members(account.id, "list", gone)}
    sandbox.control.delete("list", gone)
    sandbox.control.remove_members("list", stays, [leaving])
    run("lists_segments")
    import duckdb

    with duckdb.connect(str(tmp_path / "k.duckdb"), read_only=True) as con:
        deleted = con.execute("SELECT id FROM klaviyo_data.lists WHERE deleted_at IS NOT NULL").fetchall()
        removed = con.execute("SELECT list_id, profile_id FROM klaviyo_data.list_members "
                              "WHERE removed_at IS NOT NULL").fetchall()
    assert deleted == [(gone,)]
    assert set(removed) == gone_members | {(stays, leaving)}


AUDIENCE = ('name = "airflow_audience"\n'
            'query = "select email, first_name from profiles where email is not null"\n'
            '[identifiers]\nemail = "email"\n[attributes]\nfirst_name = "first_name"\n'
            '[list]\nname = "Airflow audience"\ncreate = true\nmode = "mirror"\n')


def test_the_reverse_sync_task_pushes_the_extracted_audience(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    audience = tmp_path / "audience.toml"
    audience.write_text(AUDIENCE)
    config = DagConfig.from_env({"KLAVIYO_DLT_DUCKDB_PATH": str(tmp_path / "k.duckdb"), "KLAVIYO_BASE_URL": sandbox.base_url,
                                 "KLAVIYO_DLT_REVERSE_SYNC_CONFIG": str(audience)})
    run_task(config.group_sync_options("profiles", ["profiles"], None, None), "profiles")
    report = run_reverse_sync(config)
    store, account = sandbox.store, sandbox.account
    with_email = {p.id for p in store.all(account.id, "profile") if p.attributes.get("email")}
    lists = {r.attributes["name"]: r.id for r in store.all(account.id, "list")}
    assert {pid for pid, _ in store.members(account.id, "list", lists["Airflow audience"])} == with_email
    assert report["read"] == len(with_email) and report["sync_name"] == "airflow_audience"
    audience.write_text(AUDIENCE.replace("first_name from profiles", "first_name from no_such_table"))
    with pytest.raises(FatalSyncError) as error:
        run_reverse_sync(config)
    assert error.value.exit_code == 2 and "\n" not in str(error.value)


@pytest.mark.postgres
def test_the_shared_dataset_is_prepared_once_before_parallel_groups(postgres_dsn, unique_name, monkeypatch):
    import psycopg2

    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", postgres_dsn)
    dataset = f"klaviyo_prep_{unique_name}"
    config = DagConfig.from_env({"KLAVIYO_DLT_DESTINATION": "postgres", "KLAVIYO_DLT_DATASET": dataset})
    con = psycopg2.connect(postgres_dsn)
    try:
        assert prepare_dataset(config) == {"dataset": dataset, "created": [dataset, f"{dataset}_staging"]}
        assert prepare_dataset(config) == {"dataset": dataset, "created": []}
        with con.cursor() as cur:
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = %s",
                        (dataset,))
            assert sorted(r[1] for r in cur.fetchall()) == ["_dlt_loads", "_dlt_pipeline_state", "_dlt_version"]
            # merges go through the staging dataset, which has a _dlt_version table of its own
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                        (f"{dataset}_staging",))
            assert "_dlt_version" in {r[0] for r in cur.fetchall()}
            cur.execute(f"SELECT count(*) FROM {dataset}._dlt_loads")
            assert cur.fetchone() == (1,)  # the second call loaded nothing
    finally:
        with con.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {dataset} CASCADE; DROP SCHEMA IF EXISTS {dataset}_staging CASCADE")
        con.commit()
        con.close()
