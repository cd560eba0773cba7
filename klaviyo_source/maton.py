"""Client for Maton's connection management API (``https://ctrl.maton.ai/connections``).

Maton keeps one OAuth connection per Klaviyo account and proxies the Klaviyo API through its
gateway (``https://gateway.maton.ai/klaviyo/...``) with the ``Maton-Connection`` header picking
the account.  This client lists, creates, reads and deletes those connections.  The base URL is
configurable so tests (and ``klaviyo-dlt connections --ctrl-url``) point it at the sandbox,
which serves ``/connections`` itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import requests

from klaviyo_source.keys import clean_key

DEFAULT_CTRL_URL = "https://ctrl.maton.ai"
DEFAULT_GATEWAY_URL = "https://gateway.maton.ai"
MATON_API_KEY_ENV = "MATON_API_KEY"
MATON_CTRL_URL_ENV = "MATON_CTRL_URL"
APP = "klaviyo"


class MatonError(Exception):
    """A connection-management call failed; ``status`` is the HTTP status (None: no response)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MatonAuthError(MatonError):
    """The Maton API key was missing or rejected (HTTP 401/403)."""


@dataclass(frozen=True)
class Connection:
    """One Maton connection as returned by ``/connections``."""

    connection_id: str
    status: str
    app: str
    creation_time: str | None = None
    last_updated_time: str | None = None
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Connection":
        return cls(
            connection_id=body["connection_id"],
            status=body.get("status", ""),
            app=body.get("app", ""),
            creation_time=body.get("creation_time"),
            last_updated_time=body.get("last_updated_time"),
            url=body.get("url"),
            metadata=body.get("metadata") or {},
        )


class MatonClient:
    """Connection management (``/connections``) with a Maton API key (``Authorization: Bearer``)."""

    def __init__(self, api_key: str | None = None, ctrl_url: str | None = None, timeout: float = 30.0) -> None:
        api_key = clean_key(api_key) or clean_key(os.environ.get(MATON_API_KEY_ENV))
        if not api_key:
            raise MatonAuthError(f"Maton API key missing: set {MATON_API_KEY_ENV} or pass --maton-api-key")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self.ctrl_url = (ctrl_url or os.environ.get(MATON_CTRL_URL_ENV) or DEFAULT_CTRL_URL).rstrip("/")
        self.timeout = timeout

    def list(self, app: str | None = APP, status: str | None = None) -> list[Connection]:
        """Connections, optionally filtered by ``app`` and ``status`` (e.g. ``ACTIVE``)."""
        params = {k: v for k, v in {"app": app, "status": status}.items() if v}
        body = self._call("GET", "/connections", params=params)
        return [Connection.from_json(c) for c in body.get("connections", [])]

    def create(self, app: str = APP) -> Connection:
        """A new PENDING connection; open its ``url`` in a browser to authorise it."""
        return Connection.from_json(self._call("POST", "/connections", json={"app": app})["connection"])

    def get(self, connection_id: str) -> Connection:
        return Connection.from_json(self._call("GET", f"/connections/{connection_id}")["connection"])

    def delete(self, connection_id: str) -> None:
        self._call("DELETE", f"/connections/{connection_id}")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.ctrl_url + path
        try:
            response = self._session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise MatonError(f"cannot reach Maton at {self.ctrl_url}: {type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise MatonAuthError(
                f"Maton rejected the API key (HTTP {response.status_code}); check {MATON_API_KEY_ENV}",
                response.status_code,
            )
        if response.status_code >= 400:
            raise MatonError(f"{method} {path} failed: HTTP {response.status_code} {_error_text(response)}",
                             response.status_code)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise MatonError(f"{method} {path}: response is not JSON", response.status_code) from None


def _error_text(response: requests.Response) -> str:
    """The server's error message, shortened to one line."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, str):
                return value[:200]
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"][:200]
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("detail") or errors[0].get("title") or "")[:200]
    return ""
