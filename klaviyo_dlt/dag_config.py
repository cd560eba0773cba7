"""What the Airflow DAGs are configured with: ``KLAVIYO_DLT_*`` variables of the Airflow environment.

Read when the DAG file is parsed (schedule, start date, resources, retries: a bad value there is a
one-line DAG import error) and again in each task (keys, destination, paths: a bad value fails the
task at once, without retries).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

from klaviyo_source.cli_errors import UsageError
from klaviyo_source.pipeline_runner import DEFAULT_DATASET_NAME, SyncOptions, parse_date
from klaviyo_source.streams import ALL_STREAMS

# resource groups → one Airflow task (and one dlt pipeline, so one incremental state) each;
# resources not named here (added later to the source) land in "other"
RESOURCE_GROUPS: dict[str, tuple[str, ...]] = {
    "profiles": ("profiles",),
    "events": ("metrics", "events"),
    "campaigns": ("campaigns", "campaign_messages", "flows", "flow_actions", "flow_messages", "templates"),
    "lists_segments": ("lists", "segments", "list_members", "segment_members", "tags", "tag_links"),
    "catalog": ("catalog_items", "catalog_variants", "catalog_categories"),
    "reports": ("metric_aggregates", "campaign_values_reports", "flow_series_reports"),
}
DEFAULT_SCHEDULE = "0 0 * * *"
# the DAG's own start date when KLAVIYO_DLT_START_DATE is unset (the sync then reads all history):
# only backfills look at it, and no Klaviyo account holds data from before 2012
EARLIEST_DAG_START = datetime(2012, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class DagConfig:
    """The DAGs' settings; ``DagConfig.from_env()`` reads them from ``KLAVIYO_DLT_*`` variables."""

    destination: str = "duckdb"
    duckdb_path: str | None = None
    dataset_name: str = DEFAULT_DATASET_NAME
    base_url: str | None = None
    schedule: str = DEFAULT_SCHEDULE
    start_date: datetime | None = None
    resources: tuple[str, ...] = ()
    retries: int = 3
    reverse_sync_config: str | None = None
    gateway_url: str | None = None
    airflow_home: str = field(default_factory=lambda: os.path.expanduser("~/airflow"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DagConfig":
        """Settings from the environment; an unusable value is a ``UsageError`` naming the variable.

        Args:
            environ: the variables to read (default ``os.environ``).

        Returns:
            The configuration.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = (env.get(name) or "").strip()
            return value or None

        retries = get("KLAVIYO_DLT_RETRIES") or "3"
        if not retries.isdigit():
            raise UsageError(f"KLAVIYO_DLT_RETRIES: '{retries}' is not a whole number of retries")
        return cls(
            destination=get("KLAVIYO_DLT_DESTINATION") or "duckdb",
            duckdb_path=get("KLAVIYO_DLT_DUCKDB_PATH"),
            dataset_name=get("KLAVIYO_DLT_DATASET") or DEFAULT_DATASET_NAME,
            base_url=get("KLAVIYO_BASE_URL"),
            schedule=get("KLAVIYO_DLT_SCHEDULE") or DEFAULT_SCHEDULE,
            start_date=parse_date(get("KLAVIYO_DLT_START_DATE"), "KLAVIYO_DLT_START_DATE"),
            resources=tuple(selected_resources(get("KLAVIYO_DLT_RESOURCES"))),
            retries=int(retries),
            reverse_sync_config=get("KLAVIYO_DLT_REVERSE_SYNC_CONFIG"),
            gateway_url=get("KLAVIYO_DLT_GATEWAY_URL"),
            airflow_home=get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"),
        )

    @property
    def dag_start_date(self) -> datetime:
        """The DAG's ``start_date``: the first data interval a backfill can ask for."""
        return self.start_date or EARLIEST_DAG_START

    @property
    def serial(self) -> bool:
        """DuckDB takes one writer process at a time: tasks writing to it must run one after another."""
        return self.destination == "duckdb"

    def duckdb_file(self) -> str:
        """The absolute DuckDB path (default ``$AIRFLOW_HOME/klaviyo.duckdb``).

        Returns:
            The path.

        Raises:
            UsageError: for a relative path (each task runs in a temporary folder that is wiped).
        """
        path = self.duckdb_path or os.path.join(self.airflow_home, "klaviyo.duckdb")
        if not os.path.isabs(path):
            raise UsageError(f"KLAVIYO_DLT_DUCKDB_PATH must be an absolute path, got '{path}'")
        return path

    def groups(self) -> dict[str, list[str]]:
        """The resources to sync, grouped into tasks (empty groups dropped).

        Returns:
            Group name → resource names, in ``RESOURCE_GROUPS`` order, then ``other``.
        """
        return resource_groups(self.resources)

    def group_sync_options(self, group: str, resources: Sequence[str], start: datetime | None,
                           end: datetime | None) -> SyncOptions:
        """The ``SyncOptions`` of a resource group's task in the one-account DAG.

        The groups load into one dataset, each with its own pipeline (its own state) and its own dlt
        schema: with one shared schema name, a pipeline would restore whichever group's schema was
        stored last, miss its own tables in it, and skip its deletion sweeps and membership passes.

        Args:
            group: the group's name (a key of ``groups()``).
            resources: the resources to read.
            start: see ``sync_options``.
            end: see ``sync_options``.

        Returns:
            The options.
        """
        name = group_pipeline_name(group)
        return self.sync_options(name, resources, start, end, schema_name=name)

    def sync_options(self, pipeline_name: str, resources: Sequence[str], start: datetime | None,
                     end: datetime | None, pipelines_dir: str | None = None, **overrides: object) -> SyncOptions:
        """The ``SyncOptions`` of one task's sync.

        Args:
            pipeline_name: dlt pipeline name (= the key of the incremental state in the destination).
            resources: resources to read.
            start: lower bound (scheduled runs: the first run's start; backfills: the window start).
            end: upper bound, only for a backfill (dlt then keeps the stored state untouched).
            pipelines_dir: the dlt working folder (``run_task`` gives each task a temporary one).
            overrides: other ``SyncOptions`` fields (``api_key``, ``auth``, ``schema_name`` ...).

        Returns:
            The options.
        """
        return SyncOptions(
            resources=list(resources), start_date=start, end_date=end, destination=self.destination,
            duckdb_path=self.duckdb_file() if self.destination == "duckdb" else None,
            dataset_name=self.dataset_name, pipeline_name=pipeline_name, base_url=self.base_url,
            pipelines_dir=pipelines_dir, **overrides,  # type: ignore[arg-type]
        )


def group_pipeline_name(group: str) -> str:
    """The dlt pipeline (and schema) name of a resource group's task: ``klaviyo_<group>``."""
    return f"klaviyo_{group}"


def selected_resources(names: str | None) -> list[str]:
    """``KLAVIYO_DLT_RESOURCES`` (comma-separated) checked against the source's resources.

    Args:
        names: the variable's value; empty means what the source loads by default.

    Returns:
        Resource names in the source's order.
    """
    if not names:
        return [s.name for s in ALL_STREAMS if s.default_selected]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [s.name for s in ALL_STREAMS]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"KLAVIYO_DLT_RESOURCES: unknown resource '{unknown[0]}'; choose from: {', '.join(known)}")
    return [n for n in known if n in wanted]


def resource_groups(resources: Sequence[str]) -> dict[str, list[str]]:
    """``resources`` split into the task groups of ``RESOURCE_GROUPS`` (the rest in ``other``).

    Args:
        resources: resource names.

    Returns:
        Group name → its resources, empty groups left out.
    """
    groups: dict[str, list[str]] = {}
    grouped: set[str] = set()
    for group, names in RESOURCE_GROUPS.items():
        members = [n for n in names if n in resources]
        grouped.update(members)
        if members:
            groups[group] = members
    rest = [n for n in resources if n not in grouped]
    if rest:
        groups["other"] = rest
    return groups
