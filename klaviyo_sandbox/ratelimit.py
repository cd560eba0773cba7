"""Klaviyo's per-account, per-operation fixed-window rate limits (burst per second, steady per minute, daily).

A window opens with the first request counted in it and lasts 1 s / 60 s / 1 day (times
``scale``); when it is full, requests get 429 with ``Retry-After`` = seconds until it closes.

Limits come from each operation's description in the spec (``Operation.rate_limit``); a
request using a parameter with its own bucket (e.g. ``additional-fields[profile]=
predictive_analytics``) counts against that bucket instead.  ``scale`` multiplies the
window lengths (0.1 -> 100 ms / 6 s windows) so tests can exhaust and recover quickly.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from .errors import throttled
from .spec import Operation, RateLimit


class RateLimiter:
    """Counts requests per (account, operation, bucket) in 1 s, 60 s (and daily) fixed windows."""

    def __init__(self, enabled: bool = True, scale: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled
        self.scale = scale
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple, tuple[float, int]] = {}  # (account, bucket, length) -> (start, used)

    def configure(self, enabled: bool | None = None, scale: float | None = None) -> None:
        """Switch limits on/off or change the window scale (also clears the counters)."""
        with self._lock:
            if enabled is not None:
                self.enabled = enabled
            if scale is not None:
                if scale <= 0:
                    raise ValueError("rate_limit_scale must be > 0")
                self.scale = scale
            self._windows.clear()

    @staticmethod
    def bucket(op: Operation, args) -> tuple[str, RateLimit | None]:
        """The bucket a request counts against: the operation's, or a parameter-specific one."""
        for (param, value), limit in op.extra_rate_limits.items():
            given = args.get(param)
            if given is not None and value in given.split(","):
                return f"{op.operation_id}:{param}={value}", limit
        return op.operation_id, op.rate_limit

    def hit(self, account: str, op: Operation, args) -> dict[str, str]:
        """Count one request; returns RateLimit-* headers, raises a 429 ApiError when over a limit."""
        name, limit = self.bucket(op, args)
        if limit is None:
            return {}
        header_limit = f"{limit.burst_per_second}, {limit.burst_per_second};w=1, {limit.steady_per_minute};w=60"
        if not self.enabled:
            return {"RateLimit-Limit": header_limit, "RateLimit-Remaining": str(limit.burst_per_second), "RateLimit-Reset": "0"}
        now = self.clock()
        windows = [(1.0 * self.scale, limit.burst_per_second), (60.0 * self.scale, limit.steady_per_minute)]
        if limit.daily:
            windows.append((86400.0 * self.scale, limit.daily))
        with self._lock:
            states = []
            for length, allowed in windows:
                key = (account, name, length)
                start, used = self._windows.get(key, (now, 0))
                if now >= start + length:  # the window has passed: the next one starts with this request
                    start, used = now, 0
                if used >= allowed:
                    error = throttled(max(1, math.ceil(start + length - now)))
                    error.headers.update({"RateLimit-Limit": header_limit, "RateLimit-Remaining": "0",
                                          "RateLimit-Reset": error.headers["Retry-After"]})
                    raise error
                states.append((key, start, used, allowed, start + length - now))
            remaining, reset = None, 0.0
            for key, start, used, allowed, left in states:
                self._windows[key] = (start, used + 1)
                rest = allowed - used - 1
                if remaining is None or rest < remaining:
                    remaining, reset = rest, left
        return {"RateLimit-Limit": header_limit, "RateLimit-Remaining": str(max(0, remaining or 0)),
                "RateLimit-Reset": str(math.ceil(reset))}
