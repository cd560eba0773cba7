"""Aggregates and reports: ``metric_aggregates``, ``campaign_values_reports``, ``flow_series_reports``.

* ``metric_aggregates``: per metric and day (in ``timezone``), ``count``, ``sum_value`` and
  ``unique`` from ``POST /api/metric-aggregates`` (``query_metric_aggregates``, 3/s 60/m), one
  call per metric per year of range.  Each run re-reads ``reread_days`` before the last day
  loaded, so late (backdated) events land in their day; merged on (metric_id, date).
* ``campaign_values_reports``: ``POST /api/campaign-values-reports`` (``query_campaign_values``,
  1/s 2/m 225/day): one row per (campaign, campaign message, channel) with the statistics to
  date.  Klaviyo scopes the report by *send date*, so each run asks for campaigns sent in the
  last ``reread_days`` (the first run: ``initial_days``, at most a year) and merges: statistics
  keep changing as opens and attributed orders arrive, without duplicate rows.
* ``flow_series_reports``: ``POST /api/flow-series-reports`` (``query_flow_series``, same low
  limits): one row per (flow, flow message, channel, day).  Daily series are capped at 60 days
  per call; the re-read window re-asks the last ``reread_days`` days every run.

All calls go through the client's pacer (the row's rate tier) and retry 429s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Iterator, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dlt
import pyarrow as pa
from dlt.extract.resource import DltResource

from klaviyo_source.errors import KlaviyoConfigError
from klaviyo_source.filters import utc_now

log = logging.getLogger(__name__)

DEFAULT_STATISTICS = (
    "recipients", "delivered", "opens", "opens_unique", "open_rate", "clicks", "clicks_unique", "click_rate",
    "conversions", "conversion_uniques", "conversion_value", "conversion_rate", "revenue_per_recipient",
    "unsubscribes", "bounced", "spam_complaints",
)
_INTEGER_STATISTICS = {"recipients", "delivered", "bounced", "failed", "bounced_or_failed", "opens", "opens_unique",
                       "clicks", "clicks_unique", "conversions", "conversion_uniques", "unsubscribes",
                       "unsubscribe_uniques", "spam_complaints", "message_segment_count_sum"}
MAX_SERIES_DAYS = 60  # query_flow_series: "If daily is used, the timeframe cannot be longer than 60 days"
MAX_RANGE_DAYS = 365  # reporting timeframes and aggregate ranges: at most a year


@dataclass(frozen=True)
class ReportOptions:
    """Options of the aggregate and report resources."""

    timezone: str = "UTC"
    initial_days: int = 60  # first run: how far back (series and values), at most a year
    aggregate_initial_days: int = 365
    reread_days: int = 7  # re-read window for late events and attribution changes
    campaign_reread_days: int = 30  # campaigns sent in the last N days are refreshed every run
    conversion_metric: str = "Placed Order"  # id or name of the conversion metric
    statistics: tuple[str, ...] = DEFAULT_STATISTICS
    metrics: Sequence[str] | None = None  # restrict metric_aggregates to these ids/names
    extra: dict[str, Any] = field(default_factory=dict)

    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise KlaviyoConfigError(f"report_timezone={self.timezone!r} is not an IANA timezone; "
                                     "use e.g. UTC or America/New_York") from None


def post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a JSON:API body through the client's paced, retrying session; the parsed response."""
    response = client.rest_client().post(path, json=body, hooks={"response": [client._hook]})
    document = getattr(response, "klaviyo_document", None)
    if document is None:
        raise client.error_for(response)
    return document


def metric_ids(client: Any, wanted: Sequence[str] | None = None) -> dict[str, str]:
    """{metric id: name} of every metric (or of ``wanted`` ids/names)."""
    names: dict[str, str] = {}
    for document in client.pages("/api/metrics"):
        for metric in document.get("data") or []:
            names[metric["id"]] = (metric.get("attributes") or {}).get("name") or ""
    if wanted:
        lowered = {n.lower() for n in wanted}
        chosen = {i: n for i, n in names.items() if i in wanted or n.lower() in lowered}
        unknown = [w for w in wanted if w not in chosen and w.lower() not in {n.lower() for n in chosen.values()}]
        if unknown:
            raise KlaviyoConfigError(f"metrics: unknown metric id/name {', '.join(map(repr, unknown))}")
        return chosen
    return names


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def _day_of(stamp: str) -> date:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).date()


# --------------------------------------------------------------------------- metric aggregates

