"""The sandbox control API (``/_sandbox/...``): test controls that change the world between runs.

Plain JSON over HTTP (no ``revision`` header, no rate limits, no faults).  Authenticate with an
account's credentials — ``Authorization: Klaviyo-API-Key <private key>`` (or ``Bearer <oauth
token>``); the key also selects the account acted on.  Errors are ``{"error": "..."}`` with a
4xx status.  The Python side is :class:`~klaviyo_sandbox.control_client.ControlClient`
(``sb.control``).

=======  ======================================  =============================================
GET      /_sandbox/account                       ``{"id": account id}``
GET      /_sandbox/records/{type}                ground truth: every record of a type
GET      /_sandbox/records/{type}/{id}           one record (404 when absent)
POST     /_sandbox/records/{type}                insert ``{"attributes", "relationships", "id"?}``
PATCH    /_sandbox/records/{type}/{id}           merge ``{"attributes", "touch"=true}`` (bumps updated)
DELETE   /_sandbox/records/{type}/{id}           delete any resource (and its memberships/links)
POST     /_sandbox/events                        insert an event, possibly backdated
GET      /_sandbox/members/{list|segment}/{id}   members with joined_at
POST     /_sandbox/members/{list|segment}/{id}   add ``{"profile_ids", "joined_at"?}``
DELETE   /_sandbox/members/{list|segment}/{id}   remove ``{"profile_ids"}``
POST     /_sandbox/jobs/complete                 finish every pending bulk import job
PUT      /_sandbox/faults                        ``{"faults": config}`` (see ``faults.py``)
PUT      /_sandbox/rate-limits                   ``{"enabled"?, "scale"?}``
GET/PUT  /_sandbox/clock                         ``{"now": iso | null}`` or ``{"advance_seconds": n}``
GET/POST /_sandbox/maton/connections             list (with account ids) / create
POST     /_sandbox/maton/connections/{id}/authorize | revoke
=======  ======================================  =============================================
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Callable

import orjson
from werkzeug.wrappers import Request, Response

from .control_client import ControlClient
from .errors import ApiError
from .ingest import metric_id_for, record_event
from .store import KINDS, parse_iso

PREFIX = "/_sandbox"


class ControlProblem(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, default=str), status=status, content_type="application/json")


def _record(record: Any) -> dict[str, Any]:
    return {"type": record.type, "id": record.id, "attributes": record.attributes,
            "relationships": record.relationships, "inserted_at": record.inserted_at.isoformat()}


def _kind(type_: str) -> str:
    if type_ not in KINDS:
        raise ControlProblem(404, f"unknown resource type {type_!r}; known: {', '.join(sorted(KINDS))}")
    return type_


def _when(value: Any, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = parse_iso(value)
    except (TypeError, ValueError):
        raise ControlProblem(400, f"{name} must be an ISO 8601 datetime, got {value!r}") from None
    return parsed


class ControlApp:
    """WSGI app behind ``/_sandbox`` for one sandbox."""

    def __init__(self, sandbox: Any):
        self.sandbox = sandbox
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = []
        for method, pattern, handler in [
            ("GET", r"/account", self.account),
            ("GET", r"/records/(?P<type_>[\w-]+)", self.list_records),
            ("POST", r"/records/(?P<type_>[\w-]+)", self.insert_record),
            ("GET", r"/records/(?P<type_>[\w-]+)/(?P<id_>[^/]+)", self.get_record),
            ("PATCH", r"/records/(?P<type_>[\w-]+)/(?P<id_>[^/]+)", self.update_record),
            ("DELETE", r"/records/(?P<type_>[\w-]+)/(?P<id_>[^/]+)", self.delete_record),
            ("POST", r"/events", self.insert_event),
            ("GET", r"/members/(?P<group>list|segment)/(?P<id_>[^/]+)", self.members),
            ("POST", r"/members/(?P<group>list|segment)/(?P<id_>[^/]+)", self.add_members),
            ("DELETE", r"/members/(?P<group>list|segment)/(?P<id_>[^/]+)", self.remove_members),
            ("POST", r"/jobs/complete", self.complete_jobs),
            ("PUT", r"/faults", self.set_faults),
            ("PUT", r"/rate-limits", self.set_rate_limits),
            ("GET", r"/clock", self.get_clock),
            ("PUT", r"/clock", self.set_clock),
            ("GET", r"/maton/connections", self.connections),
            ("POST", r"/maton/connections", self.create_connection),
            ("POST", r"/maton/connections/(?P<id_>[^/]+)/authorize", self.authorize_connection),
            ("POST", r"/maton/connections/(?P<id_>[^/]+)/revoke", self.revoke_connection),
        ]:
            self.routes.append((method, re.compile("^" + pattern + "$"), handler))

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        try:
            account = self.sandbox.credentials.authenticate(request.headers.get("Authorization"))
            path = request.path[len(PREFIX):].rstrip("/") or "/"
            allowed = []
            for method, pattern, handler in self.routes:
                found = pattern.match(path)
                if found:
                    allowed.append(method)
                    if method == request.method:
                        response = handler(request, account, **found.groupdict())
                        break
            else:
                status = 405 if allowed else 404
                raise ControlProblem(status, f"{request.method} {request.path} is not a control endpoint"
                                     + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        except ApiError as error:
            response = _json({"error": error.detail}, error.status)
        except ControlProblem as problem:
            response = _json({"error": str(problem)}, problem.status)
        except (KeyError, ValueError, TypeError) as exc:
            response = _json({"error": f"{type(exc).__name__}: {exc}"}, 400)
        return response(environ, start_response)

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        raw = request.get_data()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ControlProblem(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ControlProblem(400, "body must be a JSON object")
        return body

    @property
    def store(self):
        return self.sandbox.store

    # -- ground truth and records ---------------------------------------------------------------
    def account(self, request: Request, account: str) -> Response:
        return _json({"id": account})

    def list_records(self, request: Request, account: str, type_: str) -> Response:
        return _json({"data": [_record(r) for r in self.store.all(account, _kind(type_))]})

    def get_record(self, request: Request, account: str, type_: str, id_: str) -> Response:
        record = self.store.get(account, _kind(type_), id_)
        if record is None:
            raise ControlProblem(404, f"{type_} {id_} does not exist")
        return _json({"data": _record(record)})

    def insert_record(self, request: Request, account: str, type_: str) -> Response:
        body = self._body(request)
        new_id = self.store.insert(account, _kind(type_), body.get("attributes") or {},
                                   relationships=body.get("relationships") or None, id=body.get("id") or None)
        return _json({"data": _record(self.store.get(account, type_, new_id))}, 201)

    def update_record(self, request: Request, account: str, type_: str, id_: str) -> Response:
        body = self._body(request)
        try:
            record = self.store.update(account, _kind(type_), id_, body.get("attributes") or {},
                                       relationships=body.get("relationships") or None, touch=body.get("touch", True))
        except KeyError:
            raise ControlProblem(404, f"{type_} {id_} does not exist") from None
        return _json({"data": _record(record)})

    def delete_record(self, request: Request, account: str, type_: str, id_: str) -> Response:
        existed = self.store.delete(account, _kind(type_), id_)
        if type_ == "campaign":  # a deleted campaign takes its messages along
            for message in self.store.all(account, "campaign-message"):
                if message.relationships.get("campaign") == id_:
                    self.store.delete(account, "campaign-message", message.id)
        return _json({"deleted": existed}, 200 if existed else 404)

    def insert_event(self, request: Request, account: str) -> Response:
        body = self._body(request)
        profile_id = body.get("profile_id")
        if not profile_id or not self.store.exists(account, "profile", profile_id):
            raise ControlProblem(404, f"profile {profile_id!r} does not exist")
        metric = body.get("metric")
        if not metric:
            raise ControlProblem(400, "metric (a name or an existing metric id) is required")
        metric_id = metric if self.store.exists(account, "metric", metric) else metric_id_for(self.store, account, metric)
        when = _when(body.get("datetime"), "datetime") or self.store.now()
        attrs = {"time": when.isoformat(), "properties": body.get("properties") or {}, "value": body.get("value"),
                 "unique_id": body.get("unique_id")}
        event_id = record_event(self.store, account, profile_id, metric_id, attrs)
        if event_id is None:
            raise ControlProblem(409, f"an event with unique_id {body.get('unique_id')!r} already exists")
        return _json({"data": _record(self.store.get(account, "event", event_id))}, 201)

    # -- memberships ------------------------------------------------------------------------------
    def _group(self, account: str, group: str, id_: str) -> None:
        if not self.store.exists(account, group, id_):
            raise ControlProblem(404, f"{group} {id_} does not exist")

    def members(self, request: Request, account: str, group: str, id_: str) -> Response:
        self._group(account, group, id_)
        return _json({"data": [{"profile_id": p, "joined_at": j.isoformat()} for p, j in self.store.members(account, group, id_)]})

    def add_members(self, request: Request, account: str, group: str, id_: str) -> Response:
        self._group(account, group, id_)
        body = self._body(request)
        ids = list(body.get("profile_ids") or [])
        missing = [p for p in ids if not self.store.exists(account, "profile", p)]
        if missing:
            raise ControlProblem(404, f"profiles do not exist: {', '.join(missing[:5])}")
        changed = self.store.add_members(account, group, id_, ids, _when(body.get("joined_at"), "joined_at"))
        return _json({"changed": changed})

    def remove_members(self, request: Request, account: str, group: str, id_: str) -> Response:
        self._group(account, group, id_)
        changed = self.store.remove_members(account, group, id_, list(self._body(request).get("profile_ids") or []))
        return _json({"changed": changed})

    def complete_jobs(self, request: Request, account: str) -> Response:
        jobs = getattr(self.sandbox, "import_jobs", None)
        return _json({"completed": jobs.complete_all() if jobs is not None else 0})

    # -- behaviour --------------------------------------------------------------------------------
    def set_faults(self, request: Request, account: str) -> Response:
        self.sandbox.set_faults(self._body(request).get("faults") or None)
        return _json({"rules": self.sandbox.faults.describe()})

    def set_rate_limits(self, request: Request, account: str) -> Response:
        body = self._body(request)
        scale = body.get("scale")
        if scale is not None and (not isinstance(scale, (int, float)) or scale <= 0):
            raise ControlProblem(400, f"scale must be a positive number, got {scale!r}")
        self.sandbox.set_rate_limits(body.get("enabled"), scale)
        limiter = self.sandbox.rate_limiter
        return _json({"enabled": limiter.enabled, "scale": limiter.scale})

    def get_clock(self, request: Request, account: str) -> Response:
        return _json({"now": self.store.now().isoformat()})

    def set_clock(self, request: Request, account: str) -> Response:
        body = self._body(request)
        if body.get("advance_seconds") is not None:
            self.store.clock.advance(float(body["advance_seconds"]))
        else:
            self.store.clock.set(_when(body.get("now"), "now"))
        return _json({"now": self.store.now().isoformat()})

    # -- Maton connections --------------------------------------------------------------------------
    def _registry(self):
        registry = getattr(self.sandbox, "maton", None)
        if registry is None:
            raise ControlProblem(404, "the Maton gateway is not attached to this sandbox")
        return registry

    @staticmethod
    def _connection(conn: Any) -> dict[str, Any]:
        return {**conn.as_json(), "account_id": conn.account_id}

    def _account_id(self, wanted: Any, default: str) -> str:
        known = {a.id for a in self.sandbox.accounts}
        account_id = wanted or default
        if account_id not in known:
            raise ControlProblem(404, f"account {account_id!r} is not an account of this sandbox")
        return account_id

    def connections(self, request: Request, account: str) -> Response:
        return _json({"connections": [self._connection(c) for c in self._registry().list()]})

    def create_connection(self, request: Request, account: str) -> Response:
        body = self._body(request)
        registry = self._registry()
        conn = registry.create(body.get("app") or "klaviyo")
        if body.get("status", "PENDING") != "PENDING":
            conn = registry.set_status(conn.connection_id, body["status"], self._account_id(body.get("account_id"), account))
        return _json({"connection": self._connection(conn)}, 201)

    def authorize_connection(self, request: Request, account: str, id_: str) -> Response:
        account_id = self._account_id(self._body(request).get("account_id"), account)
        try:
            conn = self._registry().set_status(id_, "ACTIVE", account_id)
        except KeyError:
            raise ControlProblem(404, f"connection {id_} does not exist") from None
        return _json({"connection": self._connection(conn)})

    def revoke_connection(self, request: Request, account: str, id_: str) -> Response:
        try:
            conn = self._registry().set_status(id_, "FAILED")
        except KeyError:
            raise ControlProblem(404, f"connection {id_} does not exist") from None
        return _json({"connection": self._connection(conn)})


class _LazyControl(ControlClient):
    """``sb.control`` before the sandbox is started: resolves ``base_url`` on first use."""

    def __init__(self, sandbox: Any):
        self._sandbox = sandbox
        super().__init__("http://unstarted", sandbox.api_key)

    @property  # type: ignore[override]
    def base_url(self) -> str:
        return self._sandbox.base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        pass


def attach(sandbox: Any) -> None:
    """Mount the control API on ``sandbox.app`` and set ``sandbox.control`` (a :class:`ControlClient`)."""
    sandbox.app.mount(PREFIX, ControlApp(sandbox))
    sandbox.control = _LazyControl(sandbox)


__all__ = ["ControlApp", "ControlClient", "attach"]
