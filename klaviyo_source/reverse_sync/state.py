"""The sync's memory in the destination: ``_klaviyo_reverse_sync_state`` and ``_klaviyo_reverse_sync_rejects``.

State holds, per (sync name, identity), the hash of what Klaviyo last accepted, the
non-null fields it had (to know what to clear), the profile id when known, list
membership and the consent hash. It is written through dlt (merge on the primary key)
after every batch Klaviyo accepted, so a killed run resumes where it stopped.
Rejects are appended with their reason and the row, so nothing is lost.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any, Iterable

import dlt
import pyarrow as pa

from .diff import STATE_COLUMNS, empty_state
from .source_rows import Warehouse

STATE_TABLE = "_klaviyo_reverse_sync_state"
REJECTS_TABLE = "_klaviyo_reverse_sync_rejects"
REJECT_COLUMNS = {
    "sync_name": pa.string(), "run_id": pa.string(), "identity_key": pa.string(), "stage": pa.string(),
    "reason": pa.string(), "row_json": pa.string(), "rejected_at": pa.timestamp("us", tz="UTC"),
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _state_resource(rows: pa.Table):  # noqa: ANN202 - a dlt resource
    return dlt.resource(rows, name=STATE_TABLE, write_disposition="merge",
                        primary_key=["sync_name", "identity_key"],
                        columns={"in_list": {"data_type": "bool"}})


def state_table(rows: list[dict[str, Any]]) -> pa.Table:
    """State rows (dicts keyed by state column; ``sync_name``/``synced_at`` are set at commit) as a table."""
    return pa.table({name: pa.array([r.get(name) for r in rows], kind) for name, kind in STATE_COLUMNS.items()
                     if name not in ("sync_name", "synced_at")})


class SyncState:
    """Read and advance the state and rejects tables of one sync."""

    def __init__(self, warehouse: Warehouse, sync_name: str):
        self.warehouse = warehouse
        self.sync_name = sync_name

    def load(self) -> pa.Table:
        """This sync's state rows (empty when the table does not exist yet)."""
        if not self.warehouse.table_exists(STATE_TABLE):
            return empty_state()
        name = self.sync_name.replace("'", "''")
        columns = ", ".join(STATE_COLUMNS)
        table = self.warehouse.read_arrow(f"select {columns} from {STATE_TABLE} where sync_name = '{name}'")
        if table.num_rows == 0:
            return empty_state()
        return table.cast(pa.schema(STATE_COLUMNS.items()))

    def save(self, rows: Iterable[dict[str, Any]]) -> int:
        """Merge state rows (whole rows: every column) into the state table; returns how many."""
        rows = list(rows)
        self.commit(rows, [])
        return len(rows)

    def reject(self, run_id: str, stage: str, rejects: Iterable[tuple[str | None, str, str | None]]) -> int:
        """Append (identity_key, reason, row JSON) rejects of one stage; returns how many."""
        rejects = [(stage, *r) for r in rejects]
        self.commit([], rejects, run_id)
        return len(rejects)

    def commit(self, rows: pa.Table | list[dict[str, Any]], rejects: list[tuple[str, str | None, str, str | None]],
               run_id: str = "") -> None:
        """In one load: merge whole state rows (dicts, or a table of ``state_table``'s columns) and
        append (stage, identity_key, reason, row JSON) rejects."""
        resources = []
        stamp = _now()
        table = state_table(rows) if isinstance(rows, list) else rows
        if table.num_rows:
            count = table.num_rows
            data = {name: table.column(name) for name in STATE_COLUMNS if name not in ("sync_name", "synced_at")}
            data["sync_name"] = pa.array([self.sync_name] * count, pa.string())
            data["synced_at"] = pa.array([stamp] * count, STATE_COLUMNS["synced_at"])
            schema = pa.schema([pa.field(k, t, nullable=k not in ("sync_name", "identity_key"))  # the primary key
                                for k, t in STATE_COLUMNS.items()])
            resources.append(_state_resource(pa.table({k: data[k].cast(t) for k, t in STATE_COLUMNS.items()},
                                                      schema=schema)))
        if rejects:
            columns = list(zip(*rejects))
            table = pa.table({
                "sync_name": pa.array([self.sync_name] * len(rejects), pa.string()),
                "run_id": pa.array([run_id] * len(rejects), pa.string()),
                "identity_key": pa.array(columns[1], pa.string()),
                "stage": pa.array(columns[0], pa.string()),
                "reason": pa.array(columns[2], pa.string()),
                "row_json": pa.array(columns[3], pa.string()),
                "rejected_at": pa.array([stamp] * len(rejects), REJECT_COLUMNS["rejected_at"]),
            })
            resources.append(dlt.resource(table, name=REJECTS_TABLE, write_disposition="append"))
        if resources:
            self._run(resources)

    def rejects(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Rejected rows of this sync (of one run when given), oldest first."""
        if not self.warehouse.table_exists(REJECTS_TABLE):
            return []
        where = f"sync_name = '{self.sync_name}'" + (f" and run_id = '{run_id}'" if run_id else "")
        return self.warehouse.read_arrow(
            f"select {', '.join(REJECT_COLUMNS)} from {REJECTS_TABLE} where {where} order by rejected_at").to_pylist()

    def _run(self, resource: Any) -> None:
        # parquet into DuckDB, csv (COPY) into PostgreSQL: both keep the Arrow path, never insert_values
        file_format = "parquet" if self.warehouse.is_duckdb else "csv"
        info = self.warehouse.pipeline.run(resource, loader_file_format=file_format)
        info.raise_on_failed_jobs()


class BackgroundCommits:
    """Advances a ``SyncState`` on a background thread, in order, so the run goes on meanwhile.

    Commits start at most every ``min_interval`` seconds; what arrives meanwhile goes out
    together in the next one (one load for several bulk-import jobs).  ``close`` commits what is
    pending at once and waits for it; a failed commit raises there or at the next ``put`` (its
    rows stay unrecorded: the next run sends them again)."""

    def __init__(self, state: SyncState, run_id: str, min_interval: float = 1.0):
        self.state, self.run_id, self.min_interval = state, run_id, min_interval
        self._next_commit = 0.0  # time.monotonic() before which no commit starts (unless closing)
        self._rows: list[pa.Table] = []
        self._rejects: list[tuple[str, str | None, str, str | None]] = []
        self._closed = False
        self._error: BaseException | None = None
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="reverse-sync-state", daemon=True)
        self._thread.start()

    def put(self, rows: pa.Table, rejects: list[tuple[str, str | None, str, str | None]]) -> None:
        """Hand over state rows (a ``state_table``) and rejects to commit."""
        with self._ready:
            self._raise_failure()
            if rows.num_rows:
                self._rows.append(rows)
            self._rejects.extend(rejects)
            self._ready.notify()

    def hold(self, seconds: float) -> None:
        """Start no commit for ``seconds`` (unless closed): the run expects to close soon, and one
        load at the end beats one now and another right after it."""
        with self._ready:
            self._next_commit = max(self._next_commit, time.monotonic() + seconds)

    def close(self, raise_failure: bool = True) -> None:
        """Commit what is pending and stop; raises the failure of any commit (unless told not to,
        when another error is already on its way)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
        if raise_failure:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._closed:
                    wait = self._next_commit - time.monotonic()
                    if (self._rows or self._rejects) and wait <= 0:
                        break
                    self._ready.wait(wait if self._rows or self._rejects else None)
                rows, rejects = self._rows, self._rejects
                self._rows, self._rejects = [], []
                if not (rows or rejects):
                    return  # closed, nothing pending
            try:
                self.state.commit(pa.concat_tables(rows) if rows else state_table([]), rejects, self.run_id)
            except BaseException as exc:  # noqa: BLE001 - raised in the run's thread by put/close
                with self._ready:
                    self._error = exc
                return
            with self._ready:  # never earlier than a hold set while this commit ran
                self._next_commit = max(self._next_commit, time.monotonic() + self.min_interval)
