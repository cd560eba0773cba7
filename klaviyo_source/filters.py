"""Klaviyo filter expressions (JSON:API ``filter=`` syntax).

Datetimes are unquoted ISO-8601 (``greater-than(updated,2024-01-01T00:00:00+00:00)``),
strings single-quoted, several conditions joined with ``and(...)``.  Every datetime sent
is clamped to "now": a future datetime in a filter is a 400.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from klaviyo_source.errors import KlaviyoConfigError


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def to_utc(value: datetime) -> datetime:
    """Aware UTC stdlib datetime (naive values are taken as UTC).

    Subclasses such as pendulum's ``DateTime`` are converted: pendulum drops a stdlib ``tzinfo``
    in arithmetic (``DateTime(..., tzinfo=timezone.utc) + timedelta`` comes out naive).
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    if type(value) is not datetime:
        value = datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                         value.microsecond, tzinfo=timezone.utc)
    return value


def format_datetime(value: datetime) -> str:
    """Second-precision UTC ISO-8601, floored (a lower bound never skips a record)."""
    return to_utc(value).replace(microsecond=0).isoformat()


def clamp_to_now(value: datetime, now: datetime | None = None) -> datetime:
    """Never later than now minus one second (the server rejects future datetimes)."""
    limit = (now or utc_now()) - timedelta(seconds=1)
    value = to_utc(value)
    return limit if value > limit else value


def literal(value: Any) -> str:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(literal(v) for v in value) + "]"
    text = str(value).replace("'", "\\'")
    return f"'{text}'"


def condition(operator: str, field: str, value: Any) -> str:
    """One filter condition, e.g. ``condition("equals", "messages.channel", "email")``."""
    return f"{operator}({field},{literal(value)})"


def combine(conditions: Sequence[str]) -> str | None:
    """Join conditions with ``and(...)``; None when there are none."""
    parts = [c for c in conditions if c]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return "and(" + ",".join(parts) + ")"


def check_operator(stream_name: str, field: str, operator: str, allowed: Sequence[str]) -> None:
    if operator not in allowed:
        raise KlaviyoConfigError(
            f"stream {stream_name!r}: filter operator {operator!r} is not allowed on {field!r} "
            f"(the API allows {', '.join(allowed) or 'none'})"
        )


def range_conditions(
    field: str,
    operators: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    now: datetime | None = None,
) -> list[str]:
    """Conditions selecting ``start <= field < end`` with the operators the endpoint allows.

    With only ``greater-than`` (profiles ``updated``) the lower bound is ``start - 1s`` so records
    sharing the watermark second are read again (the primary key dedupes them).
    """
    conditions: list[str] = []
    if start is not None:
        start = clamp_to_now(start, now)
        if "greater-or-equal" in operators:
            conditions.append(condition("greater-or-equal", field, start))
        elif "greater-than" in operators:
            conditions.append(condition("greater-than", field, start.replace(microsecond=0) - timedelta(seconds=1)))
        else:
            raise KlaviyoConfigError(f"{field!r} has no lower-bound filter operator")
    if end is not None:
        end = to_utc(end)
        limit = now or utc_now()
        if end <= limit:  # an end in the future needs no server-side bound (and would be a 400)
            if "less-than" in operators:
                conditions.append(condition("less-than", field, end))
            elif "less-or-equal" in operators:
                conditions.append(condition("less-or-equal", field, end - timedelta(seconds=1)))
    return conditions


def parse_datetime(value: Any, name: str) -> datetime | None:
    """Parse a user-supplied date/datetime; one-line error naming the parameter when malformed."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return to_utc(value)
    if hasattr(value, "year") and hasattr(value, "month"):  # a date
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KlaviyoConfigError(
            f"{name}={text!r} is not a date; use ISO-8601 like 2024-01-31 or 2024-01-31T00:00:00Z"
        ) from None
    return to_utc(parsed)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any, name: str) -> timedelta:
    """``3d``, ``12h``, ``90m``, ``30s``, a number of seconds or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(seconds=float(value))
    text = str(value).strip().lower()
    try:
        if text and text[-1] in _UNITS:
            return timedelta(seconds=float(text[:-1]) * _UNITS[text[-1]])
        return timedelta(seconds=float(text))
    except ValueError:
        raise KlaviyoConfigError(f"{name}={value!r} is not a duration; use e.g. 3d, 12h, 90m or seconds") from None
