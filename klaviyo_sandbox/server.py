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
import gc
import logging
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        started = time.time()
        sandbox = Sandbox(seed=args.seed, accounts=args.accounts, profiles=args.profiles, events=args.events,
                          rate_limits=args.rate_limits, rate_limit_scale=args.rate_limit_scale, faults=args.faults,
                          api_key=args.api_key, store_path=args.store_path, host=args.host, port=args.port)
    except (ValueError, OSError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    # the spec and startup objects live as long as the server: keep them out of every collection;
    # a bulk-import job allocates ~10^5 objects, so collect young objects less often than every 700
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    sandbox.start()
    print(f"Klaviyo sandbox (revision {REVISION}) ready in {time.time() - started:.1f}s at {sandbox.base_url}")
    print(f"  API:      {sandbox.base_url}/api/...   (header revision: {REVISION})")
    for account in sandbox.accounts:
        print(f"  account {account.id}: private key {account.api_key}  oauth token {account.oauth_token}  "
              f"maton connection {account.maton_connection_id}")
    print(f"  Maton gateway: {sandbox.base_url}/klaviyo/api/...  key {sandbox.maton_api_key}")
    print(f"  rate limits: {'on' if args.rate_limits else 'off'} (scale {args.rate_limit_scale})  Ctrl-C to stop")
    sys.stdout.flush()
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
