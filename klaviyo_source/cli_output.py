"""What the CLI prints: summary/status/connection tables (rich) or JSON lines (``--log-format
json``), one-line errors on stderr, and logging with secrets scrubbed."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from typing import Any, Sequence

from klaviyo_source.cli_errors import redact

LOGGER_NAME = "klaviyo_dlt"


class RedactingFilter(logging.Filter):
    """Removes registered secrets from every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"time": datetime.fromtimestamp(record.created).astimezone().isoformat(),
                   "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        payload.update(getattr(record, "fields", {}) or {})
        return redact(json.dumps(payload, default=str))


def setup_logging(log_format: str, debug: bool) -> logging.Logger:
    """Our logger on stderr (text or JSON); dlt logs in JSON too when asked."""
    if log_format == "json":
        os.environ.setdefault("RUNTIME__LOG_FORMAT", "JSON")
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    for name in ("dlt", ""):
        for existing in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in existing.filters):
                existing.addFilter(RedactingFilter())
    return logger


class Output:
    """Prints results to stdout as rich tables (text) or one JSON object per line (json)."""

    def __init__(self, log_format: str = "text") -> None:
        self.json = log_format == "json"

    def emit(self, payload: dict[str, Any]) -> None:
        print(redact(json.dumps(payload, default=str)), flush=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for i, column in enumerate(columns):
            table.add_column(column, justify="right" if i and _numeric_column(rows, i) else "left")
        for row in rows:
            table.add_row(*[redact(_cell(v)) for v in row])
        console = Console(file=sys.stdout, width=max(100, _terminal_width()))
        console.print(redact(title), markup=False, highlight=False)
        console.print(table)

    def line(self, text: str) -> None:
        print(redact(text), flush=True)


def error_line(message: str, prog: str = "klaviyo-dlt", as_json: bool = False, exit_code: int | None = None) -> None:
    """The one line a failure prints on stderr (a JSON object under ``--log-format json``)."""
    if as_json:
        line = json.dumps({"time": datetime.now().astimezone().isoformat(), "level": "error", "logger": LOGGER_NAME,
                           "message": message, "exit_code": exit_code})
    else:
        line = f"{prog}: error: {message}"
    print(redact(line), file=sys.stderr, flush=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _numeric_column(rows: Sequence[Sequence[Any]], index: int) -> bool:
    values = [r[index] for r in rows if r[index] is not None]
    return bool(values) and all(isinstance(v, (int, float)) for v in values)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120
