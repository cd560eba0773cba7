"""Airflow 3 DAGs for klaviyo-dlt (``pip install -e .[airflow]``; copy or symlink into ``dags/``).

``klaviyo_dlt``  — one Klaviyo account: one task per resource group (built with dlt's
  ``PipelineTasksGroup``), extraction window = the run's data interval (so ``airflow dags backfill``
  re-reads exactly each interval), retries with exponential backoff at two levels (dlt's tenacity
  policy inside the task for extract/load, Airflow task retries around it), and the reverse sync
  as a downstream task.
``klaviyo_dlt_all_connections`` — every Maton klaviyo connection, one dynamically mapped task per
  connection, each into its own dataset with its own pipeline (= its own incremental state); a
  failing connection fails only its own mapped task.

Configuration (environment of the Airflow workers; keys may also live in dlt's ``.dlt/secrets.toml``
next to the DAG or in the Airflow Variable ``dlt_secrets_toml``):

  KLAVIYO_API_KEY / SOURCES__KLAVIYO__API_KEY   private key for ``klaviyo_dlt``
  KLAVIYO_BASE_URL                              API root (default https://a.klaviyo.com)
  KLAVIYO_DLT_DESTINATION                       duckdb (default) | postgres | any dlt destination
  KLAVIYO_DLT_DUCKDB_PATH                       absolute DuckDB path (the helper wipes its temp folder,
                                                so a relative path would vanish); default $AIRFLOW_HOME/klaviyo.duckdb
  KLAVIYO_DLT_DATASET                           dataset name (default klaviyo_data)
  KLAVIYO_DLT_SCHEDULE                          cron of the data intervals (default "0 0 * * *", UTC)
  KLAVIYO_DLT_START_DATE                        first data interval (default 2024-01-01)
  KLAVIYO_DLT_REVERSE_SYNC_CONFIG               reverse-sync config file (TOML/YAML); unset → task skipped
  KLAVIYO_DLT_RESOURCES                         comma-separated resources to sync (default: all)
  KLAVIYO_DLT_RETRIES                           Airflow retries per task (default 3, exponential backoff)
  MATON_API_KEY, MATON_CTRL_URL, KLAVIYO_DLT_GATEWAY_URL   for ``klaviyo_dlt_all_connections``
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from typing import Any

import dlt
import pendulum
from airflow.sdk import DAG, task
from airflow.timetables.interval import CronDataIntervalTimetable
from dlt.helpers.airflow_helper import PipelineTasksGroup
from tenacity import Retrying, stop_after_attempt, wait_exponential

from klaviyo_source.pipeline_runner import (
    DEFAULT_DATASET_NAME,
    SyncOptions,
    make_destination,
    plain_utc,
)
from klaviyo_source.streams import ALL_STREAMS

# resource groups → one Airflow task (and one dlt pipeline, so one state) each; resources not
# named here (added later to the source) land in "other".
RESOURCE_GROUPS: dict[str, tuple[str, ...]] = {
    "profiles": ("profiles",),
    "events": ("metrics", "events"),
    "campaigns": ("campaigns", "campaign_messages", "flows", "flow_actions", "flow_messages", "templates"),
    "lists_segments": ("lists", "segments", "list_members", "segment_members", "tags", "tag_links"),
    "catalog": ("catalog_items", "catalog_variants", "catalog_categories"),
    "reports": ("metric_aggregates", "campaign_values_reports", "flow_series_reports"),
}

DEFAULT_ARGS = {
    "owner": "data",
    "retries": int(os.environ.get("KLAVIYO_DLT_RETRIES", "3")),
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def resource_groups() -> dict[str, list[str]]:
    """The groups restricted to the resources the installed source offers (empty groups dropped)."""
    if _env("KLAVIYO_DLT_RESOURCES"):
        wanted = [r.strip() for r in _env("KLAVIYO_DLT_RESOURCES").split(",") if r.strip()]
        available = [s.name for s in ALL_STREAMS if s.name in wanted]
    else:  # what the source loads when no resources are named
        available = [s.name for s in ALL_STREAMS if getattr(s, "default_selected", True)]
    groups: dict[str, list[str]] = {}
    grouped: set[str] = set()
    for group, names in RESOURCE_GROUPS.items():
        members = [n for n in names if n in available]
        grouped.update(members)
        if members:
            groups[group] = members
    rest = [n for n in available if n not in grouped]
    if rest:
        groups["other"] = rest
    return groups


def duckdb_path() -> str:
    home = _env("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
    path = _env("KLAVIYO_DLT_DUCKDB_PATH", os.path.join(home, "klaviyo.duckdb"))
    if not os.path.isabs(path):
        raise ValueError(f"KLAVIYO_DLT_DUCKDB_PATH must be absolute, got {path!r}")
    return path


def destination() -> Any:
    return make_destination(_env("KLAVIYO_DLT_DESTINATION", "duckdb"), duckdb_path())


def dataset_name() -> str:
    return _env("KLAVIYO_DLT_DATASET", DEFAULT_DATASET_NAME)


def extraction_window() -> tuple[datetime | None, datetime | None]:
    """The running task's data interval, the end clamped to now (Klaviyo rejects future datetimes)."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    start, end = (plain_utc(v) if v is not None else None for v in (start, end))
    now = datetime.now(timezone.utc)
    if end is not None and end > now:
        end = now
    if start is not None and end is not None and start >= end:
        return None, None  # an empty interval (e.g. a manual run on a trigger timetable): incremental run
    return start, end


