"""Sandbox lifecycle: a store file is reused on restart; the injectable clock moves "now" for the API."""

from __future__ import annotations

import datetime as dt

import requests

from klaviyo_sandbox import Sandbox

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def test_store_file_is_reused(tmp_path):
    path = str(tmp_path / "sandbox.duckdb")
    with Sandbox(seed=4, accounts=2, profiles=30, events=120, rate_limits=False, store_path=path, now=NOW) as first:
        keys = [a.api_key for a in first.accounts]
        profile = first.store.insert(first.account.id, "profile", {"email": "kept@example.com"})
    with Sandbox(seed=99, accounts=1, profiles=5, events=5, rate_limits=False, store_path=path, now=NOW) as again:
        assert [a.api_key for a in again.accounts] == keys  # loaded, not regenerated
        assert again.store.count(again.account.id, "event") == 120
        response = requests.get(f"{again.base_url}/api/profiles/{profile}", headers=again.headers(), timeout=10)
        assert response.status_code == 200 and response.json()["data"]["attributes"]["email"] == "kept@example.com"
        assert again.store.insert(again.account.id, "profile", {"email": "new@example.com"})  # seq continues


def test_clock_moves_the_future_boundary():
    with Sandbox(seed=4, profiles=20, events=50, rate_limits=False, now=NOW) as sb:
        later = (NOW + dt.timedelta(hours=2)).isoformat()
        url = f"{sb.base_url}/api/events"
        params = {"filter": f"greater-than(datetime,{later})"}
        assert requests.get(url, headers=sb.headers(), params=params, timeout=10).status_code == 400
        sb.clock.advance(3 * 3600)
        response = requests.get(url, headers=sb.headers(), params=params, timeout=10)
        assert response.status_code == 200 and response.json()["data"] == []
        new = sb.store.insert(sb.account.id, "profile", {"email": "late@example.com"})
        assert sb.store.get(sb.account.id, "profile", new).attributes["created"] == (NOW + dt.timedelta(hours=3)).isoformat()
