"""Klaviyo's per-account, per-operation fixed-window rate limits (burst per second, steady per minute).

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
    """Counts requests per (account, operation, bucket) in 1 s and 60 s fixed windows."""

    def __init__(self, enabled: bool = True, scale: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled
        self.scale = scale
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple, int] = {}

    def configure(self, enabled: bool | None = None, scale: float | None = None) -> None:
        """Switch limits on/off or change the window scale (also clears the counters)."""
        with self._lock:
            if enabled is not None:
                self.enabled = enabled
            if scale is not None:
                if scale <= 0:
                    raise ValueError("rate_limit_scale must be > 0")
                self.scale = scale
            self._counts.clear()

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
        windows = ((1.0 * self.scale, limit.burst_per_second), (60.0 * self.scale, limit.steady_per_minute))
        with self._lock:
            keys = []
            for length, allowed in windows:
                start = math.floor(now / length)
                key = (account, name, length, start)
                used = self._counts.get(key, 0)
                if used >= allowed:
                    retry = max(1, math.ceil((start + 1) * length - now))
                    raise throttled(retry)
                keys.append((key, allowed, (start + 1) * length - now))
            remaining, reset = None, 0.0
            for key, allowed, left in keys:
                self._counts[key] = self._counts.get(key, 0) + 1
                rest = allowed - self._counts[key]
                if remaining is None or rest < remaining:
                    remaining, reset = rest, left
            if len(self._counts) > 50_000:  # forget old windows
                current = {k: v for k, v in self._counts.items() if (k[3] + 2) * k[2] > now}
                self._counts = current
        return {"RateLimit-Limit": header_limit, "RateLimit-Remaining": str(max(0, remaining or 0)),
                "RateLimit-Reset": str(math.ceil(reset))}
