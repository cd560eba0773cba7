"""Run one Klaviyo → destination sync: options in, a ``SyncResult`` out.

Shared by the CLI (``klaviyo-dlt sync``), the demo, the multi-account fan-out and the Airflow DAG.
Builds the destination (DuckDB by default, any dlt destination by name with its config from
``.dlt``/environment), the ``klaviyo_source`` with the chosen resources and date window, and
runs the dlt pipeline — a ``--full-refresh`` resource first with ``refresh="drop_resources"``
(its tables and incremental state start over), the others incrementally.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import dlt
import pendulum

from klaviyo_source.cli_errors import UsageError, classify, register_secret

DEFAULT_PIPELINE_NAME = "klaviyo"
DEFAULT_DATASET_NAME = "klaviyo_data"
DEFAULT_DUCKDB_FILE = "klaviyo.duckdb"


@dataclass
class SyncOptions:
    """What to sync, from where, into where.  ``None`` means "the source's / dlt's default"."""

    resources: Sequence[str] | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    destination: str = "duckdb"
    duckdb_path: str | None = None
    dataset_name: str = DEFAULT_DATASET_NAME
    pipeline_name: str = DEFAULT_PIPELINE_NAME
    full_refresh: Sequence[str] = ()
    api_key: str | None = field(default=None, repr=False)  # never shown by repr (logs, tracebacks)
    base_url: str | None = None
    auth: str | None = None
    maton_connection: str | None = None
    revision: str | None = None
    pipelines_dir: str | None = None
    refresh: str | None = None  # dlt refresh mode for the whole run, e.g. "drop_sources" (the demo)
    source_options: dict[str, Any] = field(default_factory=dict)
    # dlt schema (and source state key); pipelines sharing one dataset each need their own, or the
    # schema one restores is whichever pipeline stored last and may lack its own tables
    schema_name: str | None = None


@dataclass
class SyncResult:
    """Outcome of one sync: rows loaded per table, load ids, timing, and the error if it failed."""

    pipeline_name: str
    dataset_name: str
    destination: str
    rows: dict[str, int] = field(default_factory=dict)
    load_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0
    label: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_date(value: str | None, option: str) -> datetime | None:
    """``2024-01-31`` or ISO 8601 → aware UTC datetime; anything else is a ``UsageError``."""
    if value is None or value == "":
        return None
    try:
        parsed = pendulum.parse(value, strict=False)
    except Exception:  # noqa: BLE001 - pendulum raises several types for garbage
        parsed = None
    if not isinstance(parsed, datetime):
        raise UsageError(f"{option}: '{value}' is not a date; use YYYY-MM-DD or ISO 8601 like 2024-01-31T00:00:00Z")
    return plain_utc(parsed)


def plain_utc(value: datetime) -> datetime:
    """An aware UTC ``datetime.datetime`` (not a pendulum subclass); naive input is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                    value.microsecond, tzinfo=timezone.utc)


def configured_destination() -> str:
    """The destination dlt's configuration names (``destination_type`` in ``.dlt/config.toml`` or
    ``DESTINATION_TYPE``), else ``duckdb``: what ``--destination`` means when it is not given."""
    return str(dlt.config.get("destination_type") or "duckdb")


def configured_dataset_name() -> str:
    """The dataset dlt's configuration names (``dataset_name`` in ``.dlt/config.toml`` or
    ``DATASET_NAME``), else ``klaviyo_data``: what ``--dataset-name`` means when it is not given."""
    return str(dlt.config.get("dataset_name") or DEFAULT_DATASET_NAME)


def configured_duckdb_file() -> str | None:
    """The DuckDB database dlt's own configuration names: ``DESTINATION__DUCKDB__CREDENTIALS`` or
    ``[destination.duckdb] credentials`` in ``.dlt/secrets.toml`` (a path, or a table with
    ``database``).  ``None`` when nothing is configured.

    Raises dlt's ``ValueNotSecretException`` when the credentials sit in ``.dlt/config.toml``, which
    dlt refuses to read secrets from (the CLI turns it into a one-line usage error).
    """
    config = dlt.destinations.duckdb().configuration(None, accept_partial=True)
    database = getattr(config.credentials, "database", None) if config.credentials else None
    return database if isinstance(database, str) and database else None


