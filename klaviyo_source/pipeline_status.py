"""``klaviyo-dlt status``: per resource its stored watermark, rows loaded by the last run, when,
and whether the last run failed.

Sources of truth: the pipeline state (watermarks; restored from the destination when the local
working folder is gone, as after an Airflow task), the local run trace (rows and failure of the
last run, when present), and the destination's ``_dlt_loads`` plus ``_dlt_load_id`` columns
(rows of the latest load per table and its time — works without any local files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from klaviyo_source.cli_errors import redact
from klaviyo_source.pipeline_runner import SyncOptions, make_pipeline


@dataclass
class ResourceStatus:
    resource: str
    tables: list[str]
    watermark: Any = None
    rows_last_run: int | None = None
    last_loaded_at: datetime | None = None
    total_rows: int | None = None
    failed: bool = False


@dataclass
class StatusReport:
    pipeline_name: str
    dataset_name: str
    resources: list[ResourceStatus] = field(default_factory=list)
    last_run_at: datetime | None = None
    last_run_failed: bool = False
    last_error: str | None = None
    has_runs: bool = False


def pipeline_status(opts: SyncOptions) -> StatusReport:
    """Status of the pipeline ``opts.pipeline_name`` writing into ``opts.dataset_name``."""
    pipeline = make_pipeline(opts)
    report = StatusReport(opts.pipeline_name, opts.dataset_name)
    if pipeline.default_schema_name is None:
        try:
            pipeline.sync_destination()
        except Exception:  # noqa: BLE001 - nothing in the destination yet
            return report
    if pipeline.default_schema_name is None:
        return report
    report.has_runs = True
    schema = pipeline.default_schema
    tables_by_resource: dict[str, list[str]] = {}
    for table in schema.data_tables(seen_data_only=True):
        resource = table.get("resource")
        if resource and not table.get("parent"):
            tables_by_resource.setdefault(resource, []).append(table["name"])

    trace = pipeline.last_trace
    trace_rows: dict[str, int] | None = None
    failed_resources: set[str] = set()
    if trace is not None:
        report.last_run_at = trace.started_at
        failed_step = next((s for s in trace.steps if s.step_exception), None)
        if failed_step is not None:
            report.last_run_failed = True
            traces = [t for t in failed_step.exception_traces or [] if isinstance(t, dict)]
            innermost = traces[-1].get("message") if traces else None  # the root cause comes last
            report.last_error = _first_line(redact(str(innermost or failed_step.step_exception)))
            for exc_trace in failed_step.exception_traces or []:
                name = exc_trace.get("resource_name") if isinstance(exc_trace, dict) else None
                if name:
                    failed_resources.add(name)
        normalize = trace.last_normalize_info
        if normalize is not None and not report.last_run_failed:
            trace_rows = dict(normalize.row_counts)
        elif report.last_run_failed:
            trace_rows = {}

    per_table = _latest_load_per_table(pipeline, [t for ts in tables_by_resource.values() for t in ts])
    watermarks = _watermarks(pipeline.state, schema.name)
    for resource in sorted(set(tables_by_resource) | set(watermarks)):
        tables = tables_by_resource.get(resource, [])
        status = ResourceStatus(resource, tables, watermark=watermarks.get(resource))
        loaded = [per_table[t] for t in tables if t in per_table]
        if loaded:
            status.last_loaded_at = max(l["loaded_at"] for l in loaded if l["loaded_at"]) if any(
                l["loaded_at"] for l in loaded) else None
            status.total_rows = sum(l["total"] for l in loaded)
        if trace_rows is not None:
            status.rows_last_run = sum(trace_rows.get(t, 0) for t in tables)
        elif loaded and all(l["latest_rows"] is not None for l in loaded):
            status.rows_last_run = sum(l["latest_rows"] for l in loaded)
        status.failed = resource in failed_resources or (report.last_run_failed and not failed_resources)
        report.resources.append(status)
    if report.last_run_at is None:
        times = [r.last_loaded_at for r in report.resources if r.last_loaded_at]
        report.last_run_at = max(times) if times else None
    return report


def _latest_load_per_table(pipeline: Any, tables: list[str]) -> dict[str, dict[str, Any]]:
    """Per table: total rows and, when the table carries ``_dlt_load_id``, the rows and time of its
    latest load (arrow-loaded tables have no load id column unless dlt is told to add it)."""
    if not tables:
        return {}
    dataset = pipeline.dataset()
    schema = pipeline.default_schema
    loads = {row[0]: row[1] for row in dataset.query(
        "SELECT load_id, inserted_at FROM _dlt_loads WHERE status = 0").fetchall()}
    last_load_at = max(loads.values()) if loads else None
    totals = {row[0]: row[1] for row in dataset.row_counts(table_names=tables).fetchall()}
    found: dict[str, dict[str, Any]] = {}
    for table in tables:
        if table not in totals:
            continue
        entry = {"total": totals[table], "latest_rows": None, "loaded_at": last_load_at}
        if "_dlt_load_id" in schema.get_table_columns(table):
            rows = dataset.query(f"SELECT _dlt_load_id, COUNT(*) FROM {table} GROUP BY 1").fetchall()
            if rows:
                latest_id, entry["latest_rows"] = max(rows, key=lambda r: r[0])
                entry["loaded_at"] = loads.get(latest_id, last_load_at)
        found[table] = entry
    return found


def _watermarks(state: dict[str, Any], schema_name: str) -> dict[str, Any]:
    """The incremental ``last_value`` stored for each resource of the source."""
    found: dict[str, Any] = {}
    resources = state.get("sources", {}).get(schema_name, {}).get("resources", {})
    for resource, resource_state in resources.items():
        values = list(_last_values(resource_state))
        if values:
            found[resource] = max(values, key=str) if len(values) > 1 else values[0]
    return found


def _last_values(node: Any):
    if isinstance(node, dict):
        if "last_value" in node and node["last_value"] is not None:
            yield node["last_value"]
        for value in node.values():
            if isinstance(value, dict):
                yield from _last_values(value)


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    return next((line.strip() for line in str(text).splitlines() if line.strip()), None)