def account_source(resources: list[str], **overrides: Any) -> Any:
    """The Klaviyo source for the current data interval (built when the task runs)."""
    from klaviyo_source import klaviyo_source

    start, end = extraction_window()
    kwargs: dict[str, Any] = {"resources": resources, "start_date": start, "end_date": end}
    if _env("KLAVIYO_BASE_URL"):
        kwargs["base_url"] = _env("KLAVIYO_BASE_URL")
    kwargs.update(overrides)
    return klaviyo_source(**{k: v for k, v in kwargs.items() if v is not None})


def _retry_policy() -> Retrying:
    """dlt-level retries inside the task: extract and load steps, exponential backoff."""
    return Retrying(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=2, min=2, max=30), reraise=True)


def _schedule() -> CronDataIntervalTimetable:
    # a data-interval timetable: each run covers [previous tick, this tick) — what backfills need
    return CronDataIntervalTimetable(_env("KLAVIYO_DLT_SCHEDULE", "0 0 * * *"), timezone="UTC")


def _start_date() -> pendulum.DateTime:
    return pendulum.parse(_env("KLAVIYO_DLT_START_DATE", "2024-01-01")).in_timezone("UTC")


# --- one account, task per resource group ------------------------------------------------------
with DAG(
    dag_id="klaviyo_dlt",
    schedule=_schedule(),
    start_date=_start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["klaviyo", "dlt"],
    doc_md=__doc__,
) as klaviyo_dlt:
    group = PipelineTasksGroup(
        "klaviyo",
        use_data_folder=False,
        wipe_local_data=True,  # state lives in the destination and is restored at each task start
        retry_policy=_retry_policy(),
        retry_pipeline_steps=("extract", "load"),
    )
    serial = _env("KLAVIYO_DLT_DESTINATION", "duckdb") == "duckdb"  # one DuckDB writer at a time
    previous = None
    group_tasks = []
    for name, members in resource_groups().items():
        # one pipeline per group: isolated incremental state, one shared dataset and schema
        pipeline = dlt.pipeline(pipeline_name=f"klaviyo_{name}", destination=destination(),
                                dataset_name=dataset_name())
        # a callable: the source is built inside the task, where the data interval is known
        tasks = group.add_run(pipeline, lambda members=members: account_source(members), decompose="none",
                              trigger_rule="all_done" if serial else "all_success")
        if serial and previous is not None:
            previous >> tasks[0]
        previous = tasks[-1]
        group_tasks.extend(tasks)

    @task(trigger_rule="all_success")
    def reverse_sync() -> dict[str, Any]:
        """Push the configured SQL audience into Klaviyo after every extraction succeeded."""
        from airflow.exceptions import AirflowSkipException

        config = _env("KLAVIYO_DLT_REVERSE_SYNC_CONFIG")
        if not config:
            raise AirflowSkipException("KLAVIYO_DLT_REVERSE_SYNC_CONFIG not set")
        from klaviyo_source.reverse_sync.run import reverse_sync as run_reverse_sync

        kwargs: dict[str, Any] = {"destination": destination(), "dataset_name": dataset_name()}
        if _env("KLAVIYO_BASE_URL"):
            kwargs["base_url"] = _env("KLAVIYO_BASE_URL")
        report = run_reverse_sync(config, **kwargs)
        return _plain(report)

    group_tasks >> reverse_sync()


