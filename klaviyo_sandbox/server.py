"""The :class:`Sandbox`: a seeded store + the WSGI app served on 127.0.0.1 in a background thread.

::

    with Sandbox(seed=7, accounts=1, profiles=300, events=3000, rate_limits=False) as sb:
        requests.get(f"{sb.base_url}/api/profiles", headers={
            "Authorization": f"Klaviyo-API-Key {sb.api_key}", "revision": "2026-07-15"})

``main(argv)`` is the ``sandbox`` command line (``klaviyo-dlt sandbox --help``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import gc
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .app import SandboxApp
from .auth import Credentials
from .faults import Faults
from .httpserver import make_server
from .generator import DEFAULT_API_KEY, Account, account_credentials, generate
from .ratelimit import RateLimiter
from .reads import register_reads
from .spec import load_spec
from .store import Clock, Store

MATON_API_KEY = "maton_sandbox_key_0000000000000000"
REVISION = "2026-07-15"


class Sandbox:
    """A local Klaviyo API (revision 2026-07-15) with generated data; see the module docstring.

    Attributes: ``base_url``, ``api_key`` (first account's private key), ``accounts``,
    ``maton_api_key``, ``store`` (ground truth), ``app`` (the WSGI app; ``app.route`` adds
    endpoints), ``control`` (the control API client, attached by ``klaviyo_sandbox.control``),
    ``rate_limiter``, ``faults``, ``clock``.
    """

    def __init__(self, seed: int = 0, accounts: int = 1, profiles: int = 300, events: int = 3000,
                 rate_limits: bool = True, rate_limit_scale: float = 1.0, faults: Any = None,
                 api_key: str | None = None, store_path: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 now: dt.datetime | None = None, maton_api_key: str = MATON_API_KEY,
                 validate_responses: bool | None = None):
        self.seed = seed
        self.validate_responses = validate_responses  # None: KLAVIYO_SANDBOX_VALIDATE decides (see conformance.py)
        self.host = host
        self.port = port
        self.clock = Clock(frozen=now)
        existing = bool(store_path) and Path(store_path).exists()
        self.store = Store(store_path, clock=self.clock)
        if existing and self.store.db.execute("SELECT count(*) FROM accounts_meta").fetchone()[0]:
            self.accounts = self._load_accounts()
            self.store.reset_sequences()
        else:
            self.accounts = generate(self.store, seed=seed, accounts=accounts, profiles=profiles, events=events,
                                     api_key=api_key)
            self.store.create_indexes()
        self.maton_api_key = maton_api_key
        self.credentials = Credentials()
        for account in self.accounts:
            self.credentials.add_account(account.id, account.api_key, account.oauth_token)
        self.rate_limiter = RateLimiter(enabled=rate_limits, scale=rate_limit_scale)
        self.faults = Faults(faults, seed=seed)
        self.spec = load_spec()
        self.app = SandboxApp(self.store, self.credentials, self.rate_limiter, self.faults, self.spec)
        register_reads(self.app)
        self.control = None  # set by klaviyo_sandbox.control (H2) when available
        self._attach_extensions()
        self._server = None
        self._thread: threading.Thread | None = None

    def _load_accounts(self) -> list[Account]:
        rows = self.store.db.execute(
            "SELECT m.account, m.api_key, m.oauth_token, m.maton_connection_id, "
            "json_extract_string(a.attrs, '$.contact_information.organization_name') "
            "FROM accounts_meta m LEFT JOIN accounts a ON a.id = m.account ORDER BY a.seq").fetchall()
        return [Account(r[0], r[1], r[2], r[3], r[4] or "") for r in rows]

    def _attach_extensions(self) -> None:
        """Let sibling modules (write endpoints, gateway, control API, reports) register themselves."""
        import importlib

        for name in ("writes", "gateway", "control", "reports", "conformance"):
            try:
                module = importlib.import_module(f"klaviyo_sandbox.{name}")
            except ModuleNotFoundError as exc:
                if exc.name == f"klaviyo_sandbox.{name}":
                    continue
                raise
            attach = getattr(module, "attach", None)
            if attach is not None:
                attach(self)

    # -- accessors --------------------------------------------------------------------
    @property
    def api_key(self) -> str:
        return self.accounts[0].api_key

    @property
    def account(self) -> Account:
        return self.accounts[0]

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not started; use `with Sandbox(...) as sb:` or sb.start()")
        return f"http://{self.host}:{self._server.server_port}"

    def headers(self, account: int = 0) -> dict[str, str]:
        """Request headers for account ``account``: private key + revision."""
        return {"Authorization": f"Klaviyo-API-Key {self.accounts[account].api_key}", "revision": REVISION,
                "Accept": "application/vnd.api+json"}

    def set_faults(self, config: Any) -> None:
        """Replace the fault rules at runtime (see ``klaviyo_sandbox.faults``)."""
        self.faults.configure(config)

    def set_rate_limits(self, enabled: bool | None = None, scale: float | None = None) -> None:
        self.rate_limiter.configure(enabled, scale)

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def connections_opened(self) -> int:
        """TCP connections the server has accepted (kept-alive connections count once)."""
        return self._server.connections_opened if self._server is not None else 0

    def start(self) -> "Sandbox":
        if self._server is not None:
            return self
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = make_server(self.host, self.port, self.app, on_thread_end=self.store.release_cursor)
        self._thread = threading.Thread(target=self._server.serve_forever, name="klaviyo-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: no new connection is accepted, requests being served are answered, and
        every connection thread has ended when this returns."""
        if self._server is not None:
            self._server.shutdown()  # the accept loop ends
            self._server.server_close()  # kept-alive connections end; their threads are joined
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop serving, wait for background import jobs, then close the store: in this order no
        thread is left inside DuckDB when the interpreter exits (it would abort the process)."""
        self.stop()
        jobs = getattr(self, "import_jobs", None)
        if jobs is not None:
            jobs.close()
        self.store.close()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def serve(**kwargs: Any) -> Sandbox:
    """Start a sandbox (``Sandbox(**kwargs).start()``) and return it."""
    return Sandbox(**kwargs).start()


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors reach ``main`` (printed there as one line, text or JSON)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ParseError(message)


def build_parser(prog: str = "sandbox") -> argparse.ArgumentParser:
    """The ``sandbox`` command line's arguments.

    Args:
        prog: the command name shown in usage and errors.
    """
    parser = _Parser(
        prog=prog,
        description="Serve a local Klaviyo REST API (revision 2026-07-15) with seeded, generated data.",
        epilog=f"Default private key of the first account: {DEFAULT_API_KEY}. Every request needs "
               "'Authorization: Klaviyo-API-Key <key>' and 'revision: 2026-07-15'.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port; default 8765)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same data (default 0)")
    parser.add_argument("--accounts", type=int, default=1, help="number of Klaviyo accounts (default 1)")
    parser.add_argument("--profiles", type=int, default=2000, help="profiles per account (default 2000)")
    parser.add_argument("--events", type=int, default=20000, help="events per account (default 20000)")
    parser.add_argument("--api-key", default=None, help=f"private key of the first account (default {DEFAULT_API_KEY})")
    parser.add_argument("--rate-limits", dest="rate_limits", action="store_true", default=True,
                        help="enforce Klaviyo's per-endpoint rate limits (default)")
    parser.add_argument("--no-rate-limits", dest="rate_limits", action="store_false", help="disable rate limits")
    parser.add_argument("--rate-limit-scale", type=float, default=1.0,
                        help="multiply the 1 s / 60 s rate-limit windows by this factor (default 1.0)")
    parser.add_argument("--faults", default=None,
                        help="fault rules as JSON text or a JSON file: {\"seed\": N, \"rules\": [...]}; a rule has "
                             "match (operationId, spec path, 'GET /api/...' or '*'), kind (error | throttle | drop "
                             "= connection closed mid-body | slow), status, retry_after, delay (s), rate (0..1), "
                             "times, skip; e.g. "
                             "'{\"rules\":[{\"match\":\"get_events\",\"kind\":\"error\",\"status\":503,\"rate\":0.1}]}'")
    parser.add_argument("--store-path", default=None,
                        help="DuckDB file for the store (reused if it exists; default: in memory)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text (default) or json: the ready banner and errors as one JSON object per line "
                             "(time, level, logger, message, fields)")
    return parser


class _Console:
    """The command line's output: plain lines, or JSON lines with the CLI's log schema."""

    def __init__(self, log_format: str, prog: str):
        self.json = log_format == "json"
        self.prog = prog

    def _record(self, level: str, message: str, fields: dict[str, Any]) -> str:
        return json.dumps({"time": dt.datetime.now().astimezone().isoformat(), "level": level,
                           "logger": "klaviyo_sandbox", "message": message, **fields}, default=str)

    def error(self, message: str, exit_code: int = 2) -> int:
        line = self._record("error", message, {"exit_code": exit_code}) if self.json else \
            f"{self.prog}: error: {message}"
        print(line, file=sys.stderr, flush=True)
        return exit_code

    def ready(self, sandbox: "Sandbox", seconds: float, args: argparse.Namespace) -> None:
        headline = f"Klaviyo sandbox (revision {REVISION}) ready in {seconds:.1f}s at {sandbox.base_url}"
        if self.json:
            accounts = [{"id": a.id, "api_key": a.api_key, "oauth_token": a.oauth_token,
                         "maton_connection": a.maton_connection_id} for a in sandbox.accounts]
            print(self._record("info", headline, {
                "event": "sandbox_ready", "base_url": sandbox.base_url, "revision": REVISION, "accounts": accounts,
                "maton_gateway": f"{sandbox.base_url}/klaviyo", "maton_api_key": sandbox.maton_api_key,
                "rate_limits": args.rate_limits, "rate_limit_scale": args.rate_limit_scale}), flush=True)
            return
        print(headline)
        print(f"  API:      {sandbox.base_url}/api/...   (header revision: {REVISION})")
        for account in sandbox.accounts:
            print(f"  account {account.id}: private key {account.api_key}  oauth token {account.oauth_token}  "
                  f"maton connection {account.maton_connection_id}")
        print(f"  Maton gateway: {sandbox.base_url}/klaviyo/api/...  key {sandbox.maton_api_key}")
        print(f"  rate limits: {'on' if args.rate_limits else 'off'} (scale {args.rate_limit_scale})  Ctrl-C to stop")
        sys.stdout.flush()


def _port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound because something listens there (checked before
    the data is generated, which takes a while for large accounts)."""
    if port == 0:
        return False
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _busy(host: str, port: int) -> str:
    return f"port {port} on {host} is in use: stop what listens there or choose another with --port (0 = any free port)"


def main(argv: list[str] | None = None, prog: str = "sandbox") -> int:
    """The ``sandbox`` command line; returns the exit code (2 for bad arguments or a busy port).

    Args:
        argv: the arguments after the command name.
        prog: the command name used in error lines (``klaviyo-dlt sandbox`` when run through the CLI).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = any(a == "--log-format=json" or (a == "--log-format" and argv[i + 1:i + 2] == ["json"])
                  for i, a in enumerate(argv))
    try:
        args = build_parser(prog).parse_args(argv)
    except _ParseError as exc:
        return _Console("json" if as_json else "text", prog).error(f"{exc} (see {prog} --help)")
    console = _Console(args.log_format, prog)
    if _port_in_use(args.host, args.port):
        return console.error(_busy(args.host, args.port))
    try:
        started = time.time()
        sandbox = Sandbox(seed=args.seed, accounts=args.accounts, profiles=args.profiles, events=args.events,
                          rate_limits=args.rate_limits, rate_limit_scale=args.rate_limit_scale, faults=args.faults,
                          api_key=args.api_key, store_path=args.store_path, host=args.host, port=args.port)
    except (ValueError, OSError) as exc:
        return console.error(str(exc))
    # the spec and startup objects live as long as the server: keep them out of every collection;
    # a bulk-import job allocates ~10^5 objects, so collect young objects less often than every 700
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    try:
        sandbox.start()
    except OSError as exc:  # taken between the check and the bind
        sandbox.close()
        return console.error(_busy(args.host, args.port) if exc.errno == errno.EADDRINUSE else str(exc))
    console.ready(sandbox, time.time() - started, args)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
