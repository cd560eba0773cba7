"""Injected faults: 5xx, 429 storms, dropped connections (incomplete reads), slow answers; deterministic by seed."""

from __future__ import annotations

import time

import pytest
import requests

from klaviyo_sandbox import Sandbox
from klaviyo_sandbox.faults import Faults


@pytest.fixture(scope="module")
def faulty():
    with Sandbox(seed=5, profiles=60, events=600, rate_limits=False) as sb:
        yield sb


def _get(sb, path="/api/events", **params):
    return requests.get(sb.base_url + path, headers=sb.headers(), params=params, timeout=10)


def test_server_error(faulty):
    faulty.set_faults({"rules": [{"match": "get_events", "kind": "error", "status": 503, "times": 2}]})
    try:
        assert [_get(faulty).status_code for _ in range(3)] == [503, 503, 200]
        assert _get(faulty, "/api/profiles").status_code == 200
    finally:
        faulty.set_faults(None)


def test_error_body_is_jsonapi(faulty):
    faulty.set_faults({"GET /api/profiles": {"status": 500, "times": 1}})
    try:
        response = _get(faulty, "/api/profiles")
        assert response.status_code == 500
        assert response.json()["errors"][0]["status"] == 500
    finally:
        faulty.set_faults(None)


def test_throttle_storm(faulty):
    faulty.set_faults({"rules": [{"match": "/api/metrics", "kind": "throttle", "retry_after": 2, "times": 3}]})
    try:
        responses = [_get(faulty, "/api/metrics") for _ in range(4)]
        assert [r.status_code for r in responses] == [429, 429, 429, 200]
        assert responses[0].headers["Retry-After"] == "2"
        assert responses[0].json()["errors"][0]["code"] == "throttled"
    finally:
        faulty.set_faults(None)


def test_dropped_connection_is_an_incomplete_read(faulty):
    faulty.set_faults({"rules": [{"match": "get_events", "kind": "drop", "times": 1}]})
    try:
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
            _get(faulty, **{"page[size]": "500"})
        assert _get(faulty).status_code == 200  # the next request is served normally
    finally:
        faulty.set_faults(None)


def test_slow_response(faulty):
    faulty.set_faults({"rules": [{"match": "get_metrics", "kind": "slow", "delay": 0.4, "times": 1}]})
    try:
        started = time.perf_counter()
        assert _get(faulty, "/api/metrics").status_code == 200
        assert time.perf_counter() - started >= 0.4
    finally:
        faulty.set_faults(None)


def test_rate_is_deterministic_by_seed():
    def pattern(seed):
        faults = Faults({"seed": seed, "rules": [{"match": "*", "kind": "error", "rate": 0.3}]})
        return [faults.decide("get_events", "/api/events", "/api/events") is not None for _ in range(200)]

    assert pattern(1) == pattern(1)
    assert pattern(1) != pattern(2)
    assert 30 < sum(pattern(1)) < 90


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        Faults({"rules": [{"match": "*", "kind": "explode"}]})
    with pytest.raises(ValueError):
        Faults("/no/such/file.json")


def test_config_from_file(tmp_path):
    path = tmp_path / "faults.json"
    path.write_text('{"rules": [{"match": "get_profiles", "kind": "error", "status": 502}]}')
    faults = Faults(str(path))
    assert faults.decide("get_profiles", "/api/profiles", "/api/profiles").status == 502
    assert faults.decide("get_events", "/api/events", "/api/events") is None
