"""The generic resource factory: one ``Stream`` row -> one dlt resource yielding pyarrow tables."""

from __future__ import annotations

import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import dlt
import pyarrow as pa
from dlt.extract.incremental import Incremental
from dlt.extract.resource import DltResource

from klaviyo_source import logfilter, settings
from klaviyo_source.arrow import PageConverter
from klaviyo_source.client import KlaviyoClient
from klaviyo_source.columns import Column, stream_columns
from klaviyo_source.deletions import deleted_at_hint, with_sweep
from klaviyo_source.errors import KlaviyoConfigError
from klaviyo_source.filters import clamp_to_now, combine, condition, parse_datetime, range_conditions, to_utc, utc_now
from klaviyo_source.partitions import read_partitions
from klaviyo_source.streams import Stream


@dataclass
class ReadOptions:
    """Source-wide options the factory applies to every stream."""

    start_date: datetime | None = None
    end_date: datetime | None = None
    event_lookback: timedelta = timedelta(days=3)
    metrics: Sequence[str] | None = None  # metric ids or names restricting events
    flatten_properties: bool = False
    enabled_fields: Sequence[str] = ()  # opt-in additional fields, e.g. ("predictive_analytics",)
    event_windows: int = settings.EVENT_WINDOWS
    event_workers: int = settings.EVENT_WORKERS
    window_min_seconds: float = settings.EVENT_WINDOW_MIN_SECONDS
    batch_rows: int = settings.ARROW_BATCH_ROWS
    deletions: str = "soft"  # H6: deletion sweep mode, see deletions.py (soft | hard | off)
    membership: Any = None  # H6: memberships.MembershipOptions (None: defaults)
    reports: Any = None  # H6: reports.ReportOptions (None: defaults)


class ClampedIncremental(Incremental[Any]):
    """dlt's Incremental whose stored watermark never passes the wall clock.

    A record dated in the future would otherwise become the watermark and the next run's
    filter would carry a future datetime (a 400) and skip records dated before it.
    """

    def __call__(self, rows: Any, meta: Any = None) -> Any:
        result = super().__call__(rows, meta)
        state = self._cached_state
        if state is not None and state.get("last_value") is not None:
            now = utc_now()
            last = state["last_value"]
            if isinstance(last, datetime) and to_utc(last) > now:
                state["last_value"] = now
                self._current_last_value = now
        return result


def table_columns(stream: Stream, options: ReadOptions) -> list[Column]:
    enabled = tuple(stream.additional_fields) + tuple(f for f in options.enabled_fields if f in stream.optional_fields)
    return stream_columns(stream, enabled)


def _base_params(stream: Stream, options: ReadOptions) -> dict[str, Any]:
    params: dict[str, Any] = dict(stream.params)
    if stream.page_size:
        params["page[size]"] = stream.page_size
    if stream.sort:
        params["sort"] = stream.sort
    fields = list(stream.additional_fields) + [f for f in options.enabled_fields if f in stream.optional_fields]
    if fields:
        params[f"additional-fields[{stream.resource_type}]"] = ",".join(fields)
    return params


def _split(start: datetime, end: datetime, windows: int, min_seconds: float) -> list[tuple[datetime, datetime]]:
    span = (end - start).total_seconds()
    count = max(1, min(windows, math.ceil(span / min_seconds))) if span > min_seconds else 1
    step = span / count
    edges = [start + timedelta(seconds=int(step * i)) for i in range(count)] + [end]
    return [(edges[i], edges[i + 1]) for i in range(count) if edges[i] < edges[i + 1]]


