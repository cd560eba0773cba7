"""The DAGs' wiring for each destination kind, and configuration errors at parse time, read from
the DAG objects in the Airflow venv (the real-scheduler test runs the PostgreSQL wiring)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"


def _shape(tmp_path: Path, **env: str) -> dict:
    if not AIRFLOW_PYTHON.exists():
        message = f"Airflow venv missing ({AIRFLOW_PYTHON.parent}); run `make install-airflow`"
        if os.environ.get("KLAVIYO_DLT_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KLAVIYO", "AIRFLOW", "DLT_"))}
    environ.update(AIRFLOW_HOME=str(tmp_path / "airflow"), PROVIDERS__ENABLE_AIRFLOW_SECRETS="false", **env)
    done = subprocess.run([str(AIRFLOW_PYTHON), str(Path(__file__).with_name("dag_shape.py"))], env=environ,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dag_shapes_per_destination_and_parse_time_errors(tmp_path):
    resources = "profiles,metrics,events,lists,list_members"
    duck = _shape(tmp_path, KLAVIYO_DLT_RESOURCES=resources, KLAVIYO_DLT_RETRIES="2")
    single, many = duck["klaviyo_dlt"], duck["klaviyo_dlt_all_connections"]
    assert single["catchup"] is False and single["max_active_runs"] == 1
    assert single["params"] == ["backfill_end", "backfill_start"]
    assert single["schedule"] == "CronDataIntervalTimetable(expression='0 0 * * *', timezone='UTC')"
    tasks = single["tasks"]
    # DuckDB: one writer at a time, so the groups are chained; a failed group does not stop the next
    assert tasks["sync_profiles"]["upstream"] == [] and "prepare_dataset" not in tasks
    assert tasks["sync_events"]["upstream"] == ["sync_profiles"]
    assert tasks["sync_lists_segments"]["upstream"] == ["sync_events"]
    assert {tasks[t]["trigger_rule"] for t in ("sync_profiles", "sync_events", "sync_lists_segments")} == {"all_done"}
    assert tasks["reverse_sync"]["upstream"] == ["sync_events", "sync_lists_segments", "sync_profiles"]
    assert tasks["reverse_sync"]["trigger_rule"] == "all_success" and tasks["sync_profiles"]["retries"] == 2
    assert many["tasks"]["sync_connection"]["max_active_tis_per_dag"] == 1
    assert many["tasks"]["sync_connection"]["upstream"] == ["list_connections"]
    # fatal failures end the task without Airflow retries; the others are retried
    assert duck["failures"] == {"FatalSyncError": "AirflowFailException", "AuthError": "AirflowFailException",
                                "UsageError": "AirflowFailException", "TransientSyncError": "AirflowException",
                                "SyncFailed": "AirflowException"}

    server = _shape(tmp_path, KLAVIYO_DLT_RESOURCES=resources, KLAVIYO_DLT_DESTINATION="postgres")
    tasks = server["klaviyo_dlt"]["tasks"]
    # a server destination: groups in parallel, after the shared dataset is prepared
    assert {tasks[t]["upstream"][0] for t in ("sync_profiles", "sync_events", "sync_lists_segments")} == {
        "prepare_dataset"}
    assert server["klaviyo_dlt_all_connections"]["tasks"]["sync_connection"]["max_active_tis_per_dag"] is None

    broken = _shape(tmp_path, KLAVIYO_DLT_RESOURCES="profilez")
    assert broken["error"].startswith("UsageError: KLAVIYO_DLT_RESOURCES: unknown resource 'profilez'; choose from:")
