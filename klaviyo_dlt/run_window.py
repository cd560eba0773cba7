"""Which records an Airflow run reads: everything new since the stored watermarks, or one window.

* A scheduled (or plain manual) run is an ordinary incremental sync: each resource reads from its
  watermark in the destination's dlt state (the first run of a fresh DAG: from
  ``KLAVIYO_DLT_START_DATE``, or all history), events re-read ``event_lookback`` so late events
  arrive, and the deletion sweeps and list/segment membership passes run.  The run's data interval
  plays no part.
* A backfill reads exactly one window and leaves the watermarks alone: a run created by
  ``airflow backfill create`` reads its data interval; a run triggered with the params
  ``backfill_start`` / ``backfill_end`` reads that window.  The window is passed to dlt's
  ``Incremental`` as ``end_value``, and dlt then reads with a throw-away state instead of the stored
  one, so nothing the backfill sees moves a watermark.  Only resources with a time cursor can be
  read by window (``backfill_resources``); the others hold no history to re-read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from klaviyo_source.cli_errors import UsageError
from klaviyo_source.pipeline_runner import parse_date, plain_utc
from klaviyo_source.streams import ALL_STREAMS

BACKFILL_RUN_TYPE = "backfill"  # DagRunType.BACKFILL_JOB: runs made by `airflow backfill create`
START_PARAM = "backfill_start"
END_PARAM = "backfill_end"


@dataclass(frozen=True)
class RunWindow:
    """``start``/``end`` of a backfill; both None for an incremental run."""

    start: datetime | None = None
    end: datetime | None = None
    source: str = "incremental"  # incremental | data interval | params

    @property
    def is_backfill(self) -> bool:
        return self.end is not None

    @property
    def mode(self) -> str:
        return "backfill" if self.is_backfill else "incremental"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for XCom and logs)."""
        return {"mode": self.mode, "source": self.source,
                "start": self.start.isoformat() if self.start else None,
                "end": self.end.isoformat() if self.end else None}


def run_window(run_type: Any, interval_start: datetime | None, interval_end: datetime | None,
               params: Mapping[str, Any] | None = None, now: datetime | None = None) -> RunWindow:
    """The window an Airflow run reads.

    Args:
        run_type: the DAG run's type (``scheduled``, ``manual``, ``backfill`` ...; an enum or its value).
        interval_start: the run's data interval start (may be None for manual runs).
        interval_end: the run's data interval end.
        params: the run's params; ``backfill_start`` + ``backfill_end`` ask for a backfill of that window.
        now: the current time (default: the clock); a window end after it is cut to it.

    Returns:
        The window: empty (incremental) unless the run is a backfill.

    Raises:
        UsageError: a param is not a date, only one of the two is given, or the window is empty.
    """
    now = now or datetime.now(timezone.utc)
    params = params or {}
    start = parse_date(_text(params.get(START_PARAM)), START_PARAM)
    end = parse_date(_text(params.get(END_PARAM)), END_PARAM)
    if start is not None or end is not None:
        if start is None or end is None:
            raise UsageError(f"a backfill needs both params {START_PARAM} and {END_PARAM} (ISO dates, end exclusive)")
        return _window(start, end, now, "params")
    if str(getattr(run_type, "value", run_type)) == BACKFILL_RUN_TYPE:
        if interval_start is None or interval_end is None:
            raise UsageError("a backfill run has no data interval; the DAG needs a data-interval timetable")
        return _window(plain_utc(interval_start), plain_utc(interval_end), now, "data interval")
    return RunWindow()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _window(start: datetime, end: datetime, now: datetime, source: str) -> RunWindow:
    end = min(end, now)  # Klaviyo rejects future datetimes in filters
    if start >= end:
        raise UsageError(f"backfill window {start.isoformat()} .. {end.isoformat()} is empty; "
                         "the start must be before the end and in the past")
    return RunWindow(start, end, source)


def backfill_resources(resources: Sequence[str]) -> list[str]:
    """The resources a backfill can read by window: those read through a time cursor.

    Children (flow actions, campaign messages ...), memberships and reports keep their own
    progress in state and are read whole or by their own rules, so a window does not apply.

    Args:
        resources: the resources of a task.

    Returns:
        Those among them with a time cursor, in the same order.
    """
    windowed = {s.name for s in ALL_STREAMS if s.incremental and not s.parent and not s.factory}
    return [r for r in resources if r in windowed]