def _in_parallel(tasks: list[Callable[[], Iterable[Any]]], workers: int) -> Iterator[Any]:
    """Run page readers in threads; yield their pages as they arrive (errors re-raised here)."""
    if len(tasks) == 1 or workers <= 1:
        for task in tasks:
            yield from task()
        return
    results: queue.Queue = queue.Queue(maxsize=workers * 2)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(task: Callable[[], Iterable[Any]]) -> None:
        try:
            for table in task():
                if stop.is_set():
                    return
                put(table)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failure(exc))
        finally:
            put(done)

    pool = ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="klaviyo-window")
    try:
        for task in tasks:
            pool.submit(run, task)
        remaining = len(tasks)
        while remaining:
            item = results.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, _Failure):
                raise item.exc
            else:
                yield item
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class StreamReader:
    """Reads one stream: partitions x time windows x metric filters, page by page."""

    def __init__(self, stream: Stream, client: KlaviyoClient, options: ReadOptions):
        self.stream = stream
        self.client = client
        self.options = options
        self.columns = table_columns(stream, options)
        self.converter = PageConverter(
            self.columns, flatten_bags=stream.custom_properties if options.flatten_properties else ())

    def _read(self, conditions: list[str]) -> Iterator[list[Any]]:
        params = _base_params(self.stream, self.options)
        expression = combine(conditions)
        if expression:
            params["filter"] = expression
        for page in self.client.pages(self.stream.path, params, decoder=self.converter.decoder):
            if page.data:
                yield page.data  # decoded records; converted to arrow per batch (see read)

    def _metric_conditions(self) -> list[list[str]]:
        if self.stream.name != "events" or not self.options.metrics:
            return [[]]
        return [[condition("equals", "metric_id", metric_id)] for metric_id in resolve_metric_ids(self.client, self.options.metrics)]

    def _earliest(self, extra: list[str]) -> datetime | None:
        """Cursor value of the oldest record (one small request), to split a full backfill."""
        params = {"page[size]": 1, "sort": self.stream.cursor_field}
        if extra:
            params["filter"] = combine(extra)
        document = self.client.get(self.stream.path, params)
        data = document.get("data") or []
        if not data:
            return None
        value = (data[0].get("attributes") or {}).get(self.stream.cursor_field)
        return parse_datetime(value, self.stream.cursor_field) if value else None

    def tasks(self, start: datetime | None, end: datetime | None,
              split: bool = True) -> list[Callable[[], Iterable[Any]]]:
        stream = self.stream
        partitions = read_partitions(stream)
        tasks: list[Callable[[], Iterable[Any]]] = []
        now = utc_now()
        for partition in partitions:
            for metric in self._metric_conditions():
                base = partition + metric
                if not stream.incremental:
                    tasks.append(lambda c=base: self._read(c))
                    continue
                ranges: list[tuple[datetime | None, datetime | None]] = [(start, end)]
                if stream.windowed and split:
                    lower = start or self._earliest(base)
                    upper = end if end is not None and end < now else now
                    if lower is not None and (upper - lower).total_seconds() > self.options.window_min_seconds:
                        ranges = _split(clamp_to_now(lower, now), upper, self.options.event_windows, self.options.window_min_seconds)
                        # the last window stays open-ended (unless end_date): records arriving now are read too
                        ranges[-1] = (ranges[-1][0], end)
                for lo, hi in ranges:
                    conditions = base + range_conditions(stream.cursor_field, stream.cursor_operators, lo, hi, now)
                    tasks.append(lambda c=conditions: self._read(c))
        return tasks

    def read(self, start: datetime | None = None, end: datetime | None = None,
             per_page: bool = False) -> Iterator[pa.Table]:
        """Arrow tables of ~``batch_rows`` rows: pages are gathered before conversion, so the
        per-column work and dlt's per-item work (hints, validation, file writes) are paid per
        batch, not per page.

        Args:
            start: lower bound of the cursor range (incremental streams).
            end: upper bound of the cursor range.
            per_page: one table per full API page, the range read as one (no parallel time
                windows), in cursor order.  Set when dlt's ``add_limit`` counts this resource's
                items, so that a limit of ``n`` reads ``n`` pages and an incremental watermark
                never passes records left unread.
        """
        workers = 1 if per_page else (self.options.event_workers if self.stream.windowed else 1)
        batch_rows = 1 if per_page else self.options.batch_rows
        pending: list[Any] = []
        for records in _in_parallel(self.tasks(start, end, split=not per_page), workers):
            pending.extend(records)
            if len(pending) >= batch_rows:
                yield self.converter.convert_records(pending)
                pending = []
        if pending:
            yield self.converter.convert_records(pending)