def make_destination(name: str, duckdb_path: str | None = None, pipeline_name: str = DEFAULT_PIPELINE_NAME) -> Any:
    """A dlt destination by name.

    DuckDB writes to ``duckdb_path`` when given, else to the file dlt's configuration names
    (``configured_duckdb_file``; its other settings apply too), else to ``./klaviyo.duckdb``.
    Other destinations take their credentials from ``.dlt`` / the environment, the dlt way.
    """
    from dlt.common.destination import Destination
    from dlt.common.destination.exceptions import DestinationException
    from dlt.common.exceptions import MissingDependencyException

    if name == "duckdb":
        if not duckdb_path and configured_duckdb_file():
            return dlt.destinations.duckdb()  # dlt resolves its own configuration at run time
        return dlt.destinations.duckdb(duckdb_file_path(duckdb_path))
    try:
        return Destination.from_reference(name)
    except MissingDependencyException as exc:
        raise UsageError(f"destination '{name}' needs extra packages: {str(exc).strip().splitlines()[0]}") from None
    except (DestinationException, ImportError, KeyError, ValueError):
        raise UsageError(
            f"unknown destination '{name}'; use duckdb, postgres or another dlt destination name "
            "(snowflake, bigquery, filesystem, ...) configured in .dlt/secrets.toml or the environment"
        ) from None


def duckdb_file_path(path: str | None) -> str:
    """The absolute path of the DuckDB file a run writes: ``path``, the configured file, or the default."""
    chosen = path or configured_duckdb_file() or DEFAULT_DUCKDB_FILE
    if chosen.startswith(":"):  # dlt's special locations (":pipeline:", ":memory:") are not paths
        return chosen
    return os.path.abspath(os.path.expanduser(chosen))


def describe_destination(opts: SyncOptions) -> str:
    return f"duckdb:{duckdb_file_path(opts.duckdb_path)}" if opts.destination == "duckdb" else opts.destination


def validate(opts: SyncOptions) -> None:
    """Checks that need no network: dates in order, DuckDB dataset not named like its file."""
    if opts.start_date and opts.end_date and opts.start_date >= opts.end_date:
        raise UsageError("--start-date must be before --end-date")
    now = datetime.now(timezone.utc)
    if opts.start_date and opts.start_date > now:
        raise UsageError("--start-date is in the future; Klaviyo rejects future datetimes in filters")
    if opts.end_date and opts.end_date > now:
        opts.end_date = now  # a future end is the same window as "now" and Klaviyo 400s on it
    if opts.destination == "duckdb":
        stem = os.path.splitext(os.path.basename(duckdb_file_path(opts.duckdb_path)))[0]
        if stem == opts.dataset_name:
            raise UsageError(
                f"--dataset-name '{opts.dataset_name}' equals the DuckDB file name; choose another dataset name"
            )
    make_destination(opts.destination, opts.duckdb_path)  # unknown destination → UsageError
    known = resource_names()
    for name in list(opts.resources or []) + list(opts.full_refresh):
        if name not in known:
            raise UsageError(f"unknown resource '{name}'; choose from: {', '.join(known)}")
    for name in opts.full_refresh:
        if opts.resources and name not in opts.resources:
            raise UsageError(f"--full-refresh {name}: not among the selected resources ({', '.join(opts.resources)})")
    register_secret(opts.api_key)


def _source_factory() -> Any:
    from klaviyo_source import klaviyo_source

    return klaviyo_source


