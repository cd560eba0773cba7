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
        """Least wall time the limits allow for ``requests`` calls (the first at t=0).

        Calls go out ``burst`` per second until ``steady`` fill the minute, then wait for the
        next minute: call k is at ``60*floor(k/steady) + floor((k mod steady)/burst)`` seconds.
        """
        if requests <= 1:
            return 0.0
        k = requests - 1
        steady, burst = self.steady_per_minute, self.burst_per_second
        return (60.0 * (k // steady) + float((k % steady) // burst)) * scale


class Pacer:
    """Thread-safe sliding-window limiter for one endpoint bucket.

    A request occupies its windows from the moment it is sent until ``window`` after its
    response arrived: the server counted it somewhere in between, so a later request sent
    one window after that response can never share a server window with it, whatever the
    network or server latency.
    """

    def __init__(self, tier: RateTier, scale: float = 1.0, margin: float = PACING_MARGIN):
        self.tier = tier
        self.windows = (
            (1.0 * scale * (1 + margin), tier.burst_per_second),
            (60.0 * scale * (1 + margin), tier.steady_per_minute),
        )
        self._horizon = max(w for w, _ in self.windows)
        self._done: deque[float] = deque()  # completion times, ascending
        self._in_flight = 0
        self._cond = threading.Condition()
        self.requests = 0
        self.waited_seconds = 0.0

    def _delay(self, now: float) -> float | None:
        """Seconds to wait before one more request fits; None = wait for an in-flight request."""
        done = self._done
        while done and now - done[0] >= self._horizon:
            done.popleft()
        delay = 0.0
        for window, limit in self.windows:
            if self._in_flight >= limit:
                return None
            recent = 0
            for stamp in reversed(done):
                if now - stamp >= window:
                    break
                recent += 1
            excess = self._in_flight + recent - limit + 1  # oldest recent entries that must expire
            if excess > 0:
                delay = max(delay, done[len(done) - recent + excess - 1] + window - now)
        return delay

    def acquire(self) -> None:
        """Block until one more request fits in every window; pair with ``release``."""
        with self._cond:
            while True:
                now = time.monotonic()
                delay = self._delay(now)
                if delay is not None and delay <= 0:
                    self._in_flight += 1
                    self.requests += 1
                    return
                self.waited_seconds += delay or 0.0
                self._cond.wait(timeout=delay if delay is not None else 1.0)

    def release(self) -> None:
        """The response (or error) for an acquired request arrived."""
        with self._cond:
            self._in_flight -= 1
            self._done.append(time.monotonic())
            self._cond.notify_all()


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
