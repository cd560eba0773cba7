"""Progress of a running sync: rows per table from dlt's collector protocol, plus HTTP pages and
429 waits per endpoint counted from the Klaviyo responses.

``SyncProgress`` is a dlt ``Collector`` (pass it as ``dlt.pipeline(progress=...)``).  It renders
as a live rich table on a terminal, as periodic plain lines elsewhere, or as JSON lines for
schedulers (``--log-format json``).  ``response_hook`` is a ``requests`` response hook that
counts pages and rate-limit waits; it sees URLs only, never headers, so no key can leak.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from dlt.common.runtime.collector_base import Collector

ProgressMode = Literal["rich", "text", "json", "off"]


class SyncProgress(Collector):
    """dlt progress collector with per-resource rows, pages and 429 waits."""

    def __init__(self, mode: ProgressMode = "text", period: float = 2.0, stream: TextIO | None = None,
                 label: str | None = None) -> None:
        self.mode = mode
        self.period = period
        self.stream = stream or sys.stderr
        self.label = label
        self.step: str | None = None
        self._lock = threading.Lock()
        self.rows: dict[str, int] = defaultdict(int)          # extract: rows per table/resource
        self.step_counters: dict[str, int] = defaultdict(int)  # normalize/load counters
        self.step_totals: dict[str, int | None] = {}
        self.pages: dict[str, int] = defaultdict(int)          # per endpoint (URL path)
        self.waits_429: dict[str, int] = defaultdict(int)
        self._started = time.monotonic()
        self._step_started = self._started
        self._last_emit = 0.0
        self._live: Any = None

    # --- dlt Collector protocol -------------------------------------------------------------
    def update(self, name: str, inc: int = 1, total: int | None = None, inc_total: int | None = None,
               message: str | None = None, label: str | None = None) -> None:
        with self._lock:
            if name.startswith("_dlt"):
                pass
            elif self.step and self.step.lower().startswith("extract") and name != "Resources":
                self.rows[name] += inc
            elif name[:1].isupper():  # dlt's step counters: Resources, Files, Items, Jobs
                key = f"{name} ({label})" if label else name
                self.step_counters[key] += inc
                if total is not None:
                    self.step_totals[key] = total
                elif inc_total:
                    self.step_totals[key] = (self.step_totals.get(key) or 0) + inc_total
        self._maybe_emit()

    def _start(self, step: str) -> None:
        with self._lock:
            self.step_counters.clear()
            self.step_totals.clear()
            self._step_started = time.monotonic()
        if self.mode == "rich" and self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render_rich(), console=Console(file=self.stream), refresh_per_second=4,
                              transient=True)
            self._live.start()
        self._last_emit = 0.0
        self._maybe_emit()

    def _stop(self) -> None:
        self._emit()
        if self._live is not None:
            self._live.stop()
            self._live = None

    # --- HTTP accounting ----------------------------------------------------------------------
    def response_hook(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        """``requests`` response hook: one page per 2xx GET, one wait per 429."""
        endpoint = _endpoint(response.url)
        with self._lock:
            if response.status_code == 429:
                self.waits_429[endpoint] += 1
            elif response.status_code < 300 and response.request.method == "GET":
                self.pages[endpoint] += 1
        self._maybe_emit()
        return response

    def snapshot(self) -> dict[str, Any]:
        """Counters now, as plain data (also what JSON mode prints)."""
        with self._lock:
            return {
                "event": "progress",
                "account": self.label,
                "step": self.step,
                "elapsed_s": round(time.monotonic() - self._started, 1),
                "rows": dict(self.rows),
                "pages": dict(self.pages),
                "waits_429": dict(self.waits_429),
                "counters": {k: (f"{v}/{self.step_totals[k]}" if self.step_totals.get(k) else v)
                             for k, v in self.step_counters.items()},
                "eta_s": self._eta(),
            }

    # --- rendering -----------------------------------------------------------------------------
    def _eta(self) -> float | None:
        """Seconds left for normalize/load where dlt knows the totals; Klaviyo lists have no totals."""
        elapsed = time.monotonic() - self._step_started
        for key, total in self.step_totals.items():
            done = self.step_counters.get(key, 0)
            if total and 0 < done < total:
                return round(elapsed * (total - done) / done, 1)
        return None

    def _maybe_emit(self) -> None:
        now = time.monotonic()
        if now - self._last_emit >= self.period:
            self._emit()

    def _emit(self) -> None:
        self._last_emit = time.monotonic()
        if self.mode == "off":
            return
        if self.mode == "rich":
            if self._live is not None:
                self._live.update(self._render_rich())
            return
        snap = self.snapshot()
        if self.mode == "json":
            self.stream.write(json.dumps(snap, default=str) + "\n")
        else:
            self.stream.write(_text_line(snap) + "\n")
        self.stream.flush()

    def _render_rich(self) -> Any:
        from rich.table import Table

        snap = self.snapshot()
        title = f"{snap['account'] + ': ' if snap['account'] else ''}{snap['step'] or 'starting'}" \
                f"  {snap['elapsed_s']}s" + (f"  ETA {snap['eta_s']}s" if snap["eta_s"] else "")
        table = Table(title=title, title_justify="left")
        table.add_column("table / endpoint")
        table.add_column("rows", justify="right")
        table.add_column("pages", justify="right")
        table.add_column("429 waits", justify="right")
        names = sorted(set(snap["rows"]) | set(snap["pages"]) | set(snap["waits_429"]))
        for name in names:
            table.add_row(name, str(snap["rows"].get(name, "")), str(snap["pages"].get(name, "")),
                          str(snap["waits_429"].get(name, "")))
        for key, value in snap["counters"].items():
            table.add_row(f"[dim]{key}[/dim]", str(value), "", "")
        return table


def _endpoint(url: str) -> str:
    """``/api/profiles`` from a full URL; the page cursor and filters are dropped."""
    path = urlsplit(url).path
    for prefix in ("/klaviyo/api/", "/api/"):
        if prefix in path:
            return path.split(prefix, 1)[1].strip("/") or path
    return path


def _text_line(snap: dict[str, Any]) -> str:
    parts = [f"[{snap['account']}]" if snap["account"] else "", f"{snap['step'] or 'starting'}",
             f"{snap['elapsed_s']}s"]
    if snap["rows"]:
        parts.append("rows " + ", ".join(f"{k}={v}" for k, v in sorted(snap["rows"].items())))
    if snap["pages"]:
        parts.append("pages " + ", ".join(f"{k}={v}" for k, v in sorted(snap["pages"].items())))
    if snap["waits_429"]:
        parts.append("429 waits " + ", ".join(f"{k}={v}" for k, v in sorted(snap["waits_429"].items())))
    if snap["counters"]:
        parts.append(" ".join(f"{k}={v}" for k, v in snap["counters"].items()))
    if snap["eta_s"]:
        parts.append(f"ETA {snap['eta_s']}s")
    return " | ".join(p for p in parts if p)
