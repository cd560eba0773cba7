"""The Airflow 3 DAGs on a real scheduler: scheduled runs are incremental, backfills are explicit.

Airflow 3 (``.venv-airflow``) runs as a scheduler, a dag-processor and an api-server with the
LocalExecutor and a PostgreSQL metadata database of its own (``airflow_cluster.py``); the DAG file
is ``pipelines/klaviyo_airflow_dag.py`` copied into a fresh ``dags/`` folder, as a user does, next
to a ``.dlt/secrets.toml`` holding the Klaviyo key.  Both DAGs load into a PostgreSQL database of
their own.  The sandbox runs in this process and is changed between runs; after every run the
destination is compared with the sandbox's truth (ids and ``updated`` values).

* ``klaviyo_dlt``: three consecutive scheduled runs (history complete after the first; updated
  profiles, new and late events, a deleted list and removed members in the later ones), then an
  ``airflow backfill create`` and a run triggered with the backfill params, which re-read exactly
  their windows (recovering events older than the lookback) and move no watermark.
* ``klaviyo_dlt_all_connections``: three accounts synced by parallel task processes (a gate in the
  sandbox holds each account's first request until all three are in flight), and a revoked
  connection whose task fails at once although Airflow retries are configured.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from airflow_cluster import TERMINAL_RUN_STATES, AirflowCluster, wait_for
from klaviyo_source.accounts import slug

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = REPO / ".venv-airflow" / "bin"
IN_CI = os.environ.get("KLAVIYO_DLT_CI") == "1"
DATASET = "klaviyo_data"
RESOURCES = "profiles,metrics,events,lists,list_members"
SINGLE, MANY = "klaviyo_dlt", "klaviyo_dlt_all_connections"
TERMINAL_TASK_STATES = {"success", "failed", "skipped", "upstream_failed", "removed"}
RUN_TIMEOUT = 420  # seconds for one DAG run on a loaded 2-core machine (typically well under a minute)


def _ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc)


class SandboxProbe:
    """WSGI middleware in front of the sandbox: counts requests, holds them, gates parallel accounts.

    * ``requests[(who, path)]``: requests served per caller (``key`` for a private key, else the
      Maton connection) and path.
    * ``hold()`` / ``release()``: while held, Klaviyo API requests made with a private key (the
      ``klaviyo_dlt`` DAG's) wait, so the test changes the sandbox between two runs without racing
      the next run, whenever the scheduler starts it.
    * ``arm(connections)``: the first request of each armed Maton connection waits until every
      armed connection has a request in flight; ``met`` tells whether that happened (it cannot
      unless the account syncs run at the same time).
    """

    def __init__(self, app: Any, timeout: float = 300) -> None:
        self.app = app
        self.timeout = timeout
        self.requests: Counter = Counter()
        self.armed: set[str] = set()
        self.arrived: set[str] = set()
        self.met = False
        self.held = False
        self._lock = threading.Condition()

    def __getattr__(self, name: str) -> Any:  # the sandbox's extensions reach the app through sb.app
        if name == "app":
            raise AttributeError(name)
        return getattr(self.app, name)

    def arm(self, connections: set[str]) -> None:
        with self._lock:
            self.armed, self.arrived, self.met = set(connections), set(), False

    def hold(self) -> None:
        with self._lock:
            self.held = True

    def release(self) -> None:
        with self._lock:
            self.held = False
            self._lock.notify_all()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        connection = environ.get("HTTP_MATON_CONNECTION")
        path = environ.get("PATH_INFO", "")
        with self._lock:
            if connection is None and path.startswith("/api/"):
                self._lock.wait_for(lambda: not self.held, timeout=self.timeout)
            if connection in self.armed and not self.met:
                self.arrived.add(connection)
                self._lock.notify_all()
                if self._lock.wait_for(lambda: self.armed <= self.arrived, timeout=self.timeout):
                    self.met = True
            self.requests[(connection or "key", path)] += 1
        return self.app(environ, start_response)


@pytest.fixture
def airflow_bin() -> Path:
    if not (AIRFLOW_BIN / "airflow").exists():
        message = f"Airflow venv missing ({AIRFLOW_BIN}); run `make install-airflow`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return AIRFLOW_BIN


@pytest.fixture
def warehouse(postgres_dsn):
    """A PostgreSQL database of the test's own for the DAGs' datasets (dropped at the end)."""
    import psycopg2

    name = f"kdlt_dw_{uuid.uuid4().hex[:10]}"
    admin = postgres_dsn.rsplit("/", 1)[0] + "/postgres"

    def admin_sql(sql: str) -> None:
        con = psycopg2.connect(admin)
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(sql)
        finally:
            con.close()

    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        admin_sql(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def probed_sandbox():
    from klaviyo_sandbox import Sandbox

    sb = Sandbox(seed=11, accounts=3, rate_limits=False, profiles=120, events=1200)
    probe = SandboxProbe(sb.app)
    sb.app = probe  # served by start(): every request passes the probe
    with sb:
        yield sb, probe


class Warehouse:
    """Reads the DAGs' datasets."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        import psycopg2

        con = psycopg2.connect(self.dsn)
        try:
            with con.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            con.close()

    def watermarks(self, pipeline_name: str, tmp: Path) -> dict[str, Any]:
        """Every resource's stored incremental ``last_value``, as dlt restores it from the destination."""
        import dlt

        pipeline = dlt.pipeline(pipeline_name=pipeline_name, destination=dlt.destinations.postgres(self.dsn),
                                dataset_name=DATASET, pipelines_dir=str(tmp / f"state_{uuid.uuid4().hex[:6]}"))
        pipeline.sync_destination()
        found = {}
        for source in pipeline.state.get("sources", {}).values():
            for resource, state in source.get("resources", {}).items():
                for cursor, inc in (state.get("incremental") or {}).items():
                    found[f"{resource}.{cursor}"] = inc.get("last_value")
        return found


def truth(sb: Any, account: Any) -> dict[str, Any]:
    store = sb.store
    lists = {r.id: _ts(r.attributes["updated"]) for r in store.all(account.id, "list")}
    return {
        "profiles": {r.id: _ts(r.attributes["updated"]) for r in store.all(account.id, "profile")},
        "events": {r.id: _ts(r.attributes["datetime"]) for r in store.all(account.id, "event")},
        "lists": lists,
        "members": {(lid, pid) for lid in lists for pid, _ in store.members(account.id, "list", lid)},
    }


def loaded(wh: Warehouse, dataset: str) -> dict[str, Any]:
    lists = {i: _ts(u) for i, u in wh.rows(f"SELECT id, updated FROM {dataset}.lists WHERE deleted_at IS NULL")}
    members = wh.rows(f"SELECT list_id, profile_id FROM {dataset}.list_members WHERE removed_at IS NULL")
    return {
        "profiles": {i: _ts(u) for i, u in wh.rows(f"SELECT id, updated FROM {dataset}.profiles")},
        "events": {i: _ts(d) for i, d in wh.rows(f"SELECT id, datetime FROM {dataset}.events")},
        "lists": lists,
        # members of a deleted list: checked on their own (they get removed_at with the list)
        "members": {(lid, pid) for lid, pid in members if lid in lists},
    }


def assert_matches_truth(wh: Warehouse, dataset: str, sb: Any, account: Any, when: str) -> dict[str, Any]:
    expected, got = truth(sb, account), loaded(wh, dataset)
    for table in ("profiles", "events", "lists", "members"):
        missing = set(expected[table]) - set(got[table]) if table != "members" else expected[table] - got[table]
        extra = set(got[table]) - set(expected[table]) if table != "members" else got[table] - expected[table]
        assert not missing and not extra, f"{when}: {table}: {len(missing)} missing, {len(extra)} extra"
        if table != "members":
            stale = {k for k in expected[table] if expected[table][k] != got[table][k]}
            assert not stale, f"{when}: {table}: {len(stale)} rows with an outdated cursor value"
    return expected


def _next_run(cluster: AirflowCluster, probe: SandboxProbe, count: int, also: Callable[[], None] = lambda: None,
              ) -> dict:
    """The ``count``-th scheduled run of ``klaviyo_dlt``, finished; API requests held from the moment
    its sync tasks ended (the DAG stays unpaused: the next run starts whenever it is due, and waits).

    ``also`` is called on every poll."""

    def syncs_done() -> dict | None:
        also()
        runs = [r for r in cluster.dag_runs(SINGLE) if r["run_type"] == "scheduled"]
        if len(runs) < count:
            return None
        tasks = cluster.task_instances(SINGLE, runs[count - 1]["dag_run_id"])
        syncs = [ti for ti in tasks if ti["task_id"].startswith("sync_")]
        for ti in syncs:
            assert ti["state"] != "up_for_retry", f"{ti['task_id']} is retried: {ti}"
        return runs[count - 1] if syncs and all(ti["state"] in TERMINAL_TASK_STATES for ti in syncs) else None

    run = wait_for(syncs_done, RUN_TIMEOUT, f"the sync tasks of scheduled run {count} of {SINGLE}")
    probe.hold()  # the run's own requests are over; the next run's wait until release()

    def finished() -> dict | None:
        also()
        return next((r for r in cluster.dag_runs(SINGLE)
                     if r["dag_run_id"] == run["dag_run_id"] and r["state"] in TERMINAL_RUN_STATES), None)

    return wait_for(finished, RUN_TIMEOUT, f"scheduled run {count} of {SINGLE} to finish")


def _busy_tasks(cluster: AirflowCluster, dag_id: str) -> list[dict]:
    """Task instances of unfinished runs that are queued or running (a paused DAG starts no new ones)."""
    return [ti for run in cluster.dag_runs(dag_id) if run["state"] not in TERMINAL_RUN_STATES
            for ti in cluster.task_instances(dag_id, run["dag_run_id"]) if ti["state"] in ("queued", "running")]


def _tasks(cluster: AirflowCluster, dag_id: str, run: dict) -> dict[str, dict]:
    return {(ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"): ti
            for ti in cluster.task_instances(dag_id, run["dag_run_id"])}


@pytest.mark.timeout(1500)
def test_scheduled_runs_are_incremental_and_backfills_explicit(airflow_bin, probed_sandbox, warehouse, postgres_dsn,
                                                               tmp_path):
    sb, probe = probed_sandbox
    first = sb.accounts[0]
    wh = Warehouse(warehouse)
    # a fourth connection, revoked: its mapped task must fail at once, not be retried
    revoked = sb.control.create_connection(account_id=first.id, status="ACTIVE")["connection_id"]
    sb.control.revoke_connection(revoked)

    dags = tmp_path / "dags"
    (dags / ".dlt").mkdir(parents=True)
    shutil.copy(REPO / "pipelines" / "klaviyo_airflow_dag.py", dags)
    (dags / ".dlt" / "secrets.toml").write_text(f'[sources.klaviyo]\napi_key = "{first.api_key}"\n')
    start_date = (datetime.now(timezone.utc) - timedelta(days=3 * 365)).date().isoformat()
    env = {
        "KLAVIYO_BASE_URL": sb.base_url,
        "KLAVIYO_DLT_DESTINATION": "postgres",
        "DESTINATION__POSTGRES__CREDENTIALS": warehouse,
        "KLAVIYO_DLT_DATASET": DATASET,
        "KLAVIYO_DLT_SCHEDULE": "* * * * *",
        "KLAVIYO_DLT_START_DATE": start_date,
        "KLAVIYO_DLT_RESOURCES": RESOURCES,
        "KLAVIYO_DLT_RETRIES": "2",
        "MATON_API_KEY": sb.maton_api_key,
        "MATON_CTRL_URL": sb.base_url,
        "KLAVIYO_DLT_GATEWAY_URL": sb.base_url,
        # configuration comes from the environment and .dlt: no Airflow Variable lookups by dlt
        "PROVIDERS__ENABLE_AIRFLOW_SECRETS": "false",
    }
    with AirflowCluster(airflow_bin, tmp_path / "airflow_home", dags, postgres_dsn, env) as cluster:
        cluster.wait_for_dag(SINGLE)
        cluster.wait_for_dag(MANY)

        # --- run 1 of klaviyo_dlt and the multi-account DAG, side by side ------------------------
        probe.arm({a.maton_connection_id for a in sb.accounts})
        many: dict = {}

        def pause_many_after_its_first_run() -> None:
            if not many:
                runs = cluster.dag_runs(MANY)
                if runs and runs[0]["state"] in TERMINAL_RUN_STATES:
                    cluster.set_paused(MANY, True)
                    many.update(runs[0])
                elif runs:
                    for ti in cluster.task_instances(MANY, runs[0]["dag_run_id"]):
                        assert ti["state"] != "up_for_retry", f"{ti['task_id']}[{ti['map_index']}] is retried: {ti}"

        cluster.set_paused(MANY, False)
        cluster.set_paused(SINGLE, False)
        run1 = _next_run(cluster, probe, 1, also=pause_many_after_its_first_run)
        assert run1["state"] == "success", _tasks(cluster, SINGLE, run1)
        before = assert_matches_truth(wh, DATASET, sb, first, "after run 1")  # all history, not one interval
        oldest = min(before["profiles"].values())
        assert oldest < _ts(run1["data_interval_start"]) - timedelta(days=30)  # an interval-bound run misses it
        tasks = _tasks(cluster, SINGLE, run1)
        assert {t: ti["state"] for t, ti in tasks.items()} == {
            "prepare_dataset": "success", "sync_profiles": "success", "sync_events": "success", "sync_lists_segments": "success",
            "reverse_sync": "skipped"}
        # each task's XCom and log: rows per table and requests, as the sandbox counted them
        profiles = cluster.xcom(SINGLE, run1["dag_run_id"], "sync_profiles")
        served = probe.requests[("key", "/api/profiles")]
        assert profiles["rows"] == {"profiles": len(before["profiles"])}
        assert profiles["requests"] == {"profiles": served} and profiles["requests_total"] == served
        assert profiles["window"]["mode"] == "incremental" and profiles["error"] is None
        lists = cluster.xcom(SINGLE, run1["dag_run_id"], "sync_lists_segments")
        assert lists["rows"]["lists"] == len(before["lists"])
        log = cluster.task_log(SINGLE, run1["dag_run_id"], "sync_profiles")
        assert f"rows profiles={len(before['profiles'])} | requests {served} (profiles={served})" in log

        # multi-account: three accounts in parallel task processes, the revoked one failed at once
        wait_for(lambda: pause_many_after_its_first_run() or many, RUN_TIMEOUT, f"the first run of {MANY}")
        assert many["state"] == "failed"
        mapped = {t: ti for t, ti in _tasks(cluster, MANY, many).items() if t.startswith("sync_connection[")}
        states = sorted(ti["state"] for ti in mapped.values())
        assert states == ["failed", "success", "success", "success"], mapped
        assert probe.met, "the three account syncs never had requests in flight at the same time"
        assert len({ti["pid"] for ti in mapped.values() if ti["state"] == "success"}) == 3
        failed = next(ti for ti in mapped.values() if ti["state"] == "failed")
        assert failed["try_number"] == 1 and failed["rendered_map_index"] == revoked
        for account in sb.accounts:
            dataset = f"{DATASET}_{slug(account.maton_connection_id)}"
            assert_matches_truth(wh, dataset, sb, account, f"account {account.maton_connection_id}")
            summary = next(cluster.xcom(MANY, many["dag_run_id"], "sync_connection", ti["map_index"])
                           for ti in mapped.values() if ti["rendered_map_index"] == account.maton_connection_id)
            assert summary["rows"]["profiles"] == len(truth(sb, account)["profiles"]) and summary["requests_total"] > 0

        # --- changes, run 2 ---------------------------------------------------------------------
        control = sb.control
        profile_ids = sorted(before["profiles"])
        for pid in profile_ids[:3]:
            control.update_profile(pid, {"first_name": "Changed"})
        now = datetime.now(timezone.utc)
        new_event = control.insert_event(profile_ids[0], "Placed Order", value=10.0)
        late_event = control.insert_event(profile_ids[1], "Viewed Product", datetime=now - timedelta(days=1))
        with_members = [lid for lid in sorted(before["lists"]) if sb.store.members(first.id, "list", lid)]
        deleted_list, kept_list = with_members[0], with_members[1]
        control.delete("list", deleted_list)
        leaving = [pid for pid, _ in sb.store.members(first.id, "list", kept_list)][:2]
        control.remove_members("list", kept_list, leaving)

        probe.release()
        run2 = _next_run(cluster, probe, 2)
        assert run2["state"] == "success", _tasks(cluster, SINGLE, run2)
        after2 = assert_matches_truth(wh, DATASET, sb, first, "after run 2")
        assert {new_event, late_event} <= set(after2["events"])
        assert wh.rows(f"SELECT deleted_at IS NOT NULL FROM {DATASET}.lists WHERE id = %s", deleted_list) == [(True,)]
        # ... and its members were marked removed in the same run
        assert wh.rows(f"SELECT count(*) FROM {DATASET}.list_members WHERE list_id = %s AND removed_at IS NULL",
                       deleted_list) == [(0,)]
        removed = wh.rows(f"SELECT profile_id FROM {DATASET}.list_members WHERE list_id = %s AND removed_at IS NOT NULL",
                          kept_list)
        assert {r[0] for r in removed} == set(leaving)
        changed = cluster.xcom(SINGLE, run2["dag_run_id"], "sync_profiles")["rows"]["profiles"]
        assert 3 <= changed < len(before["profiles"])  # changes, not history again

        # --- changes, run 3 ---------------------------------------------------------------------
        control.update_profile(profile_ids[5], {"last_name": "Again"})
        late_again = control.insert_event(profile_ids[2], "Viewed Product", datetime=now - timedelta(hours=2))
        joined = sorted(set(profile_ids) - {p for p, _ in sb.store.members(first.id, "list", kept_list)})[0]
        control.add_members("list", kept_list, [joined])
        leaving_too = [pid for pid, _ in sb.store.members(first.id, "list", kept_list) if pid != joined][0]
        control.remove_members("list", kept_list, [leaving_too])

        probe.release()
        run3 = _next_run(cluster, probe, 3)
        assert run3["state"] == "success", _tasks(cluster, SINGLE, run3)
        after3 = assert_matches_truth(wh, DATASET, sb, first, "after run 3")
        assert late_again in after3["events"]

        # --- a backfill re-reads exactly its windows and moves no watermark ----------------------
        pipelines = ("klaviyo_profiles", "klaviyo_events", "klaviyo_lists_segments")
        marks = {p: wh.watermarks(p, tmp_path) for p in pipelines}
        window_start = (now - timedelta(days=40)).replace(second=0, microsecond=0)
        # events that arrive far too late for the lookback: only a backfill of their window reads them
        very_late = [control.insert_event(profile_ids[3], "Viewed Product", datetime=window_start + timedelta(seconds=s))
                     for s in (10, 70, 200)]
        created = cluster.cli("backfill", "create", "--dag-id", SINGLE, "--from-date", window_start.isoformat(),
                              "--to-date", (window_start + timedelta(minutes=1)).isoformat())
        assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
        # the other way: a run triggered with the backfill params reads their window
        params_window = (window_start + timedelta(minutes=3), window_start + timedelta(minutes=4))
        conf = json.dumps({"backfill_start": params_window[0].isoformat(), "backfill_end": params_window[1].isoformat()})
        triggered = cluster.cli("dags", "trigger", SINGLE, "--conf", conf, "--run-id", "params_backfill")
        assert triggered.returncode == 0, triggered.stdout[-2000:] + triggered.stderr[-2000:]
        probe.release()  # scheduled runs go on meanwhile: nothing changes, so they move no watermark either
        wait_for(lambda: all(b["completed_at"] for b in cluster.api("GET", "/backfills", params={"dag_id": SINGLE})[
            "backfills"]), RUN_TIMEOUT, "the backfill to complete")
        wait_for(lambda: [r for r in cluster.dag_runs(SINGLE) if r["run_type"] == "manual"
                          and r["state"] in TERMINAL_RUN_STATES], RUN_TIMEOUT, "the run triggered with params")
        cluster.set_paused(SINGLE, True)
        wait_for(lambda: not _busy_tasks(cluster, SINGLE), RUN_TIMEOUT, f"the running tasks of {SINGLE} to end")
        runs = cluster.dag_runs(SINGLE)
        backfills = [r for r in runs if r["run_type"] in ("backfill", "manual")]
        assert len(backfills) == 3 and all(r["state"] == "success" for r in backfills), backfills
        events_truth = truth(sb, first)["events"]
        for run in backfills:
            if run["run_type"] == "backfill":
                lo, hi, source = _ts(run["data_interval_start"]), _ts(run["data_interval_end"]), "data interval"
            else:
                (lo, hi), source = params_window, "params"
            summary = cluster.xcom(SINGLE, run["dag_run_id"], "sync_events")
            assert summary["window"] == {"mode": "backfill", "source": source,
                                         "start": lo.isoformat(), "end": hi.isoformat()}
            assert summary["rows"].get("events", 0) == sum(1 for d in events_truth.values() if lo <= d < hi)
            lists_task = cluster.xcom(SINGLE, run["dag_run_id"], "sync_lists_segments")
            assert "list_members" not in lists_task["rows"]  # memberships have no time window
            assert _tasks(cluster, SINGLE, run)["reverse_sync"]["state"] == "skipped"
        assert {p: wh.watermarks(p, tmp_path) for p in pipelines} == marks
        after = assert_matches_truth(wh, DATASET, sb, first, "after the backfill")
        assert set(very_late) <= set(after["events"])
