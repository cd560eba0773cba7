"""Airflow 3 DAGs for klaviyo-dlt (``pip install "klaviyo-dlt[airflow]"``).

A DAG file in Airflow's ``dags/`` folder only needs::

    from klaviyo_dlt.airflow import klaviyo_dlt_all_connections_dag, klaviyo_dlt_dag

    klaviyo_dlt = klaviyo_dlt_dag()
    klaviyo_dlt_all_connections = klaviyo_dlt_all_connections_dag()

(``pipelines/klaviyo_airflow_dag.py`` is that file).

``klaviyo_dlt`` — one Klaviyo account: one task per resource group, each its own dlt pipeline
  ``klaviyo_<group>`` (its own incremental state) writing into one dataset, and the reverse sync
  downstream.
``klaviyo_dlt_all_connections`` — every Maton klaviyo connection, one dynamically mapped task per
  connection, each into ``<dataset>_<connection>`` with its own pipeline; a failing connection
  fails only its own task.

Scheduled runs are incremental syncs from the watermarks stored in the destination; a backfill
(``airflow backfill create``, or the params ``backfill_start``/``backfill_end``) reads exactly its
window and moves no watermark (see ``klaviyo_dlt.run_window``).  Rejected credentials and
configuration errors fail a task at once; other failures are retried in the task, then by Airflow
(see ``klaviyo_dlt.task_run``).  Every sync task logs its rows per table and requests and returns
them as its XCom.  Settings come from ``KLAVIYO_DLT_*`` variables (``klaviyo_dlt.dag_config``) and
dlt's ``.dlt/`` folder in the DAGs folder.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from klaviyo_dlt.dag_config import DagConfig
from klaviyo_dlt.run_window import END_PARAM, START_PARAM, RunWindow, backfill_resources, run_window
from klaviyo_dlt.task_run import (FatalSyncError, TransientSyncError, is_fatal, prepare_dataset, run_reverse_sync,
                                  run_task)
from klaviyo_source.cli_errors import CliError, classify

PIPELINE_PREFIX = "klaviyo"
BACKFILL_PARAMS = {
    START_PARAM: Param(None, type=["null", "string"],
                       description="Backfill window start (ISO date); with backfill_end the run re-reads "
                                   "exactly that window and moves no watermark"),
    END_PARAM: Param(None, type=["null", "string"], description="Backfill window end (ISO date, exclusive)"),
}


def default_args(config: DagConfig) -> dict[str, Any]:
    """Airflow retries for transient failures (fatal ones raise ``AirflowFailException``)."""
    return {
        "owner": "data",
        "retries": config.retries,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    }


def _dag(dag_id: str, config: DagConfig, doc: str, tags: list[str]) -> DAG:
    return DAG(
        dag_id=dag_id,
        # a data-interval timetable: scheduled runs ignore the interval, backfills read it
        schedule=CronDataIntervalTimetable(config.schedule, timezone="UTC"),
        start_date=config.dag_start_date,
        catchup=False,  # a scheduled run reads everything since the watermarks: no run is ever missed
        max_active_runs=1,
        default_args=default_args(config),
        params=dict(BACKFILL_PARAMS),
        tags=tags,
        doc_md=doc,
    )


def current_window() -> RunWindow:
    """The running task's window: incremental, or a backfill window (see ``run_window``)."""
    context = get_current_context()
    dag_run = context.get("dag_run")
    return run_window(getattr(dag_run, "run_type", None), context.get("data_interval_start"),
                      context.get("data_interval_end"), context.get("params"))


def use_dags_folder_config() -> None:
    """Let dlt read ``.dlt/config.toml`` and ``.dlt/secrets.toml`` from the DAGs folder."""
    if os.environ.get("DLT_PROJECT_DIR"):
        return
    from airflow.sdk import conf
    from dlt.common.configuration.container import Container
    from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext

    os.environ["DLT_PROJECT_DIR"] = conf.get("core", "dags_folder")
    if PluggableRunContext in Container():
        Container()[PluggableRunContext].reload_providers()


