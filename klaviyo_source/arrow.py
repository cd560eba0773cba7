"""JSON:API page -> pyarrow table, with the columns analysts query.

dlt's arrow path skips row-by-row normalisation, so this module produces what dlt's
normaliser would: flattened nested objects (``location__city``), timezone-aware
timestamps, JSON text for free-form bags, ``<relation>_id`` columns.

Fast path: a page is decoded by msgspec straight into structs generated from the column
plan (``PageConverter.decoder``): fields outside the plan (per-record ``links``, unread
relationships) are skipped without building Python objects, and free-form bags stay raw
JSON bytes (no parse, no re-serialisation).  Values are then pulled column-wise and
timestamps parsed by Arrow's C++ kernels.  ``convert(list_of_dicts)`` serves callers that
already hold orjson-parsed records.
"""

from __future__ import annotations

import array
import itertools
from datetime import datetime
from typing import Any, Sequence

import re
from operator import attrgetter
from typing import Optional

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from klaviyo_source.cleaning import CleaningDecoder
from klaviyo_source.columns import Column
from klaviyo_source.flatten import BagFlattener

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


_NULL = b"null"
_NULL_RAW = msgspec.Raw(_NULL)


def _raw_bytes(values: list[Any]) -> list[Any]:
    """Raw JSON of each value: the ``msgspec.Raw`` spans as decoded (None, under an absent parent -> ``null``)."""
    try:
        values.index(None)
    except ValueError:
        return values
    return [_NULL_RAW if raw is None else raw for raw in values]