def build_source(opts: SyncOptions, resources: Sequence[str] | None = None, progress: Any = None) -> Any:
    """The ``klaviyo_source`` configured from ``opts`` with ``resources`` (default: all) selected."""
    factory = _source_factory()
    wanted = {
        "api_key": opts.api_key,
        "base_url": opts.base_url,
        "auth": opts.auth,
        "maton_connection": opts.maton_connection,
        "revision": opts.revision,
        "start_date": opts.start_date,
        "end_date": opts.end_date,
        **opts.source_options,
    }
    if resources:
        wanted["resources"] = list(resources)
    accepted = _accepted_parameters(factory)
    kwargs = {k: v for k, v in wanted.items() if v is not None and (accepted is None or k in accepted)}
    source = factory(**kwargs)
    if resources:
        known = list(source.resources.keys())
        unknown = [r for r in resources if r not in known]
        if unknown:
            raise UsageError(f"unknown resource '{unknown[0]}'; choose from: {', '.join(known)}")
        source = source.with_resources(*resources)
    if opts.schema_name:
        source.schema = source.schema.clone(with_name=opts.schema_name)
    if hasattr(progress, "watch_http"):
        stats = _http_stats(source)
        if stats is not None:
            progress.watch_http(stats)
    return source


def _http_stats(source: Any) -> Any:
    """The request counters of the source's HTTP client (all resources share one client)."""
    for resource in source.resources.values():
        stats = getattr(getattr(getattr(resource, "reader", None), "client", None), "stats", None)
        if stats is not None:
            return stats
    return None


def resource_names() -> list[str]:
    """Every resource the source offers (no network, no credentials needed)."""
    try:
        from klaviyo_source.streams import ALL_STREAMS as streams
    except ImportError:  # older source without the extra streams
        from klaviyo_source.streams import STREAMS as streams

    return [s.name for s in streams]


def _accepted_parameters(factory: Any) -> set[str] | None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def make_pipeline(opts: SyncOptions, progress: Any = None) -> Any:
    kwargs: dict[str, Any] = {}
    if opts.pipelines_dir:
        kwargs["pipelines_dir"] = opts.pipelines_dir
    from klaviyo_source.loaded_files import drop_loaded_files

    return drop_loaded_files(dlt.pipeline(
        pipeline_name=opts.pipeline_name,
        destination=make_destination(opts.destination, opts.duckdb_path, opts.pipeline_name),
        dataset_name=opts.dataset_name,
        progress=progress,
        **kwargs,
    ))


def run_sync(opts: SyncOptions, progress: Any = None, raise_errors: bool = True) -> SyncResult:
    """Run the sync; on failure raise a classified ``CliError`` (or return it in the result)."""
    started = time.monotonic()
    result = SyncResult(opts.pipeline_name, opts.dataset_name, describe_destination(opts))
    try:
        validate(opts)
        selected = list(opts.resources) if opts.resources else None
        pipeline = make_pipeline(opts, progress)
        runs: list[tuple[Any, str | None]] = []
        if opts.full_refresh:
            runs.append((build_source(opts, list(opts.full_refresh), progress), "drop_resources"))
            if selected:
                rest = [r for r in selected if r not in opts.full_refresh]
                if rest:
                    runs.append((build_source(opts, rest, progress), None))
            else:  # everything the source selects by default, except what was just refreshed
                source = build_source(opts, None, progress)
                rest = [r for r in source.selected_resources if r not in opts.full_refresh]
                if rest:
                    runs.append((source.with_resources(*rest), None))
        else:
            runs.append((build_source(opts, selected, progress), opts.refresh))
        for source, refresh in runs:
            info = pipeline.run(source, refresh=refresh) if refresh else pipeline.run(source)
            result.load_ids.extend(info.loads_ids)
            for table, count in _row_counts(pipeline).items():
                result.rows[table] = result.rows.get(table, 0) + count
    except Exception as exc:  # noqa: BLE001 - classified into an exit code below
        error = classify(exc)
        result.error, result.exit_code = str(error), error.exit_code
        result.seconds = time.monotonic() - started
        if raise_errors:
            raise error from exc
        return result
    result.seconds = time.monotonic() - started
    return result


def _row_counts(pipeline: Any) -> dict[str, int]:
    trace = pipeline.last_trace
    info = trace.last_normalize_info if trace else None
    counts = dict(info.row_counts) if info else {}
    return {t: n for t, n in counts.items() if not t.startswith("_dlt")}
