"""A real Airflow 3 installation for tests: scheduler, dag-processor and api-server with the
LocalExecutor and a PostgreSQL metadata database of its own.

``AirflowCluster`` creates the metadata database (a unique name on the local server), runs
``airflow db migrate``, starts the three components from ``.venv-airflow`` each in its own process
group on ports chosen at run time, and talks to the REST API (``/api/v2``; the simple auth manager
with every user an admin, so no login).  ``stop()`` ends every process group it started and drops
the database, also after a failure.  Waits poll a condition until a generous deadline.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import requests

TERMINAL_RUN_STATES = {"success", "failed"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 1.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (requests.RequestException, ValueError) as exc:  # not up yet, or mid-restart
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(poll)


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


class AirflowCluster:
    """Airflow 3 components under ``home``, metadata in a fresh PostgreSQL database."""

    COMPONENTS = ("scheduler", "dag-processor", "api-server")

    def __init__(self, airflow_bin: Path, home: Path, dags_folder: Path, postgres_dsn: str,
                 env: dict[str, str] | None = None) -> None:
        self.airflow = str(airflow_bin / "airflow")
        self.home = home
        self.dags_folder = dags_folder
        self.server_dsn = postgres_dsn
        self.database = f"kdlt_airflow_{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self._created_database = False
        metadata = _with_database(postgres_dsn, self.database).replace("postgresql://", "postgresql+psycopg2://", 1)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "DLT_"))},
            **(env or {}),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        }
        self.session = requests.Session()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 300) -> "AirflowCluster":
        self.home.mkdir(parents=True, exist_ok=True)
        self._admin(f'CREATE DATABASE "{self.database}"')
        self._created_database = True
        migrate = self.cli("db", "migrate", timeout=timeout)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        for component in self.COMPONENTS:
            log = open(self.home / f"{component}.log", "wb")
            # its own process group (start_new_session): stop() ends it with every child it forked
            self.processes[component] = subprocess.Popen(
                [self.airflow, component], env=self.env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_for(lambda: self._healthy(), timeout, "the api-server and scheduler to report healthy")
        return self

    def _healthy(self) -> bool:
        self._check_alive()
        health = self.session.get(f"{self.base_url}/api/v2/monitor/health", timeout=10).json()
        return health.get("scheduler", {}).get("status") == "healthy"

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"airflow {name} exited with {process.returncode}:\n{tail}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for process in self.processes.values():
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may hold task processes that outlived their parent
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
        self.processes.clear()
        if self._created_database:
            self._admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (self.database,))
            self._admin(f'DROP DATABASE IF EXISTS "{self.database}"')
            self._created_database = False

    def _admin(self, sql: str, params: tuple = ()) -> None:
        """One statement outside a transaction (CREATE/DROP DATABASE) on the server's ``postgres`` database."""
        import psycopg2

        con = psycopg2.connect(_with_database(self.server_dsn, "postgres"))
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(sql, params)
        finally:
            con.close()

    def __enter__(self) -> "AirflowCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- access ----------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``airflow <args>`` with this installation's environment."""
        return subprocess.run([self.airflow, *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        self._check_alive()
        response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "run_after"})["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})[
            "task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
                         params={"map_index": map_index, "deserialize": "true", "stringify": "false"})
        return entry["value"]

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it (import errors are reported)."""

        def parsed() -> dict[str, Any] | None:
            errors = self.api("GET", "/importErrors")["import_errors"]
            if errors:
                raise AssertionError(f"DAG import errors: {errors}")
            response = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=30)
            return response.json() if response.status_code == 200 else None

        return wait_for(parsed, timeout, f"the dag-processor to parse {dag_id}")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """The task's log text, read through the REST API."""
        entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                         params={"map_index": map_index, "full_content": "true"},
                         headers={"Accept": "application/json"})
        content = entry.get("content")
        if isinstance(content, list):
            return "\n".join(c.get("event", "") if isinstance(c, dict) else str(c) for c in content)
        return str(content)
