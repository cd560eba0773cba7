"""Reporting endpoints of the sandbox, computed from the event store.

* ``POST /api/metric-aggregates`` (``query_metric_aggregates``): count / sum_value /
  unique of one metric's events per time bucket (hour/day/week/month in a timezone),
  optionally grouped (``by``) and filtered on event dimensions such as ``$message``.
* ``POST /api/campaign-values-reports`` (``query_campaign_values``): statistics per
  campaign message for campaigns *sent* in the timeframe (Klaviyo's reporting API
  counts by send date, not event date).
* ``POST /api/flow-series-reports`` (``query_flow_series``): statistics per flow
  message and interval bucket, bucketed by the send date of the message a profile
  engaged with (so a late open changes an earlier day, as in Klaviyo's UI).

Everything is aggregated in DuckDB over the sandbox's event table; the email
attribution (``$message``, ``$flow``, ``$attributed_message`` event properties) is
whatever the generator and the write endpoints stored.  Request bodies are validated
against the spec's request schemas; statistics names, group-bys and timeframe keys
are the spec's enums.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema

from klaviyo_sandbox.spec import Spec, load_spec

UTC = dt.timezone.utc

# Klaviyo's native email metrics the statistics are computed from.
RECEIVED, OPENED, CLICKED = "Received Email", "Opened Email", "Clicked Email"
BOUNCED, DROPPED, SPAM = "Bounced Email", "Dropped Email", "Marked Email as Spam"
UNSUBSCRIBED = ("Unsubscribed", "Unsubscribed from Email Marketing")

_INTERVAL_UNITS = {"hour": "hour", "day": "day", "week": "week", "month": "month",
                   "hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}
# query_flow_series: "If hourly is used, the timeframe cannot be longer than 7 days. If daily
# is used ... 60 days. If monthly ... 52 weeks."
_SERIES_MAX_SPAN = {"hourly": dt.timedelta(days=7), "daily": dt.timedelta(days=60),
                    "monthly": dt.timedelta(weeks=52), "weekly": dt.timedelta(weeks=52)}
_MAX_TIMEFRAME = dt.timedelta(days=366)  # "Max length: 1 year"


class ReportError(ValueError):
    """A 400 for the client: ``detail`` names what to fix, ``pointer`` where in the body."""

    def __init__(self, detail: str, pointer: str = "/data/attributes"):
        super().__init__(detail)
        self.detail = detail
        self.pointer = pointer
        self.status = 400

    def to_jsonapi(self) -> dict[str, Any]:
        return {"errors": [{
            "id": hashlib.sha1(self.detail.encode()).hexdigest()[:12],
            "status": 400, "code": "invalid", "title": "Invalid input.",
            "detail": self.detail, "source": {"pointer": self.pointer},
        }]}


# --------------------------------------------------------------------------- validation

def _nullable_aware(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` → JSON-schema ``null`` allowed (jsonschema ignores it)."""
    if isinstance(node, dict):
        out = {k: _nullable_aware(v) for k, v in node.items()}
        if out.pop("nullable", False):
            if "type" in out:
                out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(node, list):
        return [_nullable_aware(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def _validator(ref: str) -> jsonschema.Draft7Validator:
    document = load_spec().document
    root = {"components": _nullable_aware(document["components"]), "$ref": ref}
    return jsonschema.Draft7Validator(root)


def validate_body(spec: Spec, method: str, path: str, body: Any) -> None:
    """Validate a request body against the operation's spec request schema (400 on mismatch)."""
    ref = spec.operation(method, path).request_schema["$ref"]
    error = jsonschema.exceptions.best_match(_validator(ref).iter_errors(body))
    if error is not None:
        pointer = "/" + "/".join(str(p) for p in error.absolute_path)
        raise ReportError(f"{pointer}: {error.message}", pointer)


# --------------------------------------------------------------------------- event access

@dataclass(frozen=True)
class EventSource:
    """SQL views over the store's tables for one account (each SQL text takes ``params`` once).

    ``events_sql``: ``id, metric_id, metric_name, profile_id, datetime (TIMESTAMPTZ),
    value (DOUBLE, the ``$value`` property), props (JSON event_properties)``;
    ``messages_sql``: ``message_id, kind ('campaign'|'flow'), parent_id, parent_name,
    message_name, channel, send_time (TIMESTAMPTZ; campaigns only)``;
    ``metrics_sql``: ``metric_id, metric_name``.  ``messages_sql`` takes ``params`` twice.
    """

    connection: Any
    events_sql: str
    messages_sql: str
    metrics_sql: str
    params: tuple[Any, ...] = ()


_EVENTS_SQL = """
SELECT e.id, e.rel_metric AS metric_id, json_extract_string(m.attrs, '$.name') AS metric_name, e.rel_profile AS profile_id,
       CAST(e.datetime AS TIMESTAMPTZ) AS datetime,
       TRY_CAST(json_extract_string(e.attrs, '$.event_properties."$value"') AS DOUBLE) AS value,
       json_extract(e.attrs, '$.event_properties') AS props
FROM events e LEFT JOIN metrics m ON m.account = e.account AND m.id = e.rel_metric
WHERE e.account = ?
"""
# A campaign message's send time is its campaign's (send_time, else scheduled_at); flow
# messages are sent per profile (the Received Email event), so they carry none.
_MESSAGES_SQL = """
SELECT cm.id AS message_id, 'campaign' AS kind, c.id AS parent_id, json_extract_string(c.attrs, '$.name') AS parent_name,
       coalesce(json_extract_string(cm.attrs, '$.definition.label'), json_extract_string(cm.attrs, '$.label'))
           AS message_name,
       coalesce(json_extract_string(cm.attrs, '$.definition.channel'), 'email') AS channel,
       CAST(coalesce(TRY_CAST(json_extract_string(c.attrs, '$.send_time') AS TIMESTAMPTZ),
                     TRY_CAST(json_extract_string(c.attrs, '$.scheduled_at') AS TIMESTAMPTZ)) AS TIMESTAMPTZ) AS send_time
FROM campaign_messages cm JOIN campaigns c ON c.account = cm.account AND c.id = cm.rel_campaign
WHERE cm.account = ?
UNION ALL
SELECT fm.id, 'flow', f.id, json_extract_string(f.attrs, '$.name'), json_extract_string(fm.attrs, '$.name'),
       coalesce(json_extract_string(fm.attrs, '$.channel'), 'email'), CAST(NULL AS TIMESTAMPTZ)
FROM flow_messages fm
JOIN flow_actions fa ON fa.account = fm.account AND fa.id = fm.rel_flow_action
JOIN flows f ON f.account = fa.account AND f.id = fa.rel_flow
WHERE fm.account = ?
"""
_METRICS_SQL = "SELECT id AS metric_id, json_extract_string(attrs, '$.name') AS metric_name FROM metrics WHERE account = ?"


def event_source(store: Any, account_id: str) -> EventSource:
    """The views over ``store`` (``klaviyo_sandbox.store.Store``) for one account."""
    return EventSource(store.cursor(), _EVENTS_SQL, _MESSAGES_SQL, _METRICS_SQL, (account_id,))


# --------------------------------------------------------------------------- filters & time

_CONDITION = re.compile(r"^\s*([a-z-]+)\((.*)\)\s*$", re.S)


def _split_top_level(text: str) -> list[str]:
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _literal(text: str) -> Any:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_literal(p) for p in _split_top_level(text[1:-1]) if p]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse_conditions(expression: str) -> list[tuple[str, str, Any]]:
    """``and(equals(a,"x"),contains-any(b,["y"]))`` → [(op, field, value), ...]."""
    match = _CONDITION.match(expression or "")
    if not match:
        raise ReportError(f"invalid filter {expression!r}: expected operator(field,value)", "/data/attributes/filter")
    op, inner = match.groups()
    if op == "and":
        return [c for part in _split_top_level(inner) for c in parse_conditions(part)]
    if op in ("or", "not"):
        raise ReportError(f"filter operator {op!r} is not supported here: only and() can combine conditions",
                          "/data/attributes/filter")
    args = _split_top_level(inner)
    if len(args) != 2:
        raise ReportError(f"invalid filter {expression!r}: {op}() takes a field and a value", "/data/attributes/filter")
    return [(op, args[0].strip().strip("\"'"), _literal(args[1]))]


def parse_datetime(text: str, zone: dt.tzinfo, pointer: str) -> dt.datetime:
    """ISO 8601; naive values are read in ``zone``."""
    try:
        value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{text!r} is not an ISO 8601 datetime", pointer) from None
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(f"unknown timezone {name!r}: use an IANA name such as 'America/New_York'",
                          "/data/attributes/timezone") from None


def _bucket_start(moment: dt.datetime, unit: str, zone: ZoneInfo) -> dt.datetime:
    local = moment.astimezone(zone).replace(tzinfo=None)
    if unit == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    else:
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if unit == "week":
            local -= dt.timedelta(days=local.weekday())
        elif unit == "month":
            local = local.replace(day=1)
    return local


def _next_bucket(local: dt.datetime, unit: str) -> dt.datetime:
    if unit == "hour":
        return local + dt.timedelta(hours=1)
    if unit == "day":
        return local + dt.timedelta(days=1)
    if unit == "week":
        return local + dt.timedelta(days=7)
    return (local.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def bucket_series(start: dt.datetime, end: dt.datetime, unit: str, zone: ZoneInfo) -> list[dt.datetime]:
    """Local (naive) bucket starts covering [start, end)."""
    buckets, current = [], _bucket_start(start, unit, zone)
    end_local = end.astimezone(zone).replace(tzinfo=None)
    while current < end_local:
        buckets.append(current)
        current = _next_bucket(current, unit)
    return buckets


def _iso(local: dt.datetime, zone: ZoneInfo) -> str:
    return local.replace(tzinfo=zone).isoformat()


def sandbox_now(store: Any) -> dt.datetime:
    """The sandbox clock (the store's, when it keeps one)."""
    clock = getattr(store, "now", None)
    value = clock() if callable(clock) else clock
    return value if isinstance(value, dt.datetime) else dt.datetime.now(UTC)


# --------------------------------------------------------------------------- metric aggregates

METRIC_AGGREGATES_PATH = "/api/metric-aggregates"
CAMPAIGN_VALUES_PATH = "/api/campaign-values-reports"
FLOW_SERIES_PATH = "/api/flow-series-reports"


def _dimension_sql(name: str) -> str:
    key = name.replace('"', '\\"')
    return f"coalesce(json_extract_string(props, '$.\"{key}\"'), '')"


def _datetime_range(conditions, zone, now) -> tuple[dt.datetime, dt.datetime, list]:
    lower = upper = None
    rest = []
    pointer = "/data/attributes/filter"
    for op, field_name, value in conditions:
        if field_name != "datetime":
            rest.append((op, field_name, value))
            continue
        moment = parse_datetime(value, zone, pointer)
        if op == "greater-or-equal":
            lower = moment
        elif op == "greater-than":
            lower = moment + dt.timedelta(microseconds=1)
        elif op == "less-than":
            upper = moment
        elif op == "less-or-equal":
            upper = moment + dt.timedelta(microseconds=1)
        else:
            raise ReportError(f"operator {op!r} is not allowed on datetime: use greater-or-equal and less-than", pointer)
    if lower is None or upper is None:
        raise ReportError("filter must include a time range: greater-or-equal(datetime,...) and less-than(datetime,...)",
                          pointer)
    if upper <= lower:
        raise ReportError("filter datetime range is empty: less-than must be after greater-or-equal", pointer)
    if upper - lower > _MAX_TIMEFRAME:
        raise ReportError("filter datetime range is longer than 1 year: split the query", pointer)
    return lower, upper, rest


def _page_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def _page_offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["offset"])
    except Exception:  # noqa: BLE001 - any malformed cursor is the client's error
        raise ReportError("page_cursor is not a cursor returned by this endpoint", "/data/attributes/page_cursor") from None


def query_metric_aggregates(store: Any, account_id: str, body: dict[str, Any], base_url: str = "") -> dict[str, Any]:
    """Body → response document of ``query_metric_aggregates`` (raises ReportError on bad input)."""
    spec = load_spec()
    validate_body(spec, "POST", METRIC_AGGREGATES_PATH, body)
    attributes = body["data"]["attributes"]
    zone = _zone(attributes.get("timezone"))
    unit = _INTERVAL_UNITS[attributes.get("interval") or "day"]
    measurements = list(dict.fromkeys(attributes["measurements"]))
    if not measurements:
        raise ReportError("measurements must name at least one of count, sum_value, unique",
                          "/data/attributes/measurements")
    by = list(dict.fromkeys(attributes.get("by") or []))
    dimension_enum = set(spec.schema({"$ref": "#/components/schemas/MetricAggregateQueryResourceObject"})
                         ["properties"]["attributes"]["properties"]["by"]["items"]["enum"])
    conditions = [c for text in attributes["filter"] for c in parse_conditions(text)]
    now = sandbox_now(store)
    start, end, dimension_filters = _datetime_range(conditions, zone, now)
    if start > now:
        raise ReportError("filter datetime range starts in the future", "/data/attributes/filter")

    source = event_source(store, account_id)
    con = source.connection
    if not _metric_exists(source, attributes["metric_id"]):
        raise ReportError(f"metric_id {attributes['metric_id']!r} is not a metric of this account",
                          "/data/attributes/metric_id")

    where, params = ["metric_id = ?", "datetime >= ?", "datetime < ?"], [attributes["metric_id"], start, end]
    for op, field_name, value in dimension_filters:
        if field_name not in dimension_enum:
            raise ReportError(f"cannot filter on {field_name!r}: allowed dimensions are those of 'by'",
                              "/data/attributes/filter")
        if op == "equals":
            where.append(f"{_dimension_sql(field_name)} = ?")
            params.append(str(value))
        elif op == "contains-any" and isinstance(value, list):
            where.append(f"list_contains(?, {_dimension_sql(field_name)})")
            params.append([str(v) for v in value])
        else:
            raise ReportError(f"operator {op!r} is not supported on {field_name!r}: use equals or contains-any",
                              "/data/attributes/filter")

    dims = [_dimension_sql(name) for name in by]
    bucket = f"date_trunc('{unit}', timezone(?, datetime))"
    select_dims = "".join(f", {d} AS d{i}" for i, d in enumerate(dims))
    group_dims = "".join(f", d{i}" for i in range(len(dims)))
    sql = (f"SELECT {bucket} AS bucket{select_dims}, count(*) AS count, "
           "coalesce(sum(value), 0) AS sum_value, count(DISTINCT profile_id) AS \"unique\" "
           f"FROM ({source.events_sql}) WHERE {' AND '.join(where)} GROUP BY bucket{group_dims}")
    rows = con.execute(sql, [str(zone), *source.params, *params]).fetchall()

    dates = bucket_series(start, end, unit, zone)
    index = {d: i for i, d in enumerate(dates)}
    groups: dict[tuple[str, ...], dict[str, list[float]]] = {}
    for row in rows:
        key = tuple(row[1:1 + len(dims)])
        series = groups.setdefault(key, {m: [0] * len(dates) for m in measurements})
        position = index.get(row[0])
        if position is None:
            continue
        values = dict(zip(("count", "sum_value", "unique"), row[1 + len(dims):]))
        for m in measurements:
            series[m][position] = float(values[m]) if m == "sum_value" else int(values[m])
    if not by and not groups:
        groups[()] = {m: [0] * len(dates) for m in measurements}

    ordered = sorted(groups.items())
    sort = attributes.get("sort")
    if sort:
        descending, key_name = sort.startswith("-"), sort.lstrip("-")
        if key_name in ("count", "sum_value", "unique"):
            if key_name not in measurements:
                raise ReportError(f"cannot sort on {key_name!r}: it is not among the measurements",
                                  "/data/attributes/sort")
            ordered.sort(key=lambda item: sum(item[1][key_name]), reverse=descending)
        else:
            if key_name not in by:
                raise ReportError(f"cannot sort on {key_name!r}: it is not among the 'by' dimensions",
                                  "/data/attributes/sort")
            position = by.index(key_name)
            ordered.sort(key=lambda item: item[0][position], reverse=descending)

    page_size = attributes.get("page_size") or 500
    if page_size < 1:
        raise ReportError("page_size must be at least 1", "/data/attributes/page_size")
    offset = _page_offset(attributes.get("page_cursor"))
    page = ordered[offset:offset + page_size]
    query_id = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
    self_link = f"{base_url}{METRIC_AGGREGATES_PATH}"
    links: dict[str, str] = {"self": self_link}
    if offset + page_size < len(ordered):
        links["next"] = f"{self_link}?page_cursor={_page_cursor(offset + page_size)}"
    return {
        "data": {
            "type": "metric-aggregate",
            "id": query_id,
            "attributes": {
                "dates": [_iso(d, zone) for d in dates],
                "data": [{"dimensions": list(key), "measurements": series} for key, series in page],
            },
            "links": {"self": self_link},
        },
        "links": links,
    }


# --------------------------------------------------------------------------- reporting API

def _timeframe(timeframe: dict[str, Any], zone: ZoneInfo, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Spec ``Timeframe`` (key) or ``CustomTimeframe`` (start/end; offset ignored, account timezone used)."""
    pointer = "/data/attributes/timeframe"
    if "key" in timeframe:
        local_now = now.astimezone(zone)
        today = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        key = timeframe["key"]
        week = today - dt.timedelta(days=today.weekday())
        month = today.replace(day=1)
        year = today.replace(month=1, day=1)
        spans = {
            "today": (today, local_now),
            "yesterday": (today - dt.timedelta(days=1), today),
            "this_week": (week, local_now),
            "last_week": (week - dt.timedelta(days=7), week),
            "this_month": (month, local_now),
            "last_month": ((month - dt.timedelta(days=1)).replace(day=1), month),
            "this_year": (year, local_now),
            "last_year": (year.replace(year=year.year - 1), year),
            "last_7_days": (today - dt.timedelta(days=7), today),
            "last_30_days": (today - dt.timedelta(days=30), today),
            "last_90_days": (today - dt.timedelta(days=90), today),
            "last_3_months": (today - dt.timedelta(days=91), today),
            "last_365_days": (today - dt.timedelta(days=365), today),
            "last_12_months": (today - dt.timedelta(days=365), today),
        }
        return spans[key]
    start = parse_datetime(timeframe["start"], zone, pointer).replace(tzinfo=None).replace(tzinfo=zone)
    end = parse_datetime(timeframe["end"], zone, pointer).replace(tzinfo=None).replace(tzinfo=zone)
    if end <= start:
        raise ReportError("timeframe end must be after start", pointer)
    if end - start > _MAX_TIMEFRAME:
        raise ReportError("timeframe is longer than 1 year (the maximum)", pointer)
    if start > now:
        raise ReportError("timeframe starts in the future", pointer)
    return start, end


_INTEGER_STATISTICS = {"recipients", "delivered", "bounced", "failed", "bounced_or_failed", "opens", "opens_unique",
                       "clicks", "clicks_unique", "conversions", "conversion_uniques", "unsubscribes",
                       "unsubscribe_uniques", "spam_complaints", "message_segment_count_sum"}

_UNSUB_LIST = ", ".join(f"'{name}'" for name in UNSUBSCRIBED)
# Per (message, bucket) counters.
#
# Message of an email event: its ``$message`` property when that names a campaign or flow
# message of the account (events written through the API or the control API).  Generated
# events carry seeded random ``$message`` values, so those are mapped deterministically onto
# the account's email messages (``hash($message) mod n``) -- a derived attribution, stable for
# a seed.  Conversions: events of the conversion metric carrying ``$attributed_message``, else
# attributed like Klaviyo's default model to the profile's last email open or click within
# the 5 days before (an ASOF join).  ``sent_at`` is when that profile received the message
# (its Received Email event), falling back to the message's send time, then the event time.
_ATTRIBUTION_WINDOW = "INTERVAL 5 DAY"
_STATS_SQL = f"""
WITH messages AS ({{messages_sql}}),
ev AS ({{events_sql}}),
email_messages AS (
    SELECT message_id, row_number() OVER (ORDER BY message_id) - 1 AS idx, count(*) OVER () AS n
    FROM messages WHERE channel = 'email'
),
tagged AS (
    SELECT ev.*, json_extract_string(props, '$."$message"') AS raw_message FROM ev
    WHERE json_extract_string(props, '$."$message"') IS NOT NULL
),
resolved AS (
    SELECT t.*, coalesce(m.message_id, em.message_id) AS message_id
    FROM tagged t
    LEFT JOIN messages m ON m.message_id = t.raw_message
    LEFT JOIN email_messages em ON m.message_id IS NULL AND em.idx = hash(t.raw_message) % em.n
),
conversions AS (
    SELECT * FROM ev WHERE metric_id = ?
),
engagements AS (
    SELECT profile_id, datetime AS touched_at, message_id FROM resolved
    WHERE metric_name IN ('{OPENED}', '{CLICKED}') AND message_id IS NOT NULL
),
implicit AS (
    SELECT c.*, g.message_id
    FROM (SELECT * FROM conversions WHERE json_extract_string(props, '$."$attributed_message"') IS NULL) c
    ASOF JOIN engagements g ON c.profile_id = g.profile_id AND c.datetime >= g.touched_at
    WHERE c.datetime - g.touched_at <= {_ATTRIBUTION_WINDOW}
),
touches AS (
    SELECT message_id, profile_id, metric_name, metric_id, value, datetime, 'touch' AS role
    FROM resolved WHERE message_id IS NOT NULL
    UNION ALL
    SELECT json_extract_string(props, '$."$attributed_message"'), profile_id, metric_name, metric_id,
           value, datetime, 'conversion'
    FROM conversions WHERE json_extract_string(props, '$."$attributed_message"') IS NOT NULL
    UNION ALL
    SELECT message_id, profile_id, metric_name, metric_id, value, datetime, 'conversion' FROM implicit
),
sends AS (
    SELECT message_id, profile_id, min(datetime) AS sent_at
    FROM touches WHERE role = 'touch' AND metric_name = '{RECEIVED}' GROUP BY ALL
),
scoped AS (
    SELECT t.*, m.kind, m.parent_id, m.parent_name, m.message_name, m.channel, m.send_time,
           coalesce(s.sent_at, m.send_time, t.datetime) AS sent_at
    FROM touches t JOIN messages m ON m.message_id = t.message_id
    LEFT JOIN sends s ON s.message_id = t.message_id AND s.profile_id = t.profile_id
    WHERE m.kind = ?
)
SELECT {{bucket}} AS bucket, parent_id, message_id, any_value(parent_name) AS parent_name,
       any_value(message_name) AS message_name, any_value(channel) AS channel,
       count(*) FILTER (WHERE role = 'touch' AND metric_name = '{RECEIVED}') AS recipients,
       count(*) FILTER (WHERE role = 'touch' AND metric_name = '{BOUNCED}') AS bounced,
       count(*) FILTER (WHERE role = 'touch' AND metric_name = '{DROPPED}') AS failed,
       count(*) FILTER (WHERE role = 'touch' AND metric_name = '{OPENED}') AS opens,
       count(DISTINCT profile_id) FILTER (WHERE role = 'touch' AND metric_name = '{OPENED}') AS opens_unique,
       count(*) FILTER (WHERE role = 'touch' AND metric_name = '{CLICKED}') AS clicks,
       count(DISTINCT profile_id) FILTER (WHERE role = 'touch' AND metric_name = '{CLICKED}') AS clicks_unique,
       count(*) FILTER (WHERE role = 'touch' AND metric_name = '{SPAM}') AS spam_complaints,
       count(*) FILTER (WHERE role = 'touch' AND metric_name IN ({_UNSUB_LIST})) AS unsubscribes,
       count(DISTINCT profile_id) FILTER (WHERE role = 'touch' AND metric_name IN ({_UNSUB_LIST}))
           AS unsubscribe_uniques,
       count(*) FILTER (WHERE role = 'conversion') AS conversions,
       count(DISTINCT profile_id) FILTER (WHERE role = 'conversion') AS conversion_uniques,
       coalesce(sum(value) FILTER (WHERE role = 'conversion'), 0) AS conversion_value
FROM scoped WHERE {{where}}
GROUP BY ALL
"""


def _report_filter(expression: str | None, allowed: dict[str, str]) -> tuple[list[str], list[Any]]:
    """Reporting-API filter → SQL conditions on the columns in ``allowed`` (field → column)."""
    if not expression:
        return [], []
    where, params, seen = [], [], set()
    for op, field_name, value in parse_conditions(expression):
        pointer = "/data/attributes/filter"
        if field_name not in allowed:
            raise ReportError(f"cannot filter on {field_name!r}: allowed fields are {', '.join(sorted(allowed))}",
                              pointer)
        if field_name in seen:
            raise ReportError(f"only one filter can be used per attribute ({field_name!r} repeats)", pointer)
        seen.add(field_name)
        column = allowed[field_name]
        if op == "equals" and not isinstance(value, list):
            where.append(f"{column} = ?")
            params.append(str(value))
        elif op == "contains-any" and isinstance(value, list):
            if len(value) > 100:
                raise ReportError("max of 100 items per list filter", pointer)
            where.append(f"list_contains(?, {column})")
            params.append([str(v) for v in value])
        else:
            raise ReportError(f"operator {op!r} is not supported on {field_name!r}: use equals or contains-any",
                              pointer)
    return where, params


def _metric_exists(source: EventSource, metric_id: str) -> bool:
    row = source.connection.execute(f"SELECT 1 FROM ({source.metrics_sql}) WHERE metric_id = ? LIMIT 1",
                                    [*source.params, metric_id]).fetchone()
    return row is not None


@dataclass(frozen=True)
class _ReportKind:
    path: str
    type: str
    kind: str  # messages.kind
    groupings: dict[str, str]  # group_by name -> column of the stats query
    required_groups: tuple[str, ...]
    default_groups: tuple[str, ...]
    filter_columns: dict[str, str]
    relationships: tuple[tuple[str, str, str], ...]  # (relationship name, resource type, grouping)


_CAMPAIGN = _ReportKind(
    path=CAMPAIGN_VALUES_PATH, type="campaign-values-report", kind="campaign",
    groupings={"campaign_id": "parent_id", "campaign_message_id": "message_id", "send_channel": "channel",
               "campaign_message_name": "message_name"},
    required_groups=("campaign_id", "campaign_message_id"),
    default_groups=("campaign_id", "campaign_message_id", "send_channel"),
    filter_columns={"campaign_id": "parent_id", "campaign_message_id": "message_id", "send_channel": "channel",
                    "campaign_message_name": "message_name"},
    relationships=(("campaigns", "campaign", "campaign_id"),),
)
_FLOW = _ReportKind(
    path=FLOW_SERIES_PATH, type="flow-series-report", kind="flow",
    groupings={"flow_id": "parent_id", "flow_message_id": "message_id", "send_channel": "channel",
               "flow_name": "parent_name", "flow_message_name": "message_name"},
    required_groups=("flow_id", "flow_message_id"),
    default_groups=("flow_id", "flow_message_id", "send_channel"),
    filter_columns={"flow_id": "parent_id", "flow_message_id": "message_id", "send_channel": "channel",
                    "flow_name": "parent_name", "flow_message_name": "message_name"},
    relationships=(("flows", "flow", "flow_id"), ("flow-messages", "flow-message", "flow_message_id")),
)


def _group_by(kind: _ReportKind, attributes: dict[str, Any]) -> list[str]:
    group_by = list(dict.fromkeys(attributes.get("group_by") or kind.default_groups))
    pointer = "/data/attributes/group_by"
    missing = [g for g in kind.required_groups if g not in group_by]
    if missing:
        raise ReportError(f"group_by must include {', '.join(kind.required_groups)} (missing {', '.join(missing)})",
                          pointer)
    unsupported = [g for g in group_by if g not in kind.groupings]
    if unsupported:
        raise ReportError(f"group_by {', '.join(unsupported)} is not supported by the sandbox "
                          f"(supported: {', '.join(kind.groupings)})", pointer)
    return group_by


def _run_report(store: Any, account_id: str, body: dict[str, Any], kind: _ReportKind,
                interval: str | None) -> tuple[dict, list[dt.datetime] | None, ZoneInfo]:
    spec = load_spec()
    validate_body(spec, "POST", kind.path, body)
    attributes = body["data"]["attributes"]
    group_by = _group_by(kind, attributes)
    statistics = list(dict.fromkeys(attributes["statistics"]))
    if not statistics:
        raise ReportError("statistics must name at least one statistic", "/data/attributes/statistics")
    zone = _zone(getattr(store, "account_timezone", lambda _a: "UTC")(account_id)
                 if callable(getattr(store, "account_timezone", None)) else "UTC")
    now = sandbox_now(store)
    start, end = _timeframe(attributes["timeframe"], zone, now)
    source = event_source(store, account_id)
    if not _metric_exists(source, attributes["conversion_metric_id"]):
        raise ReportError(f"conversion_metric_id {attributes['conversion_metric_id']!r} is not a metric of "
                          "this account", "/data/attributes/conversion_metric_id")
    filters, filter_params = _report_filter(attributes.get("filter"), kind.filter_columns)

    if interval is None:
        # values report: campaigns whose message was sent in the timeframe, all their engagement
        where = ["send_time >= ?", "send_time < ?", *filters]
        params = [start, end, *filter_params]
        bucket_sql, buckets = "NULL", None
    else:
        unit = _INTERVAL_UNITS[interval]
        if end - start > _SERIES_MAX_SPAN[interval]:
            raise ReportError(f"timeframe too long for {interval} interval (max {_SERIES_MAX_SPAN[interval].days} days)",
                              "/data/attributes/timeframe")
        where = ["sent_at >= ?", "sent_at < ?", *filters]
        params = [start, end, *filter_params]
        bucket_sql = f"date_trunc('{unit}', timezone('{zone}', sent_at))"
        buckets = bucket_series(start, end, unit, zone)

    sql = _STATS_SQL.format(messages_sql=source.messages_sql, events_sql=source.events_sql,
                            bucket=bucket_sql, where=" AND ".join(where))
    con = source.connection
    cursor = con.execute(sql, [*source.params, *source.params, *source.params,  # messages (x2), events
                               attributes["conversion_metric_id"], kind.kind, *params])
    columns = [d[0] for d in cursor.description]
    rows = [dict(zip(columns, r)) for r in cursor.fetchall()]

    # statistics are computed per row (message x bucket) then merged per grouping
    grouped: dict[tuple, dict[Any, dict[str, float]]] = {}
    for row in rows:
        key = tuple(row[kind.groupings[g]] for g in group_by)
        per_bucket = grouped.setdefault(key, {})
        totals = per_bucket.setdefault(row["bucket"], {})
        for counter in ("recipients", "bounced", "failed", "opens", "opens_unique", "clicks", "clicks_unique",
                        "spam_complaints", "unsubscribes", "unsubscribe_uniques", "conversions",
                        "conversion_uniques", "conversion_value"):
            totals[counter] = totals.get(counter, 0) + (row[counter] or 0)
    return {"group_by": group_by, "statistics": statistics, "grouped": grouped}, buckets, zone


def _statistic(name: str, totals: dict[str, float]) -> float | int:
    delivered = totals.get("recipients", 0) - totals.get("bounced", 0) - totals.get("failed", 0)
    local = {**totals, "delivered": delivered}

    def rate(num: float, den: float) -> float:
        return round(num / den, 4) if den > 0 else 0.0

    values = {
        "recipients": local.get("recipients", 0), "delivered": delivered, "bounced": local.get("bounced", 0),
        "failed": local.get("failed", 0), "bounced_or_failed": local.get("bounced", 0) + local.get("failed", 0),
        "opens": local.get("opens", 0), "opens_unique": local.get("opens_unique", 0),
        "clicks": local.get("clicks", 0), "clicks_unique": local.get("clicks_unique", 0),
        "conversions": local.get("conversions", 0), "conversion_uniques": local.get("conversion_uniques", 0),
        "conversion_value": round(float(local.get("conversion_value", 0)), 2),
        "unsubscribes": local.get("unsubscribes", 0), "unsubscribe_uniques": local.get("unsubscribe_uniques", 0),
        "spam_complaints": local.get("spam_complaints", 0),
    }
    derived = {
        "delivery_rate": rate(delivered, values["recipients"]),
        "bounce_rate": rate(values["bounced"], values["recipients"]),
        "failed_rate": rate(values["failed"], values["recipients"]),
        "bounced_or_failed_rate": rate(values["bounced_or_failed"], values["recipients"]),
        "open_rate": rate(values["opens_unique"], delivered),
        "click_rate": rate(values["clicks_unique"], delivered),
        "click_to_open_rate": rate(values["clicks_unique"], values["opens_unique"]),
        "conversion_rate": rate(values["conversion_uniques"], delivered),
        "unsubscribe_rate": rate(values["unsubscribe_uniques"], delivered),
        "spam_complaint_rate": rate(values["spam_complaints"], delivered),
        "revenue_per_recipient": rate(values["conversion_value"], delivered),
        "average_order_value": round(values["conversion_value"] / values["conversions"], 2)
        if values["conversions"] else 0.0,
        "message_segment_count_sum": 0, "text_message_credit_usage_amount": 0.0,
        "text_message_roi": 0.0, "text_message_spend": 0.0,
    }
    result = values.get(name, derived.get(name))
    return int(result) if name in _INTEGER_STATISTICS else float(result)


def _relationships(kind: _ReportKind, group_by: list[str], keys: list[tuple]) -> dict[str, Any]:
    out = {}
    for name, resource_type, grouping in kind.relationships:
        position = group_by.index(grouping)
        ids = sorted({key[position] for key in keys})
        out[name] = {"data": [{"type": resource_type, "id": i} for i in ids]}
    return out


def query_campaign_values(store: Any, account_id: str, body: dict[str, Any], base_url: str = "") -> dict[str, Any]:
    """Body → response document of ``query_campaign_values``."""
    report, _, _ = _run_report(store, account_id, body, _CAMPAIGN, interval=None)
    group_by, statistics = report["group_by"], report["statistics"]
    results = []
    for key in sorted(report["grouped"]):
        totals: dict[str, float] = {}
        for bucket_totals in report["grouped"][key].values():
            for counter, value in bucket_totals.items():
                totals[counter] = totals.get(counter, 0) + value
        results.append({"groupings": dict(zip(group_by, key)),
                        "statistics": {s: _statistic(s, totals) for s in statistics}})
    return {
        "data": {
            "type": _CAMPAIGN.type,
            "attributes": {"results": results},
            "relationships": _relationships(_CAMPAIGN, group_by, sorted(report["grouped"])),
        },
        "links": {"self": f"{base_url}{CAMPAIGN_VALUES_PATH}"},
    }


def query_flow_series(store: Any, account_id: str, body: dict[str, Any], base_url: str = "") -> dict[str, Any]:
    """Body → response document of ``query_flow_series``."""
    interval = body.get("data", {}).get("attributes", {}).get("interval") if isinstance(body, dict) else None
    report, buckets, zone = _run_report(store, account_id, body, _FLOW, interval=interval or "daily")
    group_by, statistics = report["group_by"], report["statistics"]
    results = []
    for key in sorted(report["grouped"]):
        per_bucket = report["grouped"][key]
        series = {s: [_statistic(s, per_bucket.get(b, {})) for b in buckets] for s in statistics}
        results.append({"groupings": dict(zip(group_by, key)), "statistics": series})
    return {
        "data": {
            "type": _FLOW.type,
            "attributes": {"results": results, "date_times": [_iso(b, zone) for b in buckets]},
            "relationships": _relationships(_FLOW, group_by, sorted(report["grouped"])),
        },
        "links": {"self": f"{base_url}{FLOW_SERIES_PATH}"},
    }


HANDLERS = {
    METRIC_AGGREGATES_PATH: query_metric_aggregates,
    CAMPAIGN_VALUES_PATH: query_campaign_values,
    FLOW_SERIES_PATH: query_flow_series,
}


# --------------------------------------------------------------------------- HTTP wiring

def _handler(compute: Callable[..., dict[str, Any]]):
    def handle(ctx):  # ctx: klaviyo_sandbox.app.RequestContext
        from klaviyo_sandbox.errors import invalid

        body = ctx.json_body()
        try:
            document = compute(ctx.store, ctx.account, body, ctx.link_base)
        except ReportError as error:
            raise invalid(error.detail, pointer=error.pointer) from None
        return ctx.respond(document)

    handle.__name__ = compute.__name__
    return handle


def register(app: Any) -> None:
    """Add the three reporting endpoints to a ``SandboxApp`` (rate limits come from the spec via the app)."""
    for path, compute in HANDLERS.items():
        app.route("POST", path, _handler(compute))


def attach(sandbox: Any) -> None:
    """Hook called by ``Sandbox`` for sibling modules: registers the reporting endpoints."""
    register(sandbox.app)
