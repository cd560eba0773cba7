"""Deletion sweep: records that vanished from the API are marked ``deleted_at`` (or hard-deleted).

Lists, segments, campaigns, flows, templates, tags, catalog items and coupons can be deleted
in Klaviyo and then simply stop appearing: an incremental read never sees them again.  A
stream row with ``deletion_sweep=True`` therefore ends every read with one sweep:

1. the ids the API serves now: the ids just read (streams read fully every run) or one
   id-only listing (incremental streams; sparse fieldset, every partition);
2. the ids stored in the destination with ``deleted_at IS NULL``;
3. stored minus served = vanished.  ``soft`` (default) re-emits each vanished record's stored
   row with ``deleted_at`` set (merge on the primary key keeps every other column);
   ``hard`` emits the key with ``deleted_at`` set and the column carries dlt's
   ``hard_delete`` hint, so the merge removes the row; ``off`` skips the sweep.

A record that reappears (restored) is merged again by the normal read with ``deleted_at``
empty.
"""

from __future__ import annotations

import logging
import weakref
from datetime import datetime
from typing import Any, Iterable, Iterator, Sequence

import dlt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from klaviyo_source.errors import KlaviyoConfigError
from klaviyo_source.filters import combine, utc_now
from klaviyo_source.partitions import read_partitions

log = logging.getLogger(__name__)

