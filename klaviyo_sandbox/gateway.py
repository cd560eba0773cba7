"""The Maton gateway shape: the Klaviyo API under ``/klaviyo/`` plus Maton's connection management.

Real Maton serves ``https://gateway.maton.ai/klaviyo/{native-api-path}`` and manages OAuth
connections at ``https://ctrl.maton.ai/connections``; the sandbox serves both on one port:

* ``/klaviyo/api/...`` — authorised by ``Authorization: Bearer <MATON_API_KEY>``; the
  ``Maton-Connection`` header picks one connected Klaviyo account (default: the oldest ACTIVE
  klaviyo connection).  The request runs through the sandbox's own ``/api/...`` pipeline for the
  connection's account (as Maton injects that account's OAuth token), so Klaviyo's answers
  (errors, 429s, rate-limit headers, ``links``) pass through unchanged.  As with real Maton,
  ``links.next`` point at the native API (``{base_url}/api/...``), not back through the gateway.
* ``/connections`` (GET list with ``app``/``status`` filters, POST create) and
  ``/connections/{id}`` (GET, DELETE) — bodies ``{"connections": [...]}`` / ``{"connection": {...}}``.
  A created connection is PENDING with a ``url`` to open for OAuth; the control API
  (``POST /_sandbox/maton/connections/{id}/authorize``) plays the browser step and makes it ACTIVE.

The gateway's own errors: 401 for a missing/invalid Maton key, 400 when no usable Klaviyo
connection exists (none ACTIVE, unknown id, or not ACTIVE).  Their body is
``{"error": {"status": ..., "message": ...}}`` (Maton's, not Klaviyo's JSON:API errors).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import orjson
from werkzeug.wrappers import Request, Response

GATEWAY_PREFIX = "/klaviyo"
CONNECTIONS_PATH = "/connections"
APP = "klaviyo"
STATUSES = ("ACTIVE", "PENDING", "FAILED")
CONNECT_URL = "https://connect.maton.ai/?session_token={token}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Connection:
    """One Maton OAuth connection; ``account_id`` is the sandbox Klaviyo account it reaches once ACTIVE."""

    connection_id: str
    app: str
    status: str
    creation_time: datetime
    last_updated_time: datetime
    session_token: str
    account_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id,
            "status": self.status,
            "creation_time": _iso(self.creation_time),
            "last_updated_time": _iso(self.last_updated_time),
            "url": CONNECT_URL.format(token=self.session_token),
            "app": self.app,
            "metadata": dict(self.metadata),
        }


class ConnectionRegistry:
    """Thread-safe Maton connections of the sandbox's one Maton user."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, Connection] = {}

    def add_active(self, account_id: str, connection_id: str | None = None, created: datetime | None = None) -> Connection:
        """Register an already-authorised klaviyo connection to ``account_id`` (used at sandbox start)."""
        with self._lock:
            moment = created or self._next_time()
            conn = Connection(
                connection_id=connection_id or str(uuid.uuid4()), app=APP, status="ACTIVE",
                creation_time=moment, last_updated_time=moment,
                session_token=secrets.token_hex(16), account_id=account_id,
            )
            self._connections[conn.connection_id] = conn
            return conn

    def _next_time(self) -> datetime:
        # creation times strictly increase so "oldest" is well defined even within one clock tick
        latest = max((c.creation_time for c in self._connections.values()), default=None)
        moment = _now()
        return moment if latest is None or moment > latest else latest + timedelta(microseconds=1)

    def create(self, app: str) -> Connection:
        """A new PENDING connection (``POST /connections``)."""
        with self._lock:
            moment = self._next_time()
            conn = Connection(str(uuid.uuid4()), app, "PENDING", moment, moment, secrets.token_hex(16))
            self._connections[conn.connection_id] = conn
            return conn

    def get(self, connection_id: str) -> Connection | None:
        with self._lock:
            return self._connections.get(connection_id)

    def list(self, app: str | None = None, status: str | None = None) -> list[Connection]:
        with self._lock:
            found = [c for c in self._connections.values()
                     if (app is None or c.app == app) and (status is None or c.status == status)]
        return sorted(found, key=lambda c: c.creation_time)

    def delete(self, connection_id: str) -> Connection | None:
        with self._lock:
            return self._connections.pop(connection_id, None)

    def set_status(self, connection_id: str, status: str, account_id: str | None = None) -> Connection:
        """Change a connection's status (control API: authorise → ACTIVE, revoke → FAILED)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        with self._lock:
            conn = self._connections.get(connection_id)
            if conn is None:
                raise KeyError(connection_id)
            if account_id is not None:
                conn.account_id = account_id
            if status == "ACTIVE" and conn.account_id is None:
                raise ValueError("an ACTIVE connection needs the account it reaches (account_id)")
            conn.status = status
            conn.last_updated_time = max(_now(), conn.last_updated_time + timedelta(microseconds=1))
            return conn

    def resolve(self, connection_id: str | None) -> Connection | None:
        """The ACTIVE klaviyo connection to use: the named one, or the oldest ACTIVE one."""
        if connection_id:
            conn = self.get(connection_id)
            return conn if conn and conn.app == APP and conn.status == "ACTIVE" else None
        active = self.list(app=APP, status="ACTIVE")
        return active[0] if active else None


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": {"status": status, "message": message}}), status=status,
                    content_type="application/json")


class MatonGateway:
    """WSGI app serving ``/klaviyo/...`` and ``/connections...`` (mounted on the sandbox app by :func:`attach`).

    ``api`` is the sandbox's API pipeline (``SandboxApp.api``); the gateway hands it requests for
    an account it has already authorised via ``environ["klaviyo_sandbox.account"]``.
    """

    def __init__(self, api: Callable, maton_api_key: str, registry: ConnectionRegistry):
        self.api = api
        self.maton_api_key = maton_api_key
        self.registry = registry

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(GATEWAY_PREFIX + "/"):
            return self._proxy(environ, start_response)
        if path == CONNECTIONS_PATH or path.startswith(CONNECTIONS_PATH + "/"):
            return self._connections(Request(environ))(environ, start_response)
        return _error(404, f"Unknown path {path}")(environ, start_response)

    def _authorised(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and bool(token) and hmac.compare_digest(
            token.strip().encode(), self.maton_api_key.encode())

    def _proxy(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if not self._authorised(environ.get("HTTP_AUTHORIZATION")):
            return _error(401, "Invalid or missing Maton API key")(environ, start_response)
        wanted = (environ.get("HTTP_MATON_CONNECTION") or "").strip() or None
        conn = self.registry.resolve(wanted)
        if conn is None:
            message = (f"Connection {wanted} is not an active klaviyo connection" if wanted
                       else "No active klaviyo connection; create one at /connections and authorise it")
            return _error(400, message)(environ, start_response)
        inner = dict(environ)
        inner["PATH_INFO"] = environ["PATH_INFO"][len(GATEWAY_PREFIX):]
        inner.pop("HTTP_AUTHORIZATION", None)  # the Maton key never reaches the API layer
        inner.pop("HTTP_MATON_CONNECTION", None)
        inner["klaviyo_sandbox.account"] = conn.account_id
        inner["klaviyo_sandbox.via_gateway"] = conn.connection_id
        return self.api(inner, start_response)

    def _connections(self, request: Request) -> Response:
        if not self._authorised(request.headers.get("Authorization")):
            return _error(401, "Invalid or missing Maton API key")
        rest = request.path[len(CONNECTIONS_PATH):].strip("/")
        if not rest:
            if request.method == "GET":
                status = request.args.get("status")
                if status is not None and status not in STATUSES:
                    return _error(400, f"status must be one of {', '.join(STATUSES)}")
                found = self.registry.list(app=request.args.get("app"), status=status)
                return _json({"connections": [c.as_json() for c in found]})
            if request.method == "POST":
                payload = request.get_json(silent=True)
                app = payload.get("app") if isinstance(payload, dict) else None
                if not isinstance(app, str) or not app:
                    return _error(400, 'Body must be JSON like {"app": "klaviyo"}')
                return _json({"connection": self.registry.create(app).as_json()})
            return _error(405, f"{request.method} not allowed on /connections")
        if "/" in rest:
            return _error(404, f"Unknown path {request.path}")
        if request.method == "GET":
            conn = self.registry.get(rest)
            return _json({"connection": conn.as_json()}) if conn else _error(404, f"Connection {rest} not found")
        if request.method == "DELETE":
            conn = self.registry.delete(rest)
            return _json({"connection": conn.as_json()}) if conn else _error(404, f"Connection {rest} not found")
        return _error(405, f"{request.method} not allowed on /connections/{{id}}")


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json")


def attach(sandbox: Any) -> None:
    """Serve the gateway on a sandbox: one ACTIVE connection per account, oldest first (account 0 = default)."""
    registry = ConnectionRegistry()
    base = sandbox.store.now() - timedelta(days=len(sandbox.accounts) + 30)
    for index, account in enumerate(sandbox.accounts):
        registry.add_active(account.id, account.maton_connection_id, created=base + timedelta(days=index))
    gateway = MatonGateway(lambda environ, start_response: sandbox.app.api(environ, start_response),
                           sandbox.maton_api_key, registry)
    sandbox.app.mount(GATEWAY_PREFIX, gateway)
    sandbox.app.mount(CONNECTIONS_PATH, gateway)
    sandbox.maton = registry
