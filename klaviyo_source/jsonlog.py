"""One schema for every JSON log line: ``time`` (ISO 8601 with offset), ``level``, ``logger``,
``message``, then the record's own fields.

Used for our log records, dlt's (its logger is routed here under ``--log-format json``),
progress events and results, so a scheduler can parse every line of a run the same way.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import datetime
from typing import Any

SCHEMA = ("time", "level", "logger", "message")


def json_line(level: str, logger: str, message: str, created: float | None = None, **fields: Any) -> str:
    """One log line as JSON.

    Args:
        level: ``debug`` | ``info`` | ``warning`` | ``error`` | ``critical``.
        logger: who speaks, e.g. ``klaviyo_dlt``, ``klaviyo_dlt.progress``, ``dlt``.
        message: a human-readable sentence.
        created: the event's time as a POSIX timestamp (default: now).
        **fields: structured data; a field named like a schema key does not replace it.

    Returns:
        The JSON object, without a trailing newline.
    """
    moment = datetime.fromtimestamp(created) if created is not None else datetime.now()
    payload: dict[str, Any] = {"time": moment.astimezone().isoformat(), "level": level, "logger": logger,
                               "message": message}
    for key, value in fields.items():
        payload.setdefault(key, value)
    return json.dumps(payload, default=str)


# LogRecord attributes that are not user fields (``logging.LogRecord.__dict__`` of a plain record)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "stacklevel"}


class JsonLineFormatter(logging.Formatter):
    """Formats any ``logging`` record in the one schema; ``extra=`` fields (ours pass ``fields``,
    dlt passes ``metrics``) become top-level fields, an exception becomes ``traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = value
        fields.update(fields.pop("fields", None) or {})
        if record.exc_info:
            fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return json_line(record.levelname.lower(), record.name, record.getMessage(), created=record.created,
                         **fields)