def read_metric_aggregates(client: Any, options: ReportOptions, state: dict[str, Any]) -> Iterator[pa.Table]:
    zone = options.zone()
    now = utc_now()
    today = now.astimezone(zone).date()
    loaded: dict[str, str] = state.setdefault("loaded_until", {})
    for metric_id, name in metric_ids(client, options.metrics).items():
        last = loaded.get(metric_id)
        start = (date.fromisoformat(last) - timedelta(days=options.reread_days) if last
                 else today - timedelta(days=options.aggregate_initial_days))
        while start <= today:
            end = min(start + timedelta(days=MAX_RANGE_DAYS), today + timedelta(days=1))
            upper = min(_local_midnight(end, zone), now.astimezone(zone))  # a future datetime is a 400
            body = {"data": {"type": "metric-aggregate", "attributes": {
                "metric_id": metric_id, "measurements": ["count", "sum_value", "unique"], "interval": "day",
                "timezone": options.timezone, "page_size": 500,
                "filter": [f"greater-or-equal(datetime,{_local_midnight(start, zone).replace(tzinfo=None).isoformat()})",
                           f"less-than(datetime,{upper.replace(tzinfo=None, microsecond=0).isoformat()})"],
            }}}
            attributes = post(client, "/api/metric-aggregates", body)["data"]["attributes"]
            days = [_day_of(d) for d in attributes["dates"]]
            totals = {"count": [0] * len(days), "sum_value": [0.0] * len(days), "unique": [0] * len(days)}
            for row in attributes["data"]:  # no "by": a single row
                for measure, values in row["measurements"].items():
                    for i, value in enumerate(values):
                        totals[measure][i] += value or 0
            if days:
                yield pa.table({
                    "metric_id": pa.array([metric_id] * len(days), pa.string()),
                    "metric_name": pa.array([name] * len(days), pa.string()),
                    "date": pa.array(days, pa.date32()),
                    "timezone": pa.array([options.timezone] * len(days), pa.string()),
                    "count": pa.array([int(v) for v in totals["count"]], pa.int64()),
                    "sum_value": pa.array([float(v) for v in totals["sum_value"]], pa.float64()),
                    "unique": pa.array([int(v) for v in totals["unique"]], pa.int64()),
                })
            start = end
        loaded[metric_id] = today.isoformat()


# --------------------------------------------------------------------------- reporting API

def conversion_metric_id(client: Any, wanted: str) -> str | None:
    found = metric_ids(client)
    if wanted in found:
        return wanted
    for metric_id, name in found.items():
        if name.lower() == wanted.lower():
            return metric_id
    return None


def _statistic_arrays(results: list[dict[str, Any]], statistics: Sequence[str], series: bool) -> dict[str, pa.Array]:
    arrays = {}
    for name in statistics:
        kind = pa.int64() if name in _INTEGER_STATISTICS else pa.float64()
        if series:
            values = [v for r in results for v in r["statistics"].get(name, [])]
        else:
            values = [r["statistics"].get(name) for r in results]
        arrays[name] = pa.array([None if v is None else (int(v) if kind == pa.int64() else float(v)) for v in values],
                                kind)
    return arrays


def read_campaign_values(client: Any, options: ReportOptions, state: dict[str, Any]) -> Iterator[pa.Table]:
    metric = conversion_metric_id(client, options.conversion_metric)
    if metric is None:
        log.warning("campaign_values_reports skipped: no metric %r for conversions (set conversion_metric)",
                    options.conversion_metric)
        return
    now = utc_now()
    days = options.campaign_reread_days if state.get("last_run") else min(options.initial_days, MAX_RANGE_DAYS)
    days = min(max(days, 1), MAX_RANGE_DAYS)
    start = now - timedelta(days=days)
    body = {"data": {"type": "campaign-values-report", "attributes": {
        "statistics": list(options.statistics), "conversion_metric_id": metric,
        "timeframe": {"start": start.replace(microsecond=0).isoformat(), "end": now.replace(microsecond=0).isoformat()},
        "group_by": ["campaign_id", "campaign_message_id", "send_channel"],
    }}}
    results = post(client, "/api/campaign-values-reports", body)["data"]["attributes"]["results"]
    if results:
        yield pa.table({
            "campaign_id": pa.array([r["groupings"]["campaign_id"] for r in results], pa.string()),
            "campaign_message_id": pa.array([r["groupings"]["campaign_message_id"] for r in results], pa.string()),
            "send_channel": pa.array([r["groupings"].get("send_channel") or "" for r in results], pa.string()),
            **_statistic_arrays(results, options.statistics, series=False),
            "conversion_metric_id": pa.array([metric] * len(results), pa.string()),
            "refreshed_at": pa.array([now] * len(results), pa.timestamp("us", tz="UTC")),
        })
    state["last_run"] = now.isoformat()


