"""What the CLI prints: summary/status/connection tables (rich) or JSON lines (``--log-format
json``), one-line errors on stderr, and logging with secrets scrubbed.

Under ``--log-format json`` every line on stdout and stderr has the schema of
``klaviyo_source.jsonlog`` -- our records, dlt's (its logger is routed through the same
handler), warnings, progress events, results and errors.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from typing import Any, Sequence

from klaviyo_source.cli_errors import redact
from klaviyo_source.jsonlog import JsonLineFormatter, json_line

LOGGER_NAME = "klaviyo_dlt"


class RedactingFilter(logging.Filter):
    """Removes registered secrets from every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonLinesHandler(logging.StreamHandler):
    """Writes records as JSON lines to the current ``sys.stderr``, secrets scrubbed.

    The format is fixed: dlt sets a formatter on its logger's first handler each time it
    (re)initialises its runtime; that formatter is ignored here, so dlt's records keep our schema.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._json = JsonLineFormatter()

    @property  # type: ignore[override]
    def stream(self) -> Any:  # follow sys.stderr as it is now (pytest's capture swaps it)
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._json.format(record))


def setup_logging(log_format: str, debug: bool) -> logging.Logger:
    """Our logger on stderr, as plain messages or JSON lines.

    With ``json``, dlt's logger and the root logger (other libraries, ``warnings``) write through
    the same JSON handler, so every line of stderr has one schema.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    if log_format == "json":
        handler: logging.Handler = JsonLinesHandler()
        for other in (logging.getLogger("dlt"), logging.getLogger()):
            for existing in list(other.handlers):
                # dlt's own stream handler, and ours from an earlier call in this process
                dlt_text = other.name == "dlt" and isinstance(existing, logging.StreamHandler)
                if isinstance(existing, JsonLinesHandler) or dlt_text:
                    other.removeHandler(existing)
            other.addHandler(handler)
        logging.captureWarnings(True)
    else:
        for other in (logging.getLogger("dlt"), logging.getLogger()):  # a JSON run earlier in this process
            for existing in [h for h in other.handlers if isinstance(h, JsonLinesHandler)]:
                other.removeHandler(existing)
        logging.captureWarnings(False)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(RedactingFilter())
        for name in ("dlt", ""):
            for existing in logging.getLogger(name).handlers:
                if not any(isinstance(f, RedactingFilter) for f in existing.filters):
                    existing.addFilter(RedactingFilter())
    logger.addHandler(handler)
    return logger


class Output:
    """Prints results to stdout as rich tables (text) or one JSON object per line (json)."""

    def __init__(self, log_format: str = "text") -> None:
        self.json = log_format == "json"

    def emit(self, payload: dict[str, Any], message: str, level: str = "info") -> None:
        """One result as a JSON line on stdout, in the log schema (``message`` says it in words)."""
        print(redact(json_line(level, LOGGER_NAME, message, **payload)), flush=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A titled table: rich on a console, one ``"event": "table"`` JSON line under json."""
        if self.json:
            self.emit({"event": "table", "columns": list(columns), "rows": [list(r) for r in rows]}, title)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for i, column in enumerate(columns):
            table.add_column(column, justify="right" if i and _numeric_column(rows, i) else "left")
        for row in rows:
            table.add_row(*[redact(_cell(v)) for v in row])
        console = Console(file=sys.stdout, width=max(100, _terminal_width()))
        console.print(redact(title), markup=False, highlight=False, soft_wrap=True)  # a long path must not break it
        console.print(table)

    def line(self, text: str) -> None:
        """A line of text (one JSON line with it as the message under json)."""
        if self.json:
            print(redact(json_line("info", LOGGER_NAME, text.strip("\n") or "-")), flush=True)
            return
        print(redact(text), flush=True)


def error_line(message: str, prog: str = "klaviyo-dlt", as_json: bool = False, exit_code: int | None = None,
               trace: str | None = None) -> None:
    """The one line a failure prints on stderr (a JSON object under ``--log-format json``).

    Args:
        message: what failed and what to fix.
        prog: the command name prefixing the text line.
        as_json: print the JSON log schema instead of text.
        exit_code: the process's exit code, a field of the JSON line.
        trace: a traceback (``--debug``): a ``traceback`` field in JSON, printed after the line in text.
    """
    if as_json:
        fields: dict[str, Any] = {"exit_code": exit_code}
        if trace:
            fields["traceback"] = trace
        print(redact(json_line("error", LOGGER_NAME, message, **fields)), file=sys.stderr, flush=True)
        return
    print(redact(f"{prog}: error: {message}"), file=sys.stderr, flush=True)
    if trace:
        print(redact(trace), file=sys.stderr, end="" if trace.endswith("\n") else "\n", flush=True)


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