# --- every Maton connection, one mapped task each ----------------------------------------------
with DAG(
    dag_id="klaviyo_dlt_all_connections",
    schedule=_schedule(),
    start_date=_start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["klaviyo", "dlt", "maton"],
) as klaviyo_dlt_all_connections:

    @task
    def list_connections() -> list[dict[str, Any]]:
        """Every klaviyo connection (ACTIVE synced; FAILED mapped too, so its task fails visibly)."""
        from klaviyo_source.accounts import connection_targets
        from klaviyo_source.maton import MatonClient

        targets = connection_targets(MatonClient(), gateway_url=_env("KLAVIYO_DLT_GATEWAY_URL"))
        return [{"name": t.name, "maton_connection": t.maton_connection, "problem": t.problem} for t in targets]

    # DuckDB takes one writer process at a time; other destinations sync accounts in parallel
    one_at_a_time = {"max_active_tis_per_dag": 1} if _env("KLAVIYO_DLT_DESTINATION", "duckdb") == "duckdb" else {}

    @task(map_index_template="{{ connection['name'] }}", **one_at_a_time)
    def sync_connection(connection: dict[str, Any]) -> dict[str, Any]:
        """One account: own pipeline (state) and dataset; a temp working folder restored from the destination."""
        from airflow.exceptions import AirflowException

        from klaviyo_source.accounts import AccountTarget, sync_account
        from klaviyo_source.maton import DEFAULT_GATEWAY_URL

        start, end = extraction_window()
        gateway = _env("KLAVIYO_DLT_GATEWAY_URL", DEFAULT_GATEWAY_URL).rstrip("/")
        if not gateway.endswith("/klaviyo"):
            gateway += "/klaviyo"
        target = AccountTarget(name=connection["name"], auth="maton", base_url=gateway,
                               maton_connection=connection["maton_connection"], problem=connection["problem"])
        workdir = tempfile.mkdtemp(prefix="klaviyo_dlt_")
        try:
            resources = [r for group in resource_groups().values() for r in group]
            opts = SyncOptions(
                resources=resources, start_date=start, end_date=end, destination=_env("KLAVIYO_DLT_DESTINATION", "duckdb"),
                duckdb_path=duckdb_path(), dataset_name=dataset_name(), pipeline_name="klaviyo",
                api_key=_env("MATON_API_KEY"), pipelines_dir=workdir,
            )
            result = sync_account(opts, target)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if not result.ok:
            raise AirflowException(f"account {target.name}: {result.error}")
        return {"account": target.name, "dataset": result.dataset_name, "rows": result.rows}

    sync_connection.expand(connection=list_connections())


def _plain(report: Any) -> dict[str, Any]:
    """A JSON-able summary of a reverse-sync report for XCom."""
    if hasattr(report, "as_dict"):
        return report.as_dict()
    if hasattr(report, "__dict__"):
        return {k: v for k, v in vars(report).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"report": str(report)}