DELETED_AT = "deleted_at"
MODES = ("soft", "hard", "off")
_CHUNK = 500
_ARROW_BY_DLT_TYPE = {
    "text": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "decimal": pa.float64(),
    "bool": pa.bool_(),
    "json": pa.string(),
    "date": pa.date32(),
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise KlaviyoConfigError(f"deletions={mode!r} is unknown; use one of {', '.join(MODES)}")
    return mode


def deleted_at_hint(mode: str) -> dict[str, dict[str, Any]]:
    """Column hint for ``deleted_at`` (``hard_delete`` in hard mode)."""
    hint: dict[str, Any] = {"name": DELETED_AT, "data_type": "timestamp", "timezone": True, "nullable": True,
                            "description": "when the record was found missing from the API (soft delete)"}
    if mode == "hard":
        hint["hard_delete"] = True
    return {DELETED_AT: hint}


def live_ids(client: Any, stream: Any) -> set[str]:
    """Every id the endpoint serves now (every partition, archived or not), with a sparse fieldset
    to keep pages small."""
    ids: set[str] = set()
    for conditions in read_partitions(stream):
        params: dict[str, Any] = dict(stream.params)
        if stream.page_size:
            params["page[size]"] = stream.page_size
        if stream.cursor_field and stream.resource_type:
            params[f"fields[{stream.resource_type}]"] = stream.cursor_field
        expression = combine(conditions)
        if expression:
            params["filter"] = expression
        for document in client.pages(stream.path, params):
            ids.update(record["id"] for record in document.get("data") or [])
    return ids


def with_sweep(stream: Any, client: Any, tables: Iterable[pa.Table], *, full_read: bool,
               mode: str = "soft", incremental: Any = None) -> Iterator[pa.Table]:
    """Pass ``tables`` through, then yield the vanished records of ``stream`` marked deleted.

    ``incremental``: the resource's bound dlt Incremental.  Re-emitted rows carry their old
    cursor values, which the incremental would filter out, so it is pinned at the highest cursor
    value read (``Incremental.advance``) and lets the sweep rows through.
    """
    if not getattr(stream, "deletion_sweep", False) or mode == "off":
        yield from tables
        return
    key = stream.primary_key
    cursor = getattr(stream, "cursor_field", None)
    seen: set[str] = set()
    highest = None
    for table in tables:
        if key in table.column_names:
            seen.update(v for v in table.column(key).to_pylist() if v is not None)
        if cursor and cursor in table.column_names and table.num_rows:
            top = pc.max(table.column(cursor)).as_py()
            if top is not None and (highest is None or top > highest):
                highest = top
        yield table
    stored = stored_active_ids(stream.name, key)
    if not stored - seen:
        return  # nothing stored is missing from this read (always so on a first run): no listing needed
    served = seen if full_read else live_ids(client, stream) | seen
    marked = list(vanished_rows(stream.name, key, served, mode, stored=stored))
    if not marked:
        return
    if incremental is not None:
        known = [v for v in (highest, getattr(incremental, "last_value", None)) if v is not None]
        incremental.advance(max(known) if known else None)
    yield from marked


def _stored(table: str) -> tuple[Any, dict[str, Any]] | None:
    """(pipeline, column schema) of a table this pipeline has loaded before; None on a first run."""
    try:
        pipeline = dlt.current.pipeline()
    except Exception:  # noqa: BLE001 - no active pipeline (resource iterated directly)
        return None
    name = pipeline.default_schema_name
    if not name or name not in pipeline.schemas:
        return None
    schema = pipeline.schemas[name]
    if table not in schema.tables or not schema.get_table_columns(table):
        return None
    return pipeline, schema.get_table_columns(table)


_SQL_CLIENTS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def sql_client(pipeline: Any) -> Any:
    """The pipeline's destination sql client, built once per pipeline (resolving its config is slow);
    every ``with`` block opens a fresh connection."""
    client = _SQL_CLIENTS.get(pipeline)
    if client is None:
        client = _SQL_CLIENTS[pipeline] = pipeline.sql_client()
    return client


def stored_active_ids(table: str, key: str) -> set[str]:
    """Ids stored in the destination and not yet marked deleted (empty on a first run)."""
    found = _stored(table)
    if found is None:
        return set()
    pipeline, columns = found
    with sql_client(pipeline) as sql:
        name = sql.make_qualified_table_name(table)
        where = f" WHERE {sql.escape_column_name(DELETED_AT)} IS NULL" if DELETED_AT in columns else ""
        try:
            rows = sql.execute_sql(f"SELECT {sql.escape_column_name(key)} FROM {name}{where}")
        except Exception as exc:  # noqa: BLE001
            if _is_missing_relation(exc):
                return set()
            raise
    return {r[0] for r in rows or []}


def _is_missing_relation(exc: BaseException) -> bool:
    from dlt.destinations.exceptions import DatabaseUndefinedRelation

    return isinstance(exc, DatabaseUndefinedRelation)


def stored_rows(table: str, key: str, ids: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stored rows of ``ids`` (without dlt's own columns) and the table's column schema."""
    found = _stored(table)
    if found is None or not ids:
        return [], {}
    pipeline, columns = found
    rows: list[dict[str, Any]] = []
    with sql_client(pipeline) as sql:
        name = sql.make_qualified_table_name(table)
        for start in range(0, len(ids), _CHUNK):
            chunk = list(ids[start:start + _CHUNK])
            placeholders = ", ".join(["%s"] * len(chunk))
            with sql.execute_query(
                f"SELECT * FROM {name} WHERE {sql.escape_column_name(key)} IN ({placeholders})", *chunk
            ) as cursor:
                names = [d[0] for d in cursor.description]
                rows.extend(dict(zip(names, r)) for r in cursor.fetchall())
    return [{k: v for k, v in row.items() if not k.startswith("_dlt_")} for row in rows], columns


def _array(values: list[Any], data_type: str | None) -> pa.Array:
    if data_type == "json":
        return pa.array([v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values],
                        type=pa.string())
    arrow_type = _ARROW_BY_DLT_TYPE.get(data_type or "")
    if arrow_type is not None:
        if data_type in ("double", "decimal"):
            values = [None if v is None else float(v) for v in values]
        try:
            return pa.array(values, type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            pass
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def rows_to_table(rows: list[dict[str, Any]], columns: dict[str, Any]) -> pa.Table:
    """Stored rows back to an arrow table typed like the destination columns."""
    names = [name for name in columns if not name.startswith("_dlt_")]
    for row in rows:
        for name in row:
            if name not in names:
                names.append(name)
    return pa.table({name: _array([row.get(name) for row in rows], (columns.get(name) or {}).get("data_type"))
                     for name in names})


def vanished_rows(table: str, key: str, served: set[str], mode: str, now: datetime | None = None,
                  stored: set[str] | None = None) -> Iterator[pa.Table]:
    """The records stored but no longer served, marked with ``deleted_at`` (soft) or for removal (hard)."""
    vanished = sorted((stored_active_ids(table, key) if stored is None else stored) - served)
    if not vanished:
        return
    stamp = now or utc_now()
    log.info("%s: %d record(s) vanished from the API; marking deleted_at (%s)", table, len(vanished), mode)
    if mode == "hard":
        yield pa.table({key: pa.array(vanished, pa.string()),
                        DELETED_AT: pa.array([stamp] * len(vanished), pa.timestamp("us", tz="UTC"))})
        return
    rows, columns = stored_rows(table, key, vanished)
    for row in rows:
        row[DELETED_AT] = stamp
    columns = {**columns, DELETED_AT: {"data_type": "timestamp"}}
    if rows:
        yield rows_to_table(rows, columns)