def _raw_text(raws: list[Any]) -> pa.Array:
    """Raw JSON spans (see ``_raw_bytes``) -> JSON text column; JSON null / absent -> NULL.

    The spans are joined into one buffer and framed by their lengths (no per-value
    ``bytes`` objects); Arrow's cast to string checks the UTF-8.
    """
    data = b"".join(raws)
    large = len(data) >= 2**31 - 1
    offsets = array.array("q" if large else "i", [0])
    offsets.extend(itertools.accumulate(map(len, raws)))
    binary = pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), len(raws),
                                   [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    text = binary.cast(pa.large_string() if large else pa.string())
    null = pc.or_(pc.equal(text, "null"), pc.equal(pc.binary_length(binary), 0))
    text = pc.if_else(null, pa.scalar(None, text.type), text)
    return text.cast(pa.string()) if large else text


def _attr(key: str, index: int) -> str:
    return f"f{index}_{re.sub(r'[^0-9a-zA-Z_]', '_', key)}"


class _Plan:
    """msgspec struct types mirroring the column paths; leaves are ``Any`` (no type failures)."""

    def __init__(self, columns: Sequence[Column]):
        tree: dict[str, Any] = {}
        self.promoted_in_bags: list[tuple[Column, tuple[str, ...]]] = []
        bag_paths = {c.path for c in columns if c.kind == "json"}
        for column in columns:
            inside = next((b for b in bag_paths if column.path[: len(b)] == b and column.path != b), None)
            if inside is not None:  # a value lifted out of a raw bag: decoded from the bag's bytes
                self.promoted_in_bags.append((column, inside))
                continue
            node = tree
            for key in column.path[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    break
            else:
                node.setdefault(column.path[-1], "raw" if column.kind == "json" else "any")
        self.attrs: dict[tuple[str, ...], str] = {}
        counter = [0]
        record = self._struct(tree, (), counter, self.attrs)
        links = msgspec.defstruct("Links", [("next", Any, None)], gc=False)
        self.page_type = msgspec.defstruct("Page", [("data", list[record], []), ("links", Optional[links], None)], gc=False)
        self.decoder = msgspec.json.Decoder(self.page_type)
        # promoted values inside bags, e.g. ("$value",) inside event_properties
        self.bag_decoders: dict[tuple[str, ...], tuple[msgspec.json.Decoder, dict[tuple[str, ...], str]]] = {}
        for bag in {b for _, b in self.promoted_in_bags}:
            sub: dict[str, Any] = {}
            for column, inside in self.promoted_in_bags:
                if inside == bag:
                    node = sub
                    for key in column.path[len(bag):-1]:
                        node = node.setdefault(key, {})
                    node[column.path[-1]] = "any"
            names: dict[tuple[str, ...], str] = {}
            bag_struct = self._struct(sub, (), counter, names)
            self.bag_decoders[bag] = (msgspec.json.Decoder(list[Optional[bag_struct]]), names)

    def _struct(self, tree: dict[str, Any], path: tuple[str, ...], counter: list[int], attrs: dict) -> type:
        fields = []
        rename = {}
        for key, sub in tree.items():
            counter[0] += 1
            name = _attr(key, counter[0])
            rename[name] = key
            attrs[path + (key,)] = name
            if isinstance(sub, dict):
                fields.append((name, Optional[self._struct(sub, path + (key,), counter, attrs)], None))
            elif sub == "raw":
                fields.append((name, msgspec.Raw, msgspec.Raw(_NULL)))
            else:
                fields.append((name, Any, None))
        # gc=False: decoded records hold no reference cycles; left tracked, the thousands of
        # structs per page trigger full garbage collections over the whole heap (~10x the decode)
        return msgspec.defstruct(f"S{counter[0]}", fields, rename=rename, gc=False)


class PageConverter:
    """Converts a page's records into a pyarrow table with a fixed column plan."""

    def __init__(self, columns: Sequence[Column], flatten_bags: bool | Sequence[str] = False):
        """Args:
            columns: the column plan (``columns.stream_columns``).
            flatten_bags: names of free-form JSON columns to flatten into columns (flatten.py);
                True: every top-level JSON attribute.
        """
        self.columns = list(columns)
        bags = [c.name for c in self.columns if c.kind == "json" and c.path[0] == "attributes" and len(c.path) == 2]
        wanted = bags if flatten_bags is True else [b for b in (flatten_bags or ()) if b in bags]
        self.flatteners = {name: BagFlattener(name) for name in wanted}
        self._known_attributes = {c.path[1] for c in self.columns if len(c.path) > 1 and c.path[0] == "attributes"}
        self.schema = pa.schema([pa.field(c.name, ARROW_TYPES[c.kind]) for c in self.columns])
        self._plan = _Plan(self.columns)
        # msgspec decoder for a whole page; NUL and lone surrogates are cleaned out first (cleaning.py)
        self.decoder = CleaningDecoder(self._plan.decoder)

    def keep_claims(self, claims: dict[str, list[str]]) -> None:
        """Keep the owners of flattened columns in ``claims`` (the resource state's dict), so a
        column holds the same key run after run (flatten.py)."""
        for flattener in self.flatteners.values():
            flattener.claims = claims

    def _flatten(self, name: str, bags: list[Any], arrays: dict[str, pa.Array]) -> None:
        columns, rest = self.flatteners[name].flatten(bags)
        arrays[name] = _json_text(rest)  # what has no column of its own (NULL when nothing)
        for column, values in columns.items():
            arrays[column] = _infer(values)

    def convert_page(self, page: Any) -> pa.Table:
        """Table from a page decoded with ``self.decoder`` (the fast path)."""
        return self.convert_records(page.data)

    def convert_records(self, records: list[Any]) -> pa.Table:
        """Table from decoded records (``page.data`` of one or many pages)."""
        if not records:
            return self.schema.empty_table()
        plan = self._plan
        cache: dict[tuple[str, ...], list[Any]] = {(): records}

        def at(path: tuple[str, ...]) -> list[Any]:
            found = cache.get(path)
            if found is None:
                parent = at(path[:-1])
                get = attrgetter(plan.attrs[path])
                try:
                    found = list(map(get, parent))
                except AttributeError:  # some parent objects are absent (None)
                    found = [None if p is None else get(p) for p in parent]
                cache[path] = found
            return found

        raw_cache: dict[tuple[str, ...], list[bytes]] = {}

        def raw_at(path: tuple[str, ...]) -> list[bytes]:  # a bag's bytes serve its column and promoted values
            found = raw_cache.get(path)
            if found is None:
                found = raw_cache[path] = _raw_bytes(at(path))
            return found

        arrays: dict[str, pa.Array] = {}
        promoted: dict[str, pa.Array] = {}
        for bag, (decoder, names) in plan.bag_decoders.items():
            raws = raw_at(bag)
            try:  # one decoder call for the whole batch: [bag, bag, ...]
                decoded = decoder.decode(b"[" + b",".join(raws) + b"]")
            except (msgspec.ValidationError, msgspec.DecodeError):  # some bag is not an object
                decoded = []
                for raw in raws:
                    try:
                        decoded.append(decoder.decode(b"[" + raw + b"]")[0])
                    except (msgspec.ValidationError, msgspec.DecodeError):
                        decoded.append(None)
            sub_cache: dict[tuple[str, ...], list[Any]] = {(): decoded}

            def sub_at(path: tuple[str, ...]) -> list[Any]:
                found = sub_cache.get(path)
                if found is None:
                    parent = sub_at(path[:-1])
                    get = attrgetter(names[path])
                    found = sub_cache[path] = [None if p is None else get(p) for p in parent]
                return found

            for column, inside in plan.promoted_in_bags:
                if inside == bag:
                    promoted[column.name] = to_array(sub_at(column.path[len(bag):]), column.kind)
        for column in self.columns:
            if column.name in promoted:
                arrays[column.name] = promoted[column.name]
            elif column.name in self.flatteners:
                bags = [None if r is None else orjson.loads(bytes(r) or b"null") for r in at(column.path)]
                self._flatten(column.name, bags, arrays)
            elif column.kind == "json":
                arrays[column.name] = _raw_text(raw_at(column.path))
            else:
                arrays[column.name] = to_array(at(column.path), column.kind)
        return pa.table(arrays)

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
            if column.name in self.flatteners:
                self._flatten(column.name, values[column.path], arrays)
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
