"""Runs the klaviyo-dlt DAGs with ``dag.test()`` inside the Airflow venv (called by test_airflow_dag.py).

Usage: python airflow_runner.py <dag_id>=<logical date ISO> ...   → prints one JSON line per DAG run.
"""

from __future__ import annotations

import json
import os
import sys

import pendulum


def main(argv: list[str]) -> int:
    sys.path.insert(0, os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    import klaviyo_airflow_dag as dags  # noqa: E402  (the DAG file under test)

    by_id = {d.dag_id: d for d in (dags.klaviyo_dlt, dags.klaviyo_dlt_all_connections)}
    for item in argv:
        dag_id, _, when = item.partition("=")
        try:
            run = by_id[dag_id].test(logical_date=pendulum.parse(when))
            tasks = {}
            for ti in run.get_task_instances():
                key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
                tasks[key] = str(ti.state)
            outcome = {"dag_id": dag_id, "state": str(run.state), "tasks": tasks,
                       "data_interval": [str(run.data_interval_start), str(run.data_interval_end)]}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome = {"dag_id": dag_id, "error": f"{type(exc).__name__}: {exc}"}
        # Airflow captures the task's stdout; the test reads results from this file
        with open(os.environ["KLAVIYO_DLT_TEST_RESULTS"], "a") as results:
            results.write(json.dumps(outcome) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
