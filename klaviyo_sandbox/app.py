"""The sandbox WSGI application: routing by spec path, auth, revision, rate limits, faults, errors.

Routing is keyed by the spec's path template, so any module can add endpoints::

    app.route("POST", "/api/profiles", create_profile)      # handler(ctx) -> werkzeug Response
    app.mount("/_sandbox", control_wsgi_app)                # non-API prefixes (control API, gateway)

Every request under ``/api/`` runs the same pipeline: spec match (404 if the spec has no
such path) -> authentication (401) -> ``revision`` header (400) -> rate limit (429) ->
fault injection -> handler.  Handlers raise :class:`~klaviyo_sandbox.errors.ApiError`
for 4xx answers; any other exception becomes a logged 500 with Klaviyo's error body.

A front end (the Maton gateway) can run the pipeline for an account it already
authenticated by setting ``environ["klaviyo_sandbox.account"]`` and, for links that
point back through it, ``environ["klaviyo_sandbox.link_base"]`` (e.g.
``http://127.0.0.1:5000/klaviyo``), then calling :meth:`SandboxApp.api`.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from .auth import Credentials
from .errors import ApiError, invalid, not_found, server_error, throttled
from .faults import Faults
from .httpserver import CLOSE_AFTER_RESPONSE, SOCKET
from .ratelimit import RateLimiter
from .spec import Operation, Spec, load_spec
from .store import Store

log = logging.getLogger("klaviyo_sandbox")
JSONAPI = "application/vnd.api+json"
_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[A-Za-z0-9_-]+)?$")


@dataclass
class RequestContext:
    """Everything a handler needs about one API request."""

    request: Request
    op: Operation
    path_params: dict[str, str]
    account: str
    app: "SandboxApp"
    link_base: str
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (rate limits)

    @property
    def store(self) -> Store:
        return self.app.store

    @property
    def spec(self) -> Spec:
        return self.app.spec

    @property
    def args(self) -> MultiDict:
        return self.request.args

    def now(self):
        return self.app.store.now()

    def json_body(self) -> Any:
        """The parsed request body; 400 when it is not JSON."""
        raw = self.request.get_data(cache=True)
        if not raw:
            raise invalid("The request body is empty; send a JSON:API document.", pointer="/data")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"The request body is not valid JSON: {exc}.", pointer="/data") from None

    def respond(self, body: bytes | dict | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON:API response (``body`` as bytes or a dict; None -> empty body, e.g. 202/204)."""
        if isinstance(body, dict):
            body = orjson.dumps(body)
        response = Response(body or b"", status=status, content_type=JSONAPI if body else None)
        for key, value in {**self.headers, **(headers or {})}.items():
            response.headers[key] = value
        return response


Handler = Callable[[RequestContext], Response]


def error_response(error: ApiError, extra_headers: dict[str, str] | None = None) -> Response:
    response = Response(error.to_bytes(), status=error.status, content_type=JSONAPI)
    for key, value in {**(extra_headers or {}), **error.headers}.items():
        response.headers[key] = value
    return response


class SandboxApp:
    """The WSGI callable serving the Klaviyo API (and anything mounted beside it)."""

    def __init__(self, store: Store, credentials: Credentials | None = None, rate_limiter: RateLimiter | None = None,
                 faults: Faults | None = None, spec: Spec | None = None):
        self.store = store
        self.spec = spec or load_spec()
        self.credentials = credentials or Credentials()
        self.rate_limiter = rate_limiter or RateLimiter(enabled=False)
        self.faults = faults or Faults()
        self.routes: dict[tuple[str, str], Handler] = {}
        self.mounts: list[tuple[str, Callable]] = []
        self._match_cache: dict[tuple[str, str], tuple[Operation, dict[str, str]] | None] = {}

    # -- registration -----------------------------------------------------------------
    def route(self, method: str, spec_path: str, handler: Handler | None = None):
        """Register ``handler`` for the spec operation ``(method, spec_path)``; usable as a decorator.

        Raises KeyError when the spec has no such operation (typos fail loudly).
        """
        self.spec.operation(method, spec_path)  # validates

        def register(func: Handler) -> Handler:
            self.routes[(method.upper(), spec_path)] = func
            return func

        return register(handler) if handler is not None else register

    def mount(self, prefix: str, wsgi_app: Callable) -> None:
        """Serve every path under ``prefix`` (e.g. ``/_sandbox``) with another WSGI app."""
        self.mounts.append((prefix.rstrip("/"), wsgi_app))
        self.mounts.sort(key=lambda m: -len(m[0]))

    # -- WSGI -------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, wsgi_app in self.mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return wsgi_app(environ, start_response)
        return self.api(environ, start_response)

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        key = (method, path)
        if key not in self._match_cache:
            if len(self._match_cache) > 20_000:
                self._match_cache.clear()
            self._match_cache[key] = self.spec.match(method, path)
        return self._match_cache[key]

    def api(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Run the API pipeline for one request."""
        request = Request(environ)
        path = request.path
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        method = request.method.upper()
        extra_headers: dict[str, str] = {}
        fault = None
        try:
            found = self.match("GET" if method == "HEAD" else method, path)
            if found is None:
                raise not_found(f"No API endpoint matches {method} {path}.")
            op, params = found
            account = environ.get("klaviyo_sandbox.account") or self.credentials.authenticate(request.headers.get("Authorization"))
            revision = request.headers.get("revision")
            if not revision:
                raise invalid("Missing required header 'revision' (for example revision: 2026-07-15).", parameter="revision")
            if not _REVISION.match(revision):
                raise invalid(f"Invalid revision header {revision!r}; expected YYYY-MM-DD (for example 2026-07-15).",
                              parameter="revision")
            extra_headers = self.rate_limiter.hit(account, op, request.args)
            fault = self.faults.decide(op.operation_id, op.path, path, op.method)
            if fault is not None:
                if fault.kind == "slow":
                    time.sleep(fault.delay)
                elif fault.kind == "throttle":
                    raise throttled(fault.retry_after)
                elif fault.kind == "error":
                    raise server_error(fault.status)
            handler = self.routes.get((op.method, op.path))
            if handler is None:
                raise ApiError(501, "not_implemented", "Not implemented.",
                               f"The sandbox does not implement {op.method} {op.path} ({op.operation_id}).")
            link_base = environ.get("klaviyo_sandbox.link_base") or request.host_url.rstrip("/")
            ctx = RequestContext(request, op, params, account, self, link_base, headers=dict(extra_headers))
            response = handler(ctx)
        except ApiError as error:
            response = error_response(error, extra_headers)
        except Exception:  # noqa: BLE001 - a sandbox bug must still answer JSON:API
            log.error("sandbox handler failed for %s %s\n%s", method, path, traceback.format_exc())
            response = error_response(server_error(500), extra_headers)
        response.headers.setdefault("X-Klaviyo-API-Revision", self.spec.revision)
        if fault is not None and fault.kind == "drop":
            return self._dropped(environ, response, start_response)
        return response(environ, start_response)

    @staticmethod
    def _dropped(environ: dict, response: Response, start_response: Callable) -> Iterable[bytes]:
        """Send the headers (full Content-Length) and half the body, then close the socket."""
        body = response.get_data()
        response.headers["Content-Length"] = str(len(body))
        environ[CLOSE_AFTER_RESPONSE] = True
        start_response(response.status, list(response.headers.items()))
        sock = environ.get(SOCKET)

        def chunks() -> Iterable[bytes]:
            yield body[: max(1, len(body) // 2)]
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

        return chunks()
