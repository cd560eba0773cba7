"""JSON:API serialisation: resource objects, relationship blocks, collection links and cursors.

Records are stored with their ``attributes`` already as JSON text, so a page is built
by splicing strings (no per-record parse) unless ``fields[...]`` asks for a subset.
"""

from __future__ import annotations

import base64
import functools
import re
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode

import orjson

from .errors import invalid
from .spec import Spec
from .store import KINDS, Kind, rel_column


def jstr(value: str) -> str:
    """A JSON string literal."""
    return orjson.dumps(value).decode()


_URL_SAFE = re.compile(r"^[A-Za-z0-9$:@._~-]+$")
URL_SAFE_SQL = "[A-Za-z0-9$:@._~-]+"  # the same class for DuckDB's regexp_full_match


def url_id(value: str) -> str:
    """An id as it appears in a link: raw when URL-safe (Klaviyo shows ``$custom:::...`` raw), else %-encoded."""
    return value if _URL_SAFE.match(value) else quote(value, safe="-_.~")




@functools.lru_cache(maxsize=None)
def relationship_shapes(spec: Spec, type_: str) -> tuple[tuple[str, bool], ...]:
    """(name, is_to_many) of the relationships the spec gives a ``type_`` resource."""
    kind = KINDS[type_]
    try:
        op = spec.operation("GET", f"/api/{kind.collection}/{{id}}")
    except KeyError:
        return ()
    schema = spec.schema(op.response_schemas.get("200", {}))
    data = spec.schema(schema.get("properties", {}).get("data", {}))
    for part in data.get("allOf", []):  # profiles wrap their object in allOf
        part = spec.schema(part)
        if "relationships" in part.get("properties", {}):
            data = part
    rels = spec.schema(data.get("properties", {}).get("relationships", {})).get("properties", {})
    shapes = []
    for name, rel in rels.items():
        rel_data = spec.schema(spec.schema(rel).get("properties", {}).get("data", {}))
        shapes.append((name, rel_data.get("type") == "array"))
    return tuple(shapes)


def _object_properties(spec: Spec, schema: dict[str, Any]) -> dict[str, Any]:
    """Properties of a resource-object schema, merging ``allOf`` parts."""
    schema = spec.schema(schema)
    props = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        props.update(_object_properties(spec, part))
    return props


def _type_of(spec: Spec, props: dict[str, Any]) -> str | None:
    enum = spec.schema(props.get("type", {})).get("enum") or []
    return enum[0] if enum else None


def _shapes(spec: Spec, props: dict[str, Any]) -> tuple[tuple[str, bool], ...]:
    rels = _object_properties(spec, props.get("relationships", {}))
    shapes = []
    for name, rel in rels.items():
        rel_data = spec.schema(_object_properties(spec, rel).get("data", {}))
        shapes.append((name, rel_data.get("type") == "array"))
    return tuple(shapes)


@functools.lru_cache(maxsize=None)
def operation_shapes(spec: Spec, method: str, path: str, type_: str) -> tuple[tuple[str, bool], ...] | None:
    """Relationship shapes of ``type_`` objects in one operation's 200 body (primary or included)."""
    try:
        op = spec.operation(method, path)
    except KeyError:
        return None
    body = _object_properties(spec, op.response_schemas.get("200", {}))
    candidates = []
    data = spec.schema(body.get("data", {}))
    candidates.append(spec.schema(data.get("items", {})) if data.get("type") == "array" else data)
    included = spec.schema(body.get("included", {}))
    candidates += spec.schema(included.get("items", {})).get("oneOf", []) if included else []
    for candidate in candidates:
        props = _object_properties(spec, candidate)
        if _type_of(spec, props) == type_:
            return _shapes(spec, props)
    return None


