"""Table columns of a stream, derived from the response schema in the OpenAPI spec.

Attributes become top-level columns, nested objects are flattened dlt-style
(``location__city``), date-time strings become timezone-aware timestamps, arrays and
free-form objects become JSON, to-one relationships become ``<name>_id``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from klaviyo_source.naming import SEPARATOR, column_name, hashed
from klaviyo_source.streams import Stream

KINDS = ("string", "timestamp", "date", "bool", "int", "float", "json")
DLT_TYPES = {
    "string": "text",
    "timestamp": "timestamp",
    "date": "date",
    "bool": "bool",
    "int": "bigint",
    "float": "double",
    "json": "json",
}


@dataclass(frozen=True)
class Column:
    name: str  # column name in the table
    path: tuple[str, ...]  # where the value sits in the JSON:API record
    kind: str  # one of KINDS
    description: str = ""

    def dlt_hint(self) -> dict[str, Any]:
        hint: dict[str, Any] = {"name": self.name, "data_type": DLT_TYPES[self.kind], "nullable": True}
        if self.kind == "timestamp":
            hint["timezone"] = True
        if self.description:
            hint["description"] = self.description
        return hint


@functools.lru_cache(maxsize=1)
def spec():
    from klaviyo_sandbox.spec import load_spec

    return load_spec()


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and "properties" in out:
            props = dict(out["properties"])
            for name, sub in value.items():
                props[name] = _merge(resolve(props[name]), resolve(sub)) if name in props else sub
            out["properties"] = props
        elif key not in out:
            out[key] = value
    return out


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve $ref and fold allOf into one schema (properties deep-merged)."""
    schema = spec().schema(schema)
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            merged = _merge(merged, resolve(part))
        return merged
    return schema


def _variants(schema: dict[str, Any]) -> list[dict[str, Any]] | None:
    options = schema.get("oneOf") or schema.get("anyOf")
    return [resolve(v) for v in options] if options else None


def _scalar_kind(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    fmt = schema.get("format")
    if kind == "string":
        return {"date-time": "timestamp", "date": "date"}.get(fmt, "string")
    return {"boolean": "bool", "integer": "int", "number": "float"}.get(kind, "json")


def _kind_of_variants(variants: list[dict[str, Any]]) -> str:
    kinds = {_scalar_kind(v) for v in variants}
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {"int", "float"}:
        return "float"
    return "string"


def _object_properties(schema: dict[str, Any]) -> dict[str, Any] | None:
    """Properties of an object schema, union over oneOf variants; None for scalars/arrays/free-form."""
    variants = _variants(schema)
    if variants is not None:
        if all(v.get("type") == "object" or "properties" in v for v in variants):
            props: dict[str, Any] = {}
            for variant in variants:
                for name, sub in (variant.get("properties") or {}).items():
                    props.setdefault(name, sub)
            return props or None
        return None
    if schema.get("type") == "object" or "properties" in schema:
        return schema.get("properties") or None
    return None


def _flatten(schema: dict[str, Any], path: tuple[str, ...], name: tuple[str, ...]) -> list[Column]:
    schema = resolve(schema)
    props = _object_properties(schema)
    if props is not None:
        columns: list[Column] = []
        for key, sub in props.items():
            columns.extend(_flatten(sub, path + (key,), name + (key,)))
        return columns
    variants = _variants(schema)
    if variants is not None:
        kind = _kind_of_variants(variants)
    elif schema.get("type") == "array" or schema.get("type") == "object":
        kind = "json"
    else:
        kind = _scalar_kind(schema)
    return [Column(column_name(name), path, kind, (schema.get("description") or "").split("\n")[0][:200])]


def item_schema(stream: Stream) -> dict[str, Any]:
    """The schema of one record in the endpoint's 200 response (``data[]``)."""
    operation = spec().operation("GET", stream.path)
    body = resolve(operation.response_schemas["200"])
    return resolve(body["properties"]["data"]["items"])


def filter_operators(stream: Stream) -> dict[str, tuple[str, ...]]:
    """The ``filter`` fields the spec allows on the stream's list endpoint, with their operators."""
    return dict(spec().operation("GET", stream.path).filters)


def additional_field_values(stream: Stream) -> tuple[str, ...]:
    """Values the spec allows for ``additional-fields[<type>]`` on this endpoint."""
    operation = spec().operation("GET", stream.path)
    return operation.enum(f"additional-fields[{stream.resource_type}]")


def stream_columns(stream: Stream, enabled_fields: tuple[str, ...] = ()) -> list[Column]:
    """Columns of the stream's table: id, attributes (flattened), relationship ids, promoted values."""
    item = item_schema(stream)
    attributes = resolve(item["properties"]["attributes"])
    opt_in = set(additional_field_values(stream)) - set(enabled_fields)
    columns = [Column("id", ("id",), "string", "Klaviyo id (primary key)")]
    additional = set(additional_field_values(stream))
    # the spec merges additional-fields attributes in first; list the default attributes first
    ordered = sorted((attributes.get("properties") or {}).items(), key=lambda kv: kv[0] in additional)
    for key, sub in ordered:
        if key in opt_in:
            continue
        if key in stream.json_columns:
            columns.append(Column(key, ("attributes", key), "json", "free-form JSON object"))
            continue
        for column in _flatten(sub, ("attributes", key), (key,)):
            if column.name in stream.timestamp_columns and column.kind == "string":
                column = Column(column.name, column.path, "timestamp", column.description)
            columns.append(column)
    for relation in stream.relationships:
        columns.append(
            Column(
                f"{relation.replace('-', '_')}_id",
                ("relationships", relation, "data", "id"),
                "string",
                f"id of the related {relation}",
            )
        )
    for promoted in stream.promoted:
        columns.append(Column(promoted.column, promoted.path, promoted.kind, f"from {'.'.join(promoted.path[1:])}"))
    return _unique_names(columns)


def _unique_names(columns: list[Column]) -> list[Column]:
    """A shortened name that another column already has falls back to the hashed form (naming.py)."""
    seen: set[str] = set()
    out = []
    for column in columns:
        if column.name in seen and column.path[0] == "attributes":
            column = Column(hashed(SEPARATOR.join(column.path[1:])), column.path, column.kind, column.description)
        seen.add(column.name)
        out.append(column)
    return out


def relationship_is_to_one(stream: Stream, relation: str) -> bool:
    item = item_schema(stream)
    relationships = resolve(item["properties"].get("relationships", {}))
    rel = resolve((relationships.get("properties") or {}).get(relation, {}))
    data = resolve((rel.get("properties") or {}).get("data", {}))
    return data.get("type") == "object" or ("properties" in data and data.get("type") != "array")