def read_flow_series(client: Any, options: ReportOptions, state: dict[str, Any]) -> Iterator[pa.Table]:
    metric = conversion_metric_id(client, options.conversion_metric)
    if metric is None:
        log.warning("flow_series_reports skipped: no metric %r for conversions (set conversion_metric)",
                    options.conversion_metric)
        return
    now = utc_now()
    today = now.date()
    last = state.get("loaded_until")
    start = (date.fromisoformat(last) - timedelta(days=options.reread_days) if last
             else today - timedelta(days=min(options.initial_days, MAX_RANGE_DAYS)))
    while start <= today:
        end = min(start + timedelta(days=MAX_SERIES_DAYS), today + timedelta(days=1))
        upper = min(datetime(end.year, end.month, end.day), now.replace(tzinfo=None, microsecond=0))
        body = {"data": {"type": "flow-series-report", "attributes": {
            "statistics": list(options.statistics), "conversion_metric_id": metric, "interval": "daily",
            "timeframe": {"start": datetime(start.year, start.month, start.day).isoformat(), "end": upper.isoformat()},
            "group_by": ["flow_id", "flow_message_id", "send_channel"],
        }}}
        attributes = post(client, "/api/flow-series-reports", body)["data"]["attributes"]
        days = [_day_of(d) for d in attributes["date_times"]]
        results = attributes["results"]
        if results and days:
            n = len(days)
            yield pa.table({
                "flow_id": pa.array([r["groupings"]["flow_id"] for r in results for _ in days], pa.string()),
                "flow_message_id": pa.array([r["groupings"]["flow_message_id"] for r in results for _ in days],
                                            pa.string()),
                "send_channel": pa.array([r["groupings"].get("send_channel") or "" for r in results for _ in days],
                                         pa.string()),
                "date": pa.array(days * len(results), pa.date32()),
                **{k: v for k, v in _statistic_arrays(results, options.statistics, series=True).items()
                   if len(v) == n * len(results)},
                "conversion_metric_id": pa.array([metric] * n * len(results), pa.string()),
                "refreshed_at": pa.array([now] * n * len(results), pa.timestamp("us", tz="UTC")),
            })
        start = end
    state["loaded_until"] = today.isoformat()


# --------------------------------------------------------------------------- resources

_READERS = {
    "metric_aggregates": (read_metric_aggregates, ("metric_id", "date")),
    "campaign_values_reports": (read_campaign_values, ("campaign_id", "campaign_message_id", "send_channel")),
    "flow_series_reports": (read_flow_series, ("flow_id", "flow_message_id", "send_channel", "date")),
}


def _hint(data_type: str, description: str) -> dict[str, Any]:
    hint: dict[str, Any] = {"data_type": data_type, "description": description}
    if data_type == "timestamp":
        hint["timezone"] = True
    return hint


def column_hints(name: str, statistics: Sequence[str] = DEFAULT_STATISTICS) -> dict[str, dict[str, Any]]:
    """Declared columns of an aggregate/report table (documented in docs/tables.md)."""
    if name == "metric_aggregates":
        return {
            "metric_id": _hint("text", "metric id"),
            "metric_name": _hint("text", "metric name"),
            "date": _hint("date", "day in `timezone`"),
            "timezone": _hint("text", "IANA timezone the days are cut in (report_timezone)"),
            "count": _hint("bigint", "events that day"),
            "sum_value": _hint("double", "sum of the events' `$value`"),
            "unique": _hint("bigint", "distinct profiles with the event that day"),
        }
    keys = ({"campaign_id": _hint("text", "campaign id"), "campaign_message_id": _hint("text", "campaign message id")}
            if name == "campaign_values_reports" else
            {"flow_id": _hint("text", "flow id"), "flow_message_id": _hint("text", "flow message id")})
    keys["send_channel"] = _hint("text", "email, sms, push-notification, whatsapp")
    if name == "flow_series_reports":
        keys["date"] = _hint("date", "send day (account timezone)")
    stats = {s: _hint("bigint" if s in _INTEGER_STATISTICS else "double",
                      "Reporting API statistic" + (" (fraction 0..1)" if s.endswith("_rate") else ""))
             for s in statistics}
    return {**keys, **stats,
            "conversion_metric_id": _hint("text", "metric counted as conversion (conversion_metric)"),
            "refreshed_at": _hint("timestamp", "when this row was last re-read")}


def make_report_resource(stream: Any, client: Any, options: Any = None,
                         reports: ReportOptions | None = None) -> DltResource:
    """The dlt resource of one aggregate/report stream row (merge on its natural key)."""
    reader, key = _READERS[stream.name]
    reports = reports or getattr(options, "reports", None) or ReportOptions()

    def read() -> Iterator[pa.Table]:
        yield from reader(client, reports, dlt.current.resource_state())

    return dlt.resource(read, name=stream.name, table_name=stream.name, primary_key=key, write_disposition="merge",
                        columns=column_hints(stream.name, reports.statistics))