def run_for_airflow(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` and translate its failures: fatal ones end the task without Airflow retries."""
    try:
        return work()
    except FatalSyncError as error:
        raise AirflowFailException(str(error)) from None
    except TransientSyncError as error:
        raise AirflowException(str(error)) from None
    except CliError as error:
        if is_fatal(error):
            raise AirflowFailException(str(error)) from None
        raise AirflowException(str(error)) from None


def klaviyo_dlt_dag(dag_id: str = "klaviyo_dlt", config: DagConfig | None = None) -> DAG:
    """The one-account DAG: a sync task per resource group, then the reverse sync.

    Args:
        dag_id: the DAG id.
        config: settings (default: ``DagConfig.from_env()``).

    Returns:
        The DAG.
    """
    config = config or DagConfig.from_env()
    with _dag(dag_id, config, __doc__ or "", ["klaviyo", "dlt"]) as dag:
        # parallel groups on a server destination: the shared dataset is created before they start
        previous = None if config.serial else _prepare_task(config)()
        syncs = []
        for group, members in config.groups().items():
            # DuckDB takes one writer process at a time: chain the groups; a failed one does not stop the next
            rule = "all_done" if config.serial else "all_success"
            sync = _group_task(config, group, members).override(task_id=f"sync_{group}", trigger_rule=rule)()
            if previous is not None:
                previous >> sync
            if config.serial:
                previous = sync
            syncs.append(sync)
        syncs >> _reverse_sync_task(config)()
    return dag


def _prepare_task(config: DagConfig) -> Any:
    @task(task_id="prepare_dataset")
    def prepare() -> dict[str, Any]:
        """Create the dataset, its staging dataset and dlt's tables once, before the groups load in parallel."""

        def work() -> dict[str, Any]:
            use_dags_folder_config()
            return prepare_dataset(config)

        return run_for_airflow(work)

    return prepare


def _group_task(config: DagConfig, group: str, members: list[str]) -> Any:
    @task
    def sync_group() -> dict[str, Any]:
        """Sync one resource group: incremental from the stored watermarks, or a backfill window."""

        def work() -> dict[str, Any]:
            use_dags_folder_config()
            window = current_window()
            resources = backfill_resources(members) if window.is_backfill else members
            if not resources:
                raise AirflowSkipException(f"backfill: none of {', '.join(members)} is read by time window")
            opts = config.group_sync_options(group, resources, window.start or config.start_date, window.end)
            return run_task(opts, label=opts.pipeline_name, window=window.as_dict())

        return run_for_airflow(work)

    return sync_group


def _reverse_sync_task(config: DagConfig) -> Any:
    @task(task_id="reverse_sync", trigger_rule="all_success")
    def reverse_sync() -> dict[str, Any]:
        """Push the configured SQL audience into Klaviyo after every extraction succeeded."""
        if not config.reverse_sync_config:
            raise AirflowSkipException("KLAVIYO_DLT_REVERSE_SYNC_CONFIG not set")

        def work() -> dict[str, Any]:
            use_dags_folder_config()
            if current_window().is_backfill:
                raise AirflowSkipException("backfill run: the audience is pushed by scheduled runs only")
            return run_reverse_sync(config)

        return run_for_airflow(work)

    return reverse_sync


def klaviyo_dlt_all_connections_dag(dag_id: str = "klaviyo_dlt_all_connections",
                                    config: DagConfig | None = None) -> DAG:
    """The many-accounts DAG: one mapped sync task per Maton klaviyo connection.

    Args:
        dag_id: the DAG id.
        config: settings (default: ``DagConfig.from_env()``).

    Returns:
        The DAG.
    """
    config = config or DagConfig.from_env()
    with _dag(dag_id, config, __doc__ or "", ["klaviyo", "dlt", "maton"]) as dag:

        @task
        def list_connections() -> list[dict[str, Any]]:
            """Every klaviyo connection (ACTIVE synced; FAILED mapped too, so its task fails visibly)."""
            from klaviyo_source.accounts import connection_targets
            from klaviyo_source.maton import MatonClient

            def work() -> list[dict[str, Any]]:  # type: ignore[return]
                try:
                    targets = connection_targets(MatonClient(), gateway_url=config.gateway_url)
                except Exception as exc:  # noqa: BLE001 - classified: a rejected Maton key fails at once
                    raise classify(exc) from exc
                return [{"name": t.name, "maton_connection": t.maton_connection, "problem": t.problem}
                        for t in targets]

            return run_for_airflow(work)  # type: ignore[return-value]

        # DuckDB takes one writer process at a time; other destinations sync accounts in parallel
        one_at_a_time = {"max_active_tis_per_dag": 1} if config.serial else {}

        @task(map_index_template="{{ connection['name'] }}", **one_at_a_time)
        def sync_connection(connection: dict[str, Any]) -> dict[str, Any]:
            """One account: its own pipeline (state) and dataset, restored from the destination."""
            from klaviyo_source.accounts import AccountTarget, options_for
            from klaviyo_source.maton import DEFAULT_GATEWAY_URL

            def work() -> dict[str, Any]:
                use_dags_folder_config()
                if connection.get("problem"):
                    raise FatalSyncError(f"account {connection['name']}: {connection['problem']}", 3)
                window = current_window()
                resources = [r for members in config.groups().values() for r in members]
                if window.is_backfill:
                    resources = backfill_resources(resources)
                gateway = (config.gateway_url or DEFAULT_GATEWAY_URL).rstrip("/")
                if not gateway.endswith("/klaviyo"):
                    gateway += "/klaviyo"
                target = AccountTarget(name=connection["name"], auth="maton", base_url=gateway,
                                       maton_connection=connection["maton_connection"])
                base = config.sync_options(PIPELINE_PREFIX, resources, window.start or config.start_date,
                                           window.end, api_key=os.environ.get("MATON_API_KEY"))
                summary = run_task(options_for(base, target), label=f"account {target.name}",
                                   window=window.as_dict())
                summary["account"] = target.name
                return summary

            return run_for_airflow(work)

        sync_connection.expand(connection=list_connections())
    return dag
