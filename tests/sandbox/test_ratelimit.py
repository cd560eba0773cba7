"""Rate limits from the spec: burst exhaustion gives 429 + Retry-After; headers on every answer."""

from __future__ import annotations

import time

import pytest
import requests

from klaviyo_sandbox import Sandbox
from klaviyo_sandbox.ratelimit import RateLimiter
from klaviyo_sandbox.spec import load_spec


@pytest.fixture(scope="module")
def limited():
    with Sandbox(seed=3, profiles=50, events=200, rate_limits=True, rate_limit_scale=0.2) as sb:
        yield sb


def test_burst_gives_429_with_retry_after(limited):
    op = load_spec().operation("GET", "/api/accounts")  # burst 1/s, steady 15/m
    assert op.rate_limit.burst_per_second == 1
    session = requests.Session()
    session.headers.update(limited.headers())
    statuses, throttled = [], None
    for _ in range(5):
        response = session.get(limited.base_url + "/api/accounts", timeout=10)
        statuses.append(response.status_code)
        if response.status_code == 429:
            throttled = response
            break
    assert throttled is not None, statuses
    assert int(throttled.headers["Retry-After"]) >= 1
    error = throttled.json()["errors"][0]
    assert error["code"] == "throttled" and error["status"] == 429
    assert throttled.headers["RateLimit-Remaining"] == "0" and throttled.headers["RateLimit-Limit"].startswith("1, 1;w=1")
    time.sleep(0.25)  # one scaled burst window (1 s x 0.2)
    assert session.get(limited.base_url + "/api/accounts", timeout=10).status_code == 200


def test_headers_count_down(limited):
    session = requests.Session()
    session.headers.update(limited.headers())
    first = session.get(limited.base_url + "/api/profiles", timeout=10)
    assert first.status_code == 200
    assert first.headers["RateLimit-Limit"].startswith("75, 75;w=1, 750;w=60")
    assert int(first.headers["RateLimit-Remaining"]) < 75


def test_limits_are_per_account(limited):
    limiter = RateLimiter(enabled=True, scale=1.0, clock=lambda: 1000.0)
    op = load_spec().operation("GET", "/api/accounts")
    limiter.hit("A", op, {})
    with pytest.raises(Exception):
        limiter.hit("A", op, {})
    limiter.hit("B", op, {})  # another account has its own bucket


def test_extra_bucket_for_predictive_analytics():
    op = load_spec().operation("GET", "/api/profiles")
    name, limit = RateLimiter.bucket(op, {"additional-fields[profile]": "predictive_analytics"})
    assert "predictive_analytics" in name and limit.burst_per_second == 10
    assert RateLimiter.bucket(op, {})[1].burst_per_second == 75


def test_steady_window(limited):
    clock = [0.0]
    limiter = RateLimiter(enabled=True, scale=1.0, clock=lambda: clock[0])
    op = load_spec().operation("GET", "/api/accounts")
    for n in range(15):
        clock[0] = n * 1.5  # one per burst window, 15 within the minute
        limiter.hit("A", op, {})
    clock[0] = 23.0
    with pytest.raises(Exception) as info:
        limiter.hit("A", op, {})
    assert info.value.status == 429 and int(info.value.headers["Retry-After"]) == 37
    clock[0] = 60.5
    limiter.hit("A", op, {})


def test_switch_off_at_runtime(limited):
    limited.set_rate_limits(enabled=False)
    try:
        session = requests.Session()
        session.headers.update(limited.headers())
        assert all(session.get(limited.base_url + "/api/accounts", timeout=10).status_code == 200 for _ in range(4))
    finally:
        limited.set_rate_limits(enabled=True)