def pick_fields(attributes: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """Sparse fieldset: keep only ``fields`` (dotted names reach into nested objects)."""
    out: dict[str, Any] = {}
    for name in fields:
        if name == "id":
            continue
        parts = name.split(".")
        node: Any = attributes
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None and parts[0] not in attributes:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = node
    return out


_PAGE_BUILDERS: dict[tuple, Callable[[list[tuple]], list[str | None]]] = {}


class Serializer:
    """Builds resource objects for one request (knows the base URL for links)."""

    def __init__(self, spec: Spec, base: str, operation: tuple[str, str] | None = None):
        self.spec = spec
        self.operation = operation  # (method, spec path): relationship shapes follow its response schema
        self.base = base  # e.g. "http://127.0.0.1:5000" (+ "/klaviyo" behind the gateway)

    def shapes(self, type_: str) -> tuple[tuple[str, bool], ...]:
        """(name, is_to_many) relationships a ``type_`` object carries in this operation's answer."""
        if self.operation is not None:
            found = operation_shapes(self.spec, self.operation[0], self.operation[1], type_)
            if found is not None:
                return found
        return relationship_shapes(self.spec, type_)

    def self_link(self, kind: Kind, id_: str) -> str:
        return f"{self.base}/api/{kind.collection}/{url_id(id_)}/"

    def rel_links(self, kind: Kind, id_: str, name: str) -> str:
        root = f"{self.base}/api/{kind.collection}/{url_id(id_)}"
        return f'{{"self":{jstr(f"{root}/relationships/{name}/")},"related":{jstr(f"{root}/{name}/")}}}'

    def fast_page(self, kind: Kind, extras: tuple[str, ...] = ()) -> Callable[[list[tuple]], list[str | None]]:
        """A page builder for rows ``(seq, id, attrs, *to_one ids, *extras, ...)`` -> JSON texts.

        Same output as :meth:`resource` for the common case (no sparse fieldset, no to-many
        data) but one precompiled ``%`` format per row, so a 1000-record page costs about a
        millisecond of Python.  Entries are None for rows whose ids need escaping (the caller
        falls back to :meth:`resource`).
        """
        key = (self.base, self.operation, kind.type, extras)
        cached = _PAGE_BUILDERS.get(key)
        if cached is not None:
            return cached
        base = jstr(self.base)[1:-1].replace("%", "%%")
        to_one = list(kind.to_one)
        n_rel = len(to_one)
        shapes = self.shapes(kind.type)
        link = f"{base}/api/{kind.collection}/%s"

        def compile_row(nulls: tuple[bool, ...]) -> Callable[[tuple, str], str]:
            fmt = ['{"type":' + jstr(kind.type) + ',"id":"%s"']
            args = ["r[1]"]
            if kind.has_attributes:
                fmt.append(',"attributes":%s')
                args.append("a")
            rels = []
            for name, is_many in shapes:
                piece = jstr(name) + ":{"
                if not is_many and name in kind.to_one and not nulls[to_one.index(name)]:
                    piece += '"data":{"type":' + jstr(KINDS[kind.to_one[name]].type) + ',"id":"%s"},'
                    args.append(f"r[{3 + to_one.index(name)}]")
                piece += '"links":{"self":"' + link + f'/relationships/{name}/","related":"' + link + f'/{name}/"}}}}'
                args += ["r[1]", "r[1]"]
                rels.append(piece)
            if rels:
                fmt.append(',"relationships":{' + ",".join(rels) + "}")
            fmt.append(',"links":{"self":"' + link + '/"}}')
            args.append("r[1]")
            namespace: dict[str, Any] = {"T": "".join(fmt)}
            exec(f"def row(r, a):\n    return T % ({', '.join(args)},)", namespace)  # noqa: S102 - indices only
            return namespace["row"]

        patterns = [tuple(bool(n >> i & 1) for i in range(n_rel)) for n in range(2 ** n_rel)]
        rows_by_nulls = [compile_row(p) for p in patterns]
        names = [jstr(x) for x in extras]
        first_extra = 3 + n_rel
        safe = _URL_SAFE.match

        def page(rows: list[tuple]) -> list[str | None]:
            ids = [r[1] for r in rows] + [r[i] for r in rows for i in range(3, first_extra) if r[i] is not None]
            all_safe = bool(rows) and safe("".join(ids)) is not None
            out: list[str | None] = []
            for r in rows:
                if not all_safe and any(x is not None and not safe(x) for x in (r[1], *r[3:first_extra])):
                    out.append(None)
                    continue
                a = r[2]
                for n, name in enumerate(names):
                    extra = r[first_extra + n]
                    if extra is not None:
                        a = a[:-1] + ("" if a == "{}" else ",") + name + ":" + extra + "}"
                index = 0
                for i in range(n_rel):
                    if r[3 + i] is None:
                        index |= 1 << i
                out.append(rows_by_nulls[index](r, a))
            return out

        if len(_PAGE_BUILDERS) > 2000:
            _PAGE_BUILDERS.clear()
        _PAGE_BUILDERS[key] = page
        return page

    def resource_sql(self, kind: Kind, attrs: str = "attrs") -> str:
        """A DuckDB expression building the same JSON text as :meth:`fast_page` for one row.

        Reads columns ``id``, ``attrs`` (or the ``attrs`` expression) and ``rel_<name>``; only
        valid for URL-safe ids (the caller checks :data:`URL_SAFE_SQL`), no extras, no fieldset.
        """
        def lit(text: str) -> str:
            return "'" + text.replace("'", "''") + "'"

        base = jstr(self.base)[1:-1]
        link = f"{base}/api/{kind.collection}/"
        parts = [lit('{"type":' + jstr(kind.type) + ',"id":"'), "id", lit('"')]
        if kind.has_attributes:
            parts += [lit(',"attributes":'), attrs]
        rels = []
        for name, is_many in self.shapes(kind.type):
            piece = [lit(jstr(name) + ":{")]
            if not is_many and name in kind.to_one:
                column = rel_column(name)
                data = [lit('"data":{"type":' + jstr(KINDS[kind.to_one[name]].type) + ',"id":"'), column, lit('"},')]
                piece.append(f"CASE WHEN {column} IS NULL THEN '' ELSE concat({', '.join(data)}) END")
            piece += [lit('"links":{"self":"' + link), "id", lit(f'/relationships/{name}/","related":"' + link), "id",
                      lit(f'/{name}/"}}}}')]
            rels.append(piece)
        if rels:
            parts.append(lit(',"relationships":{'))
            for n, piece in enumerate(rels):
                parts += ([lit(",")] if n else []) + piece
            parts.append(lit("}"))
        parts += [lit(',"links":{"self":"' + link), "id", lit('/"}}')]
        return "concat(" + ", ".join(parts) + ")"  # one allocation per row (a || chain copies at each step)

    def resource(self, kind: Kind, id_: str, attrs: str, to_one: dict[str, str | None] | None = None,
                 extras: dict[str, str | None] | None = None, fields: tuple[str, ...] | None = None,
                 many_data: dict[str, list[str]] | None = None) -> str:
        """One resource object as JSON text.

        ``attrs`` is the stored attributes JSON; ``extras`` maps additional-field names to JSON
        text; ``to_one`` maps relationship names to target ids; ``many_data`` gives to-many
        relationship ids to show as ``data`` (only when the request included them).
        """
        if fields is not None or (extras and any(v is not None for v in extras.values())):
            attributes = orjson.loads(attrs)
            for name, text in (extras or {}).items():
                if text is not None:
                    attributes[name] = orjson.loads(text)
            if fields is not None:
                attributes = pick_fields(attributes, fields)
            attrs = orjson.dumps(attributes).decode()
        parts = [f'{{"type":{jstr(kind.type)},"id":{jstr(id_)}']
        if kind.has_attributes:
            parts.append(f',"attributes":{attrs}')
        shapes = self.shapes(kind.type)
        if shapes:
            rels = []
            for name, is_many in shapes:
                links = self.rel_links(kind, id_, name)
                if not is_many and to_one is not None and name in to_one:
                    target_id = to_one[name]
                    if target_id is None:
                        rels.append(f'{jstr(name)}:{{"links":{links}}}')
                    else:
                        target = KINDS[kind.to_one[name]].type
                        rels.append(f'{jstr(name)}:{{"data":{{"type":{jstr(target)},"id":{jstr(target_id)}}},"links":{links}}}')
                elif is_many and many_data is not None and name in many_data:
                    target = RELATED_TYPES.get((kind.type, name), name.rstrip("s"))
                    data = ",".join(f'{{"type":{jstr(target)},"id":{jstr(i)}}}' for i in many_data[name])
                    rels.append(f'{jstr(name)}:{{"data":[{data}],"links":{links}}}')
                else:
                    rels.append(f'{jstr(name)}:{{"links":{links}}}')
            parts.append(',"relationships":{' + ",".join(rels) + "}")
        parts.append(f',"links":{{"self":{jstr(self.self_link(kind, id_))}}}}}')
        return "".join(parts)


# target type of to-many relationship names whose singular is not obvious
RELATED_TYPES: dict[tuple[str, str], str] = {
    ("profile", "lists"): "list", ("profile", "segments"): "segment", ("profile", "push-tokens"): "push-token",
    ("profile", "conversations"): "conversation",
    ("list", "profiles"): "profile", ("segment", "profiles"): "profile",
    ("list", "tags"): "tag", ("segment", "tags"): "tag", ("campaign", "tags"): "tag", ("flow", "tags"): "tag",
    ("list", "flow-triggers"): "flow", ("segment", "flow-triggers"): "flow", ("metric", "flow-triggers"): "flow",
    ("campaign", "campaign-messages"): "campaign-message", ("flow", "flow-actions"): "flow-action",
    ("flow-action", "flow-messages"): "flow-message", ("tag", "campaigns"): "campaign", ("tag", "flows"): "flow",
    ("tag", "lists"): "list", ("tag", "segments"): "segment", ("catalog-item", "variants"): "catalog-variant",
    ("catalog-item", "categories"): "catalog-category", ("catalog-category", "items"): "catalog-item",
    ("webhook", "webhook-topics"): "webhook-topic", ("event", "attributions"): "attribution",
    ("coupon", "coupon-codes"): "coupon-code",
}


# -- cursors -------------------------------------------------------------------------
def encode_cursor(values: list[Any]) -> str:
    """Opaque page cursor holding the keyset position (last sort value + seq)."""
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list):
            raise ValueError
        return values
    except Exception:  # noqa: BLE001 - any malformed cursor is the client's error
        raise invalid(f"Invalid page cursor {cursor!r}; use the links.next URL of the previous page.",
                      parameter="page[cursor]") from None


def page_url(base: str, path: str, args: list[tuple[str, str]], cursor: str | None) -> str:
    """The request URL with ``page[cursor]`` replaced (query order otherwise kept)."""
    kept = [(k, v) for k, v in args if k != "page[cursor]"]
    if cursor is not None:
        kept.append(("page[cursor]", cursor))
    query = urlencode(kept, safe="[],:'()$@")
    return f"{base}{quote(path, safe='/$:@-_.~')}" + (f"?{query}" if query else "")


def collection_body(items: list[str], links: dict[str, str], included: list[str] | None = None) -> bytes:
    body = '{"data":[' + ",".join(items) + '],"links":' + orjson.dumps(links).decode()
    if included is not None:
        body += ',"included":[' + ",".join(included) + "]"
    return (body + "}").encode()


def single_body(item: str | None, links: dict[str, str], included: list[str] | None = None) -> bytes:
    body = '{"data":' + (item if item is not None else "null") + ',"links":' + orjson.dumps(links).decode()
    if included is not None:
        body += ',"included":[' + ",".join(included) + "]"
    return (body + "}").encode()
