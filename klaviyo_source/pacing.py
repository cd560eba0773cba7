"""Proactive per-endpoint pacing: never exceed Klaviyo's burst (per second) and steady (per minute) limits.

Klaviyo meters each endpoint in two fixed windows (spec: "Burst: `N/s` Steady: `M/m`").
A sliding log of send times bounds every window of that length, so any fixed window the
server uses is bounded as well.  One ``Pacer`` exists per (account, endpoint bucket) in
the process and is shared by every resource and thread that calls that endpoint.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from klaviyo_source.settings import PACING_MARGIN


@dataclass(frozen=True)
class RateTier:
    """A Klaviyo rate-limit tier: requests per second (burst) and per minute (steady)."""

    burst_per_second: int
    steady_per_minute: int

    def min_seconds(self, requests: int, scale: float = 1.0) -> float:
        """Least wall time the limits allow for ``requests`` calls (the first call at t=0)."""
        if requests <= 1:
            return 0.0
        n = requests - 1
        return max((n // self.burst_per_second) * 1.0, (n // self.steady_per_minute) * 60.0) * scale


class Pacer:
    """Thread-safe sliding-window limiter for one endpoint bucket."""

    def __init__(self, tier: RateTier, scale: float = 1.0, margin: float = PACING_MARGIN):
        self.tier = tier
        self.windows = (
            (1.0 * scale * (1 + margin), tier.burst_per_second),
            (60.0 * scale * (1 + margin), tier.steady_per_minute),
        )
        self._horizon = max(w for w, _ in self.windows)
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()
        self.requests = 0
        self.waited_seconds = 0.0

    def _delay(self, now: float) -> float:
        while self._sent and now - self._sent[0] >= self._horizon:
            self._sent.popleft()
        delay = 0.0
        for window, limit in self.windows:
            if len(self._sent) >= limit:
                oldest_in_window = self._sent[-limit]
                delay = max(delay, oldest_in_window + window - now)
        return delay

    def acquire(self) -> None:
        """Block until one more request fits in every window, then record it."""
        while True:
            with self._lock:
                now = time.monotonic()
                delay = self._delay(now)
                if delay <= 0:
                    self._sent.append(now)
                    self.requests += 1
                    return
                self.waited_seconds += delay
            time.sleep(delay)


class PacerRegistry:
    """Process-wide pacers keyed by (account identity, bucket); a bucket is an endpoint tier."""

    def __init__(self) -> None:
        self._pacers: dict[tuple[str, str, float], Pacer] = {}
        self._lock = threading.Lock()

    def get(self, account: str, bucket: str, tier: RateTier, scale: float = 1.0) -> Pacer:
        key = (account, bucket, scale)
        with self._lock:
            pacer = self._pacers.get(key)
            if pacer is None:
                pacer = self._pacers[key] = Pacer(tier, scale)
            return pacer

    def clear(self) -> None:
        with self._lock:
            self._pacers.clear()


PACERS = PacerRegistry()
