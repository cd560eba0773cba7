"""JSON:API page -> pyarrow table, with the columns analysts query.

dlt's arrow path skips row-by-row normalisation, so this module produces what dlt's
normaliser would: flattened nested objects (``location__city``), timezone-aware
timestamps, JSON text for free-form bags, ``<relation>_id`` columns.  Values are pulled
column-wise from orjson-parsed dicts; parsing and casting run in Arrow's C++ kernels.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from klaviyo_source.columns import SEPARATOR, Column

TIMESTAMP = pa.timestamp("us", tz="UTC")
ARROW_TYPES = {
    "string": pa.string(),
    "timestamp": TIMESTAMP,
    "date": pa.date32(),
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "json": pa.string(),
}
_EMPTY: dict = {}


def _json_text(values: list[Any]) -> pa.Array:
    return pa.array([None if v is None else orjson.dumps(v) for v in values], type=pa.string())


def _as_text(values: list[Any]) -> pa.Array:
    return pa.array(
        [
            None if v is None else v if isinstance(v, str) else orjson.dumps(v).decode() if isinstance(v, (dict, list)) else str(v)
            for v in values
        ],
        type=pa.string(),
    )


def _timestamps(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values, type=pa.string()).cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        parsed = []
        for v in values:
            if v is None or v == "":
                parsed.append(None)
                continue
            try:
                dt = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
                parsed.append(dt if dt.tzinfo else dt.replace(tzinfo=None))
            except ValueError:
                parsed.append(None)
        return pa.array(parsed, type=TIMESTAMP)


def to_array(values: list[Any], kind: str) -> pa.Array:
    """Typed Arrow array for one column; falls back to lenient conversion on unexpected values."""
    if kind == "json":
        return _json_text(values)
    if kind == "timestamp":
        return _timestamps(values)
    if kind == "date":
        try:
            return pa.array(values, type=pa.string()).cast(pa.date32())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return _timestamps(values).cast(pa.date32())
    try:
        return pa.array(values, type=ARROW_TYPES[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        if kind == "string":
            return _as_text(values)
        text = _as_text(values)
        try:
            return pc.cast(text, ARROW_TYPES[kind])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return text


def _infer(values: list[Any]) -> pa.Array:
    """Array for a column not described by the spec: JSON for containers, else Arrow's inference."""
    if any(isinstance(v, (dict, list)) for v in values):
        return _json_text(values)
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return _as_text(values)
    if pa.types.is_null(array.type):
        return array.cast(pa.string())
    return array


def _flatten_bag(name: str, bags: list[Any]) -> dict[str, list[Any]]:
    """Flatten free-form objects dlt-style: ``properties__key``, nested dicts recursively."""
    keys: dict[str, None] = {}
    for bag in bags:
        if bag:
            keys.update(dict.fromkeys(bag))
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [(bag or _EMPTY).get(key) if isinstance(bag, dict) else None for bag in bags]
        column = f"{name}{SEPARATOR}{key}"
        if any(isinstance(v, dict) for v in values):
            out.update(_flatten_bag(column, values))
        else:
            out[column] = values
    return out


class PageConverter:
    """Converts the ``data`` list of a page into a pyarrow table with a fixed column plan."""

    def __init__(self, columns: Sequence[Column], flatten_bags: bool = False):
        self.columns = list(columns)
        self.flatten_bags = flatten_bags
        self._known_attributes = {c.path[1] for c in self.columns if len(c.path) > 1 and c.path[0] == "attributes"}
        self.schema = pa.schema([pa.field(c.name, ARROW_TYPES[c.kind]) for c in self.columns])

    def _lists(self, records: list[dict]) -> dict[tuple[str, ...], list[Any]]:
        """Values at every path prefix, computed once per page (one list comprehension per node)."""
        cache: dict[tuple[str, ...], list[Any]] = {(): records}

        def at(path: tuple[str, ...]) -> list[Any]:
            found = cache.get(path)
            if found is None:
                parent = at(path[:-1])
                key = path[-1]
                found = cache[path] = [p.get(key) if p.__class__ is dict else None for p in parent]
            return found

        for column in self.columns:
            at(column.path)
        return cache

    def convert(self, records: list[dict]) -> pa.Table:
        if not records:
            return self.schema.empty_table()
        values = self._lists(records)
        arrays: dict[str, pa.Array] = {}
        for column in self.columns:
            if self.flatten_bags and column.kind == "json" and column.path[0] == "attributes" and len(column.path) == 2:
                bags = values[column.path]
                if any(isinstance(b, dict) and b for b in bags):
                    for name, column_values in _flatten_bag(column.name, bags).items():
                        arrays[name] = _infer(column_values)
                    continue
            arrays[column.name] = to_array(values[column.path], column.kind)
        # attributes Klaviyo sent that the spec does not describe are kept, not dropped
        attributes = values.get(("attributes",), [])
        seen: set[str] = set()
        for attrs in attributes:
            if attrs:
                seen.update(attrs)
        for extra in sorted(seen - self._known_attributes):
            arrays.setdefault(extra, _infer([(a or _EMPTY).get(extra) for a in attributes]))
        return pa.table(arrays)
