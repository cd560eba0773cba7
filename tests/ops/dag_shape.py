"""Prints the shape of the klaviyo-dlt DAGs as JSON (run with the Airflow venv's python by
test_airflow_dag_shape.py): tasks, their upstreams, trigger rules and limits; or the one-line
error the DAG file raises on bad configuration."""

from __future__ import annotations

import json
import sys


def main() -> int:
    try:
        from klaviyo_dlt.airflow import klaviyo_dlt_all_connections_dag, klaviyo_dlt_dag

        dags = [klaviyo_dlt_dag(), klaviyo_dlt_all_connections_dag()]
    except Exception as exc:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 0
    shape = {}
    for dag in dags:
        shape[dag.dag_id] = {
            "catchup": dag.catchup, "max_active_runs": dag.max_active_runs, "params": sorted(dag.params.keys()),
            "schedule": repr(dag.timetable),
            "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
                                  "retries": t.retries, "max_active_tis_per_dag": t.max_active_tis_per_dag}
                      for t in dag.tasks},
        }
    shape["failures"] = failure_classes()
    print(json.dumps(shape))
    return 0


def failure_classes() -> dict[str, str]:
    """Which Airflow exception each kind of task failure becomes (AirflowFailException: no retry)."""
    from klaviyo_dlt.airflow import run_for_airflow
    from klaviyo_dlt.task_run import FatalSyncError, TransientSyncError
    from klaviyo_source.cli_errors import AuthError, SyncFailed, UsageError

    raised = {}
    for error in (FatalSyncError("revoked", 3), TransientSyncError("503"), UsageError("bad param"),
                  AuthError("401"), SyncFailed("load step failed")):
        def work(error: Exception = error) -> dict:
            raise error

        try:
            run_for_airflow(work)
        except Exception as exc:  # noqa: BLE001 - what Airflow would see
            raised[type(error).__name__] = type(exc).__name__
    return raised


if __name__ == "__main__":
    sys.exit(main())