def resolve_metric_ids(client: KlaviyoClient, wanted: Sequence[str]) -> list[str]:
    """Metric ids for ids or names given by the user; one-line error for unknown ones."""
    by_id: dict[str, str] = {}
    by_name: dict[str, list[str]] = {}
    for document in client.pages("/api/metrics"):
        for metric in document.get("data") or []:
            name = (metric.get("attributes") or {}).get("name") or ""
            by_id[metric["id"]] = name
            by_name.setdefault(name.lower(), []).append(metric["id"])
    ids: list[str] = []
    unknown: list[str] = []
    for item in wanted:
        if item in by_id:
            ids.append(item)
        elif item.lower() in by_name:
            ids.extend(by_name[item.lower()])
        else:
            unknown.append(item)
    if unknown:
        raise KlaviyoConfigError(
            f"metrics: unknown metric id/name {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(set(by_id.values())))[:300]}"
        )
    return list(dict.fromkeys(ids))


def keep_claims(reader: StreamReader, stream: Stream) -> None:
    """Flattened property columns keep their owner key across runs (in the resource state)."""
    if reader.converter.flatteners:
        reader.converter.keep_claims(dlt.current.resource_state(stream.name).setdefault("flattened_columns", {}))


def limit_is_set() -> bool:
    """True when dlt's ``add_limit`` is on the resource running now (read inside its generator).

    ``add_limit(n)`` counts the items a resource yields; dlt's own sql_database source reads the
    limit the same way (``dlt.current.resource().limit``) to size its queries.
    """
    from dlt.common.exceptions import DltException

    try:
        return dlt.current.resource().limit is not None
    except (DltException, LookupError, AttributeError):  # not running inside a dlt pipe
        return False


def make_resource(stream: Stream, client: KlaviyoClient, options: ReadOptions) -> DltResource:
    """The dlt resource for one stream row (arrow tables, merge/replace per the row)."""
    logfilter.install()
    if stream.factory or stream.parent:  # H6: rows read by a custom factory
        from klaviyo_source.factories import custom_resource

        return custom_resource(stream, client, options)
    reader = StreamReader(stream, client, options)
    hints = {c.name: c.dlt_hint() for c in reader.columns}
    if stream.incremental and stream.write_disposition == "merge" and stream.lookback == "none":
        # a record read twice in one load (window overlaps, re-reads) keeps its latest version
        hints[stream.cursor_field]["dedup_sort"] = "desc"
    if stream.deletion_sweep and options.deletions != "off":
        hints.update(deleted_at_hint(options.deletions))  # H6
    common: dict[str, Any] = dict(
        name=stream.name,
        table_name=stream.name,
        primary_key=stream.primary_key,
        write_disposition=(
            {"disposition": "merge", "strategy": stream.merge_strategy}
            if stream.write_disposition == "merge" and stream.merge_strategy != "delete-insert"
            else stream.write_disposition
        ),
        columns=hints,
        # H6: the deletion sweep reads the destination through dlt's sql_client, whose config
        # injection is not safe from dlt's extraction worker threads
        parallelized=not (stream.deletion_sweep and options.deletions != "off"),
    )

    if not stream.incremental:

        def read_all() -> Iterator[pa.Table]:
            keep_claims(reader, stream)
            yield from with_sweep(stream, client, reader.read(per_page=limit_is_set()), full_read=True,
                                  mode=options.deletions)

        resource = dlt.resource(read_all, **common)
    else:
        lag = options.event_lookback.total_seconds() if stream.lookback == "event_lookback" else None
        cursor_default = ClampedIncremental(
            stream.cursor_field,
            initial_value=options.start_date,
            end_value=options.end_date,
            lag=lag,
            primary_key=(),  # the merge on the primary key dedupes re-read records
            on_cursor_value_missing="include",
            allow_external_schedulers=False,
        )

        def read_incremental(cursor: Optional[Incremental[Any]] = cursor_default) -> Iterator[pa.Table]:
            keep_claims(reader, stream)
            start = cursor.start_value if cursor is not None else options.start_date
            end = cursor.end_value if cursor is not None else options.end_date
            start = to_utc(start) if start is not None else None
            end = to_utc(end) if end is not None else None
            # the sweep needs every live id: only a run with no end bound (not a bounded backfill)
            sweep = options.deletions if end is None else "off"
            yield from with_sweep(stream, client, reader.read(start, end, per_page=limit_is_set()), full_read=False,
                                  mode=sweep, incremental=cursor)

        resource = dlt.resource(read_incremental, **common)
    resource.reader = reader  # type: ignore[attr-defined]  (bench / tests read stats and columns)
    return resource
