"""Sandbox fixtures: one shared, read-only sandbox per session plus a small HTTP helper."""

from __future__ import annotations

import datetime as dt

import pytest
import requests

from klaviyo_sandbox import REVISION, Sandbox

# A fixed "now" keeps the generated data identical run to run.
NOW = dt.datetime(2026, 7, 20, 12, 0, 0, tzinfo=dt.timezone.utc)


class Api:
    """GET helper bound to one sandbox account (real HTTP via requests)."""

    def __init__(self, sandbox: Sandbox, account: int = 0):
        self.sandbox = sandbox
        self.session = requests.Session()
        self.session.headers.update(sandbox.headers(account))
        self.account = sandbox.accounts[account].id

    def get(self, path: str, **params) -> requests.Response:
        url = path if path.startswith("http") else self.sandbox.base_url + path
        return self.session.get(url, params=params or None, timeout=30)

    def ok(self, path: str, **params) -> dict:
        response = self.get(path, **params)
        assert response.status_code == 200, (path, params, response.status_code, response.text[:500])
        return response.json()

    def error(self, path: str, status: int = 400, **params) -> dict:
        response = self.get(path, **params)
        assert response.status_code == status, (path, params, response.status_code, response.text[:500])
        body = response.json()
        assert set(body) == {"errors"} and body["errors"], body
        return body["errors"][0]

    def all_pages(self, path: str, **params) -> list[dict]:
        """Follow links.next to the end; returns every data item."""
        items, body = [], self.ok(path, **params)
        items += body["data"]
        seen = 1
        while body["links"].get("next"):
            response = self.get(body["links"]["next"])
            assert response.status_code == 200, response.text[:300]
            body = response.json()
            items += body["data"]
            seen += 1
            assert seen < 10_000
        return items


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox(seed=7, accounts=2, profiles=400, events=5000, rate_limits=False, now=NOW) as sb:
        yield sb


@pytest.fixture(scope="session")
def api(sandbox) -> Api:
    return Api(sandbox)


@pytest.fixture
def revision() -> str:
    return REVISION


@pytest.fixture(scope="session")
def sandbox_now() -> dt.datetime:
    """The frozen "now" of the shared sandbox."""
    return NOW


@pytest.fixture(scope="session")
def make_api():
    """Build an :class:`Api` for ``(sandbox, account_index)``."""
    return Api
