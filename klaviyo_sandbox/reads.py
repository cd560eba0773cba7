"""GET handlers: collections, single resources, related resources and relationship ids.

One generic engine serves every read endpoint: it validates the query (``filter``,
``sort``, ``page[size]``, ``fields[...]``, ``additional-fields[...]``, ``include``)
against the operation's spec entry, turns it into one DuckDB keyset query, and
splices the stored attribute JSON into JSON:API envelopes.  :func:`register_reads`
wires every spec GET path whose resource type and relationship the store knows.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from .app import RequestContext, SandboxApp
from .envelopes import (RELATED_TYPES, URL_SAFE_SQL, Serializer, collection_body, decode_cursor, encode_cursor, jstr,
                        page_url, single_body)
from .errors import ApiError, invalid, not_found
from .filters import Condition, parse_filter, validate
from .store import KIND_BY_COLLECTION, KINDS, UTC, Kind, extra_column, naive_utc, rel_column

UNSIZED_PAGE = 200  # endpoints with page[cursor] but no page[size] (e.g. get_metrics)


# -- relationships the store can answer ---------------------------------------------------
@dataclass(frozen=True)
class ToOne:
    """Parent row's ``rel_<name>`` column holds the target id."""

    target: str


@dataclass(frozen=True)
class Children:
    """Child rows of ``target`` type whose ``rel_<fk>`` column is the parent id."""

    target: str
    fk: str


@dataclass(frozen=True)
class Linked:
    """Rows joined through the ``links`` table; ``side`` is the parent's side (a/b)."""

    target: str
    link: str
    side: str


RELATIONS: dict[tuple[str, str], ToOne | Children | Linked] = {
    ("event", "metric"): ToOne("metric"),
    ("event", "profile"): ToOne("profile"),
    ("profile", "lists"): Linked("list", "list_members", "b"),
    ("profile", "segments"): Linked("segment", "segment_members", "b"),
    ("list", "profiles"): Linked("profile", "list_members", "a"),
    ("segment", "profiles"): Linked("profile", "segment_members", "a"),
    ("list", "tags"): Linked("tag", "tag:list", "b"),
    ("segment", "tags"): Linked("tag", "tag:segment", "b"),
    ("campaign", "tags"): Linked("tag", "tag:campaign", "b"),
    ("flow", "tags"): Linked("tag", "tag:flow", "b"),
    ("tag", "campaigns"): Linked("campaign", "tag:campaign", "a"),
    ("tag", "flows"): Linked("flow", "tag:flow", "a"),
    ("tag", "lists"): Linked("list", "tag:list", "a"),
    ("tag", "segments"): Linked("segment", "tag:segment", "a"),
    ("tag", "tag-group"): ToOne("tag-group"),
    ("tag-group", "tags"): Children("tag", "tag-group"),
    ("campaign", "campaign-messages"): Children("campaign-message", "campaign"),
    ("campaign-message", "campaign"): ToOne("campaign"),
    ("campaign-message", "template"): ToOne("template"),
    ("flow", "flow-actions"): Children("flow-action", "flow"),
    ("flow-action", "flow"): ToOne("flow"),
    ("flow-action", "flow-messages"): Children("flow-message", "flow-action"),
    ("flow-message", "flow-action"): ToOne("flow-action"),
    ("flow-message", "template"): ToOne("template"),
    ("coupon", "coupon-codes"): Children("coupon-code", "coupon"),
    ("coupon-code", "coupon"): ToOne("coupon"),
    ("coupon-code", "profile"): ToOne("profile"),
    ("catalog-item", "variants"): Children("catalog-variant", "item"),
    ("catalog-variant", "item"): ToOne("catalog-item"),
    ("catalog-item", "categories"): Linked("catalog-category", "item_categories", "a"),
    ("catalog-category", "items"): Linked("catalog-item", "item_categories", "b"),
    ("webhook", "webhook-topics"): Linked("webhook-topic", "webhook_topics", "a"),
}


# -- a query in the making ---------------------------------------------------------------
@dataclass
class Source:
    """FROM clause of a read: the kind's table as ``t`` (possibly joined to ``links`` as ``l``)."""

    kind: Kind
    from_sql: str
    where: list[str]
    params: list[Any]
    seq_expr: str = "t.seq"
    joined: bool = False  # links alias l available (membership endpoints)


def base_source(ctx: RequestContext, kind: Kind) -> Source:
    return Source(kind, f"{kind.table} t", ["t.account = ?"], [ctx.account])


def related_source(ctx: RequestContext, parent: Kind, rel: ToOne | Children | Linked, parent_id: str) -> Source:
    kind = KINDS[rel.target]
    if isinstance(rel, Children):
        return Source(kind, f"{kind.table} t", ["t.account = ?", f"t.{rel_column(rel.fk)} = ?"], [ctx.account, parent_id])
    if isinstance(rel, Linked):
        mine, other = ("a", "b") if rel.side == "a" else ("b", "a")
        return Source(kind, f"{kind.table} t JOIN links l ON l.account = t.account AND l.{other} = t.id",
                      ["t.account = ?", "l.link = ?", f"l.{mine} = ?"], [ctx.account, rel.link, parent_id],
                      seq_expr="l.seq", joined=True)
    raise TypeError(rel)


# -- additional-fields[...] ------------------------------------------------------------------
_MEMBER_COUNT = ("(SELECT count(*) FROM links x WHERE x.account = t.account AND x.link = '{link}' AND x.a = t.id)"
                 "::VARCHAR")
COMPUTED_EXTRAS = {
    ("list", "profile_count"): _MEMBER_COUNT.format(link="list_members"),
    ("segment", "profile_count"): _MEMBER_COUNT.format(link="segment_members"),
}


def extra_sql(kind: Kind, name: str) -> str:
    """SQL giving an additional field's JSON text (stored ``x_<name>`` column, or computed); NULL = omitted."""
    if name in kind.extras:
        return f"t.{extra_column(name)}"
    return COMPUTED_EXTRAS.get((kind.type, name), "NULL")


# -- field -> SQL ---------------------------------------------------------------------------
_SUBSCRIPTION_FIELD = re.compile(r"^subscriptions\.(.+)\.(suppression|list_suppressions)\.(\w+)$")


def field_sql(source: Source, field: str) -> tuple[str, str]:
    """(SQL expression, type) for a filter/sort field of this endpoint; type in VARCHAR/TIMESTAMP/BOOLEAN/BIGINT/LIST/JSON."""
    kind = source.kind
    if field in ("id", "ids", "profile_id") and (field != "profile_id" or kind.type == "profile"):
        return "t.id", "VARCHAR"
    if field == "joined_group_at" and source.joined:
        return "l.joined_at", "TIMESTAMP"
    if field in ("metric_id", "profile_id") and field[:-3] in kind.to_one:
        return f"t.{rel_column(field[:-3])}", "VARCHAR"
    if field in kind.to_one:  # has(profile)
        return f"t.{rel_column(field)}", "VARCHAR"
    if field.endswith(".id"):
        name = field[:-3]
        if name in kind.to_one:
            return f"t.{rel_column(name)}", "VARCHAR"
        if kind.type == "catalog-item" and name == "category":
            return "(SELECT list(b) FROM links x WHERE x.account = t.account AND x.link = 'item_categories' AND x.a = t.id)", "LIST"
        if kind.type == "catalog-category" and name == "item":
            return "(SELECT list(a) FROM links x WHERE x.account = t.account AND x.link = 'item_categories' AND x.b = t.id)", "LIST"
    if field == "messages.channel" and "channel" in kind.columns:
        return "t.channel", "VARCHAR"
    column = field.replace(".", "_")
    if column in kind.columns:
        return f't."{column}"', kind.columns[column][0]
    if field in kind.columns:
        return f't."{field}"', kind.columns[field][0]
    match = _SUBSCRIPTION_FIELD.match(field)
    if match and "subscriptions" in kind.extras:
        path = f"$.{match.group(1)}.{match.group(2)}[*].{match.group(3)}"
        element = "TIMESTAMPTZ" if match.group(3) == "timestamp" else "VARCHAR"
        return f"CAST(json_extract_string(t.x_subscriptions, '{path}') AS {element}[])", "LIST"
    return f"json_extract(t.attrs, '$.\"{field}\"')", "JSON"


def _coerce(value: Any, sql_type: str, field: str) -> Any:
    if sql_type == "TIMESTAMP":
        if not isinstance(value, dt.datetime):
            raise invalid(f"Invalid filter provided: '{field}' needs an unquoted ISO 8601 datetime such as "
                          "2024-01-01T00:00:00+00:00, got " + repr(value) + ".", parameter="filter")
        return naive_utc(value)
    if sql_type == "BIGINT":
        if isinstance(value, dt.datetime):
            return int(value.timestamp())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f"Invalid filter provided: '{field}' needs a number or datetime, got {value!r}.", parameter="filter")
        return int(value)
    if sql_type == "BOOLEAN":
        if not isinstance(value, bool):
            raise invalid(f"Invalid filter provided: '{field}' needs true or false, got {value!r}.", parameter="filter")
        return value
    if sql_type == "VARCHAR":
        if isinstance(value, (dt.datetime, bool)) or value is None:
            raise invalid(f"Invalid filter provided: '{field}' needs a quoted string, got {value!r}.", parameter="filter")
        return str(value)
    return value


_COMPARE = {"greater-than": ">", "greater-or-equal": ">=", "less-than": "<", "less-or-equal": "<="}


def condition_sql(source: Source, cond: Condition) -> tuple[str, list[Any]]:
    expr, sql_type = field_sql(source, cond.field)
    op, value = cond.operator, cond.value
    if op == "has":
        return f"{expr} IS NOT NULL", []
    if sql_type == "LIST":
        values = value if isinstance(value, list) else [value]
        values = [naive_utc(v).replace(tzinfo=UTC) if isinstance(v, dt.datetime) else v for v in values]
        if op in ("equals", "any"):
            return f"list_has_any({expr}, ?)", [values]
        if op in _COMPARE:
            return f"len(list_filter({expr}, lambda x: x {_COMPARE[op]} ?)) > 0", [values[0]]
    if sql_type == "JSON":
        if isinstance(value, list):
            sample = value[0] if value else ""
        else:
            sample = value
        if isinstance(sample, bool):
            expr, sql_type = f"TRY_CAST({expr} AS BOOLEAN)", "BOOLEAN"
        elif isinstance(sample, (int, float)):
            expr, sql_type = f"TRY_CAST({expr} AS DOUBLE)", "DOUBLE"
        elif isinstance(sample, dt.datetime):
            expr, sql_type = f"TRY_CAST(({expr} ->> '$') AS TIMESTAMPTZ)", "TIMESTAMPTZ"
        else:
            expr, sql_type = f"({expr} ->> '$')", "VARCHAR"
    if sql_type in ("DOUBLE", "TIMESTAMPTZ"):
        coerce = lambda v: v  # noqa: E731
    else:
        coerce = lambda v: _coerce(v, sql_type, cond.field)  # noqa: E731
    if op == "any" or (op == "equals" and isinstance(value, list)):
        values = [coerce(v) for v in value]
        if not values:
            return "FALSE", []
        return f"{expr} IN ({', '.join('?' * len(values))})", values
    if op == "equals":
        if value is None:
            return f"{expr} IS NULL", []
        return f"{expr} = ?", [coerce(value)]
    if op in _COMPARE:
        return f"{expr} {_COMPARE[op]} ?", [coerce(value)]
    if op in ("contains", "starts-with", "ends-with"):
        text = coerce(value) if sql_type == "VARCHAR" else str(value)
        func = {"contains": "contains", "starts-with": "starts_with", "ends-with": "ends_with"}[op]
        return f"{func}(CAST({expr} AS VARCHAR), ?)", [text]
    raise invalid(f"Invalid filter provided: operator '{op}' is not supported on '{cond.field}'.", parameter="filter")


# -- query parameters ----------------------------------------------------------------------
@dataclass
class ReadOptions:
    fields: dict[str, tuple[str, ...]]
    additional: tuple[str, ...]
    include: tuple[str, ...]


def _list_param(ctx: RequestContext, name: str) -> tuple[str, ...] | None:
    raw = ctx.args.get(name)
    if raw is None:
        return None
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    allowed = ctx.op.enum(name)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise invalid(f"Invalid value(s) {', '.join(repr(b) for b in bad)} for '{name}'; allowed: "
                      f"{', '.join(allowed) or 'none'}.", parameter=name)
    return values


def read_options(ctx: RequestContext, kind: Kind) -> ReadOptions:
    fields: dict[str, tuple[str, ...]] = {}
    additional: tuple[str, ...] = ()
    for key in ctx.args.keys():
        if key.startswith("fields[") or key.startswith("additional-fields["):
            if key not in ctx.op.parameters:
                raise invalid(f"'{key}' is not a valid parameter for this endpoint.", parameter=key)
            values = _list_param(ctx, key) or ()
            if key.startswith("fields["):
                fields[key[7:-1]] = values
            elif key[18:-1] == kind.type:
                additional = values
    include = _list_param(ctx, "include") if "include" in ctx.op.parameters else None
    if include is None and "include" in ctx.args:
        raise invalid("'include' is not a valid parameter for this endpoint.", parameter="include")
    return ReadOptions(fields, additional, include or ())


def page_size(ctx: RequestContext) -> int | None:
    op = ctx.op
    raw = ctx.args.get("page[size]")
    if op.page_size is None:
        if raw is not None:
            raise invalid("'page[size]' is not a valid parameter for this endpoint.", parameter="page[size]")
        return UNSIZED_PAGE if "page[cursor]" in op.parameters else None
    if raw is None:
        return op.page_size.default
    try:
        size = int(raw)
    except ValueError:
        size = None
    if size is None or not op.page_size.minimum <= size <= op.page_size.maximum:
        raise invalid(f"Invalid page[size] {raw!r}: must be an integer between {op.page_size.minimum} and "
                      f"{op.page_size.maximum}.", parameter="page[size]")
    return size


def filters(ctx: RequestContext) -> list[Condition]:
    raw = ctx.args.get("filter")
    op = ctx.op
    if raw is None:
        if op.filter_required:
            example = op.parameters.get("filter", {}).get("schema", {}).get("example", "")
            raise invalid(f"A filter is required for this endpoint (for example filter={example}).", parameter="filter")
        return with_archived_hidden(op, [])
    if not op.filters:
        raise invalid("'filter' is not a valid parameter for this endpoint.", parameter="filter")
    conditions = parse_filter(raw)
    validate(conditions, op.filters, ctx.now())
    if op.operation_id == "get_campaigns" and not any(c.field == "messages.channel" for c in conditions):
        # get_campaigns: "a channel filter is required"
        raise invalid("A channel filter is required, e.g. filter=equals(messages.channel,'email') "
                      "(email, sms or mobile_push).", parameter="filter")
    if op.operation_id == "get_coupon_codes" and not any(c.field in ("coupon.id", "profile.id") for c in conditions):
        raise invalid("A filter on coupon.id or profile.id is required, e.g. filter=equals(coupon.id,'SUMMER').",
                      parameter="filter")
    return with_archived_hidden(op, conditions)


def with_archived_hidden(op: Any, conditions: list[Condition]) -> list[Condition]:
    """Klaviyo lists archived records (get_campaigns, get_flows: the operations whose filter offers
    ``archived``) only when the filter names ``archived``; otherwise it serves the non-archived ones."""
    if "archived" in op.filters and not any(c.field == "archived" for c in conditions):
        return [*conditions, Condition("archived", "equals", False)]
    return conditions


def sort_spec(ctx: RequestContext) -> tuple[str | None, bool]:
    raw = ctx.args.get("sort")
    if raw is None:
        return None, False
    if raw not in ctx.op.sorts:
        raise invalid(f"Invalid sort {raw!r}; allowed: {', '.join(ctx.op.sorts) or 'none'}.", parameter="sort")
    return raw.lstrip("-"), raw.startswith("-")


# -- the engine ----------------------------------------------------------------------------
def _sort_expr(source: Source, field: str | None) -> tuple[str, str]:
    if field is None:
        return source.seq_expr, "BIGINT"
    expr, sql_type = field_sql(source, field)
    if expr.startswith('t."') and expr[3:-1] in source.kind.not_null:
        return expr, sql_type
    if sql_type == "LIST":
        return f"coalesce(list_max({expr}), TIMESTAMPTZ '1970-01-01 00:00:00+00')", "TIMESTAMPTZ"
    if sql_type == "TIMESTAMP":
        return f"coalesce({expr}, TIMESTAMP '1970-01-01 00:00:00')", sql_type
    if sql_type == "BIGINT":
        return f"coalesce({expr}, 0)", sql_type
    if sql_type == "BOOLEAN":
        return f"coalesce(CAST({expr} AS INTEGER), -1)", "BIGINT"
    return f"coalesce(CAST({expr} AS VARCHAR), '')", "VARCHAR"


def _cursor_value(value: Any, sql_type: str) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _from_cursor(value: Any, sql_type: str) -> Any:
    if sql_type in ("TIMESTAMP", "TIMESTAMPTZ"):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise invalid("Invalid page cursor; use the links.next URL of the previous page.", parameter="page[cursor]") from None
        return parsed
    return value


def fetch_rows(ctx: RequestContext, source: Source, options: ReadOptions, conditions: list[Condition],
               sort: tuple[str | None, bool], limit: int | None) -> tuple[list[tuple], Any]:
    """Run the keyset query; returns (rows, cursor for the next page or None). See :func:`fetch_page`."""
    rows, next_cursor, _ = fetch_page(ctx, source, options, conditions, sort, limit)
    return rows, next_cursor


@dataclass
class PageQuery:
    """The keyset query of one page: ``sql`` selects ``(_seq, id, attrs, *to_one, *extras, _sort)``."""

    sql: str
    params: list[Any]
    sort_type: str
    sort_index: int
    direction: str
    backwards: bool  # a links.prev cursor: the page that ends just before its position
    cursor_raw: str | None
    inner_sql: str  # the top-N part alone: (_seq, id, attrs, *to_one, *extras, _sort) in query order
    keys: tuple[str, ...]  # its order columns (_sort, _seq or _seq), all in ``direction``


def page_query(ctx: RequestContext, source: Source, options: ReadOptions, conditions: list[Condition],
               sort: tuple[str | None, bool], limit: int | None) -> PageQuery:
    """Build the keyset query of :func:`fetch_page` (inner top-N over the table, outer wide projection)."""
    kind = source.kind
    where, params = list(source.where), list(source.params)
    for cond in conditions:
        clause, values = condition_sql(source, cond)
        where.append(clause)
        params.extend(values)
    sort_field, descending = sort
    sort_expr, sort_type = _sort_expr(source, sort_field)
    cursor_raw = ctx.args.get("page[cursor]")
    backwards = False
    if cursor_raw:
        values = decode_cursor(cursor_raw)
        if len(values) == 3 and values[2] == "prev":
            backwards, values = True, values[:2]
        if len(values) != 2:
            raise invalid("Invalid page cursor; use the links.next URL of the previous page.", parameter="page[cursor]")
        last, last_seq = _from_cursor(values[0], sort_type), values[1]
        cmp = "<" if descending != backwards else ">"
        if sort_field is None:
            where.append(f"{source.seq_expr} {cmp} ?")
            params.append(last_seq)
        else:
            where.append(f"{sort_expr} {cmp}= ? AND ({sort_expr} {cmp} ? OR {source.seq_expr} {cmp} ?)")
            params.extend([last, last, last_seq])
    direction = "DESC" if descending != backwards else "ASC"
    # 1. keyset + top-N over narrow columns (row ids only); 2. fetch the wide columns of the
    # page's rows by rowid; 3. outer query: build the output. A top-N carrying the wide text
    # columns reads and decompresses them for every filtered row (6x slower on a 400k-profile store).
    narrow = ["t.rowid AS _rid", f"{source.seq_expr} AS _seq", f"{sort_expr} AS _sort"]
    inner = ["n._seq AS _seq", "t.id AS id", "t.attrs AS attrs"]
    inner += [f"t.{rel_column(r)} AS {rel_column(r)}" for r in kind.to_one]
    inner += [f"{extra_sql(kind, x)} AS {extra_column(x)}" for x in options.additional]
    inner.append("n._sort AS _sort")
    attrs = "p.attrs"
    if source.joined and kind.type == "profile":  # list/segment members carry joined_group_at (H6)
        narrow.append("l.joined_at AS _joined_at")
        inner.append("n._joined_at AS _joined_at")
        attrs = ("json_merge_patch(p.attrs, json_object('joined_group_at', "
                 "strftime(p._joined_at, '%Y-%m-%dT%H:%M:%S+00:00')))::VARCHAR")
    outer = ["p._seq", "p.id", f"{attrs} AS attrs"]
    outer += [f"p.{rel_column(r)}" for r in kind.to_one]
    outer += [f"p.{extra_column(x)}" for x in options.additional]
    outer.append("p._sort")
    order = f"{sort_expr} {direction}, {source.seq_expr} {direction}" if sort_field else f"{source.seq_expr} {direction}"
    outer_order = f"p._sort {direction}, p._seq {direction}" if sort_field else f"p._seq {direction}"
    sql = f"SELECT {', '.join(narrow)} FROM {source.from_sql} WHERE {' AND '.join(where)} ORDER BY {order}"
    if limit is not None:
        sql += f" LIMIT {limit + 1}"
    inner_sql = sql = f"SELECT {', '.join(inner)} FROM ({sql}) n JOIN {kind.table} t ON t.rowid = n._rid"
    sql = f"SELECT {', '.join(outer)} FROM ({sql}) p ORDER BY {outer_order}"
    return PageQuery(sql, params, sort_type, 3 + len(kind.to_one) + len(options.additional), direction, backwards,
                     cursor_raw, inner_sql, ("_sort", "_seq") if sort_field else ("_seq",))


def _run(ctx: RequestContext, sql: str, params: list[Any], arrow: bool = False) -> Any:
    """Execute a read (a DuckDB cursor, or an Arrow table with ``arrow``); DuckDB input errors -> 400."""
    try:
        if arrow:  # a cursor of its own: sql() refuses a connection with an unfinished execute() result
            with ctx.store.db.cursor() as cursor:
                return cursor.sql(sql, params=params).to_arrow_table()
        return ctx.store.execute(sql, params)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a cast of client input that DuckDB rejects
        if "Conversion" in type(exc).__name__ or "Invalid Input" in str(exc):
            raise invalid(f"Invalid filter provided: {str(exc).splitlines()[0]}", parameter="filter") from None
        raise


def _page_cursors(query: PageQuery, count: int, more: bool, first: tuple[Any, Any] | None,
                  last: tuple[Any, Any] | None) -> tuple[Any, Any]:
    """(next, prev) cursors of a page of ``count`` rows whose first/last rows are ``(sort value, seq)``."""
    def position(row: tuple[Any, Any], *flag: str) -> str:
        return encode_cursor([_cursor_value(row[0], query.sort_type), row[1], *flag])

    next_cursor = prev_cursor = None
    if count and (more if not query.backwards else True):
        next_cursor = position(last)
    if count and (more if query.backwards else bool(query.cursor_raw)):
        prev_cursor = position(first, "prev")
    return next_cursor, prev_cursor


def fetch_page(ctx: RequestContext, source: Source, options: ReadOptions, conditions: list[Condition],
               sort: tuple[str | None, bool], limit: int | None) -> tuple[list[tuple], Any, Any]:
    """Run the keyset query; returns (rows, cursor of the next page, cursor of the previous page).

    Rows are ``(seq, id, attrs, *to_one ids, *extras, sort value)``.
    """
    query = page_query(ctx, source, options, conditions, sort, limit)
    rows = _run(ctx, query.sql, query.params).fetchall()
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[:limit]
    if query.backwards:
        rows.reverse()
    i = query.sort_index
    ends = ((rows[0][i], rows[0][0]), (rows[-1][i], rows[-1][0])) if rows else (None, None)
    next_cursor, prev_cursor = _page_cursors(query, len(rows), more, *ends)
    return rows, next_cursor, prev_cursor


def fetch_page_json(ctx: RequestContext, ser: Serializer, source: Source, options: ReadOptions,
                    conditions: list[Condition], sort: tuple[str | None, bool], limit: int
                    ) -> tuple[bytes, Any, Any] | None:
    """Like :func:`fetch_page`, but DuckDB builds the page's ``data`` items (comma-joined UTF-8 JSON).

    Same bytes as :func:`serialize_rows` for plain pages (no fieldset, extras or include);
    None when an id on the page is not URL-safe (the caller falls back to the Python path).
    """
    query = page_query(ctx, source, options, conditions, sort, limit)
    kind = source.kind
    ids = " || ".join(["id"] + [f"coalesce({rel_column(r)}, '')" for r in kind.to_one])
    # one text per row, each followed by a comma (NULL when an id needs escaping); the texts come
    # back as one Arrow buffer that is sliced as is -- no per-row Python objects
    sql = (f"SELECT _sort, _seq, CASE WHEN regexp_full_match({ids}, '{URL_SAFE_SQL}') "
           f"THEN concat({ser.resource_sql(kind)}, ',') END AS j FROM ({query.inner_sql})")
    table = _run(ctx, sql, query.params, arrow=True)
    if table.column("j").null_count:
        return None
    order = "descending" if query.direction == "DESC" else "ascending"
    table = table.sort_by([(key, order) for key in query.keys])  # query order
    more = table.num_rows > limit
    table = table.slice(0, limit)
    k = table.num_rows
    if query.backwards:
        table = table.take(pa.array(range(k - 1, -1, -1), pa.int64()))
    texts = table.column("j").combine_chunks()
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.large_string())  # e.g. string_view: make the texts one contiguous buffer
    data = b""
    if k:
        offsets = memoryview(texts.buffers()[1]).cast("i" if pa.types.is_string(texts.type) else "q")
        start, stop = int(offsets[texts.offset]), int(offsets[texts.offset + k])
        data = texts.buffers()[2].slice(start, stop - start - 1).to_pybytes()  # without the last comma
    ends = [(table.column("_sort")[i].as_py(), table.column("_seq")[i].as_py()) for i in (0, k - 1)] if k else [None, None]
    next_cursor, prev_cursor = _page_cursors(query, k, more, *ends)
    return data, next_cursor, prev_cursor


def serialize_rows(ctx: RequestContext, ser: Serializer, kind: Kind, rows: list[tuple], options: ReadOptions,
                   many_data: dict[str, dict[str, list[str]]] | None = None) -> list[str]:
    n_rel = len(kind.to_one)
    fields = options.fields.get(kind.type)
    out = []
    rel_names = list(kind.to_one)
    fast = ser.fast_page(kind, options.additional)(rows) if not many_data and fields is None else [None] * len(rows)
    for row, text in zip(rows, fast):
        if text is not None:
            out.append(text)
            continue
        id_ = row[1]
        to_one = dict(zip(rel_names, row[3:3 + n_rel])) if n_rel else None
        extras = dict(zip(options.additional, row[3 + n_rel:3 + n_rel + len(options.additional)])) if options.additional else None
        data = {name: ids.get(id_, []) for name, ids in many_data.items()} if many_data else None
        out.append(ser.resource(kind, id_, row[2], to_one, extras, fields, data))
    return out


def included_for(ctx: RequestContext, ser: Serializer, kind: Kind, rows: list[tuple], options: ReadOptions
                 ) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """Included resources for ``include=`` and the to-many ids to show in primary data."""
    included: list[str] = []
    many_data: dict[str, dict[str, list[str]]] = {}
    if not options.include or not rows:
        return included, many_data
    ids = [r[1] for r in rows]
    rel_names = list(kind.to_one)
    for name in options.include:
        rel = RELATIONS.get((kind.type, name))
        if rel is None:
            continue  # the spec allows it but the sandbox holds no such data (e.g. attributions): empty
        target = KINDS[rel.target]
        if isinstance(rel, ToOne):
            index = 3 + rel_names.index(name)
            wanted = sorted({r[index] for r in rows if r[index] is not None})
            pairs = {}
        else:
            if isinstance(rel, Children):
                found = ctx.store.execute(
                    f"SELECT {rel_column(rel.fk)}, id FROM {target.table} WHERE account = ? AND "
                    f"{rel_column(rel.fk)} IN (SELECT unnest(?)) ORDER BY seq", [ctx.account, ids]).fetchall()
            else:
                mine, other = ("a", "b") if rel.side == "a" else ("b", "a")
                found = ctx.store.execute(
                    f"SELECT {mine}, {other} FROM links WHERE account = ? AND link = ? AND {mine} IN (SELECT unnest(?)) "
                    "ORDER BY seq", [ctx.account, rel.link, ids]).fetchall()
            pairs: dict[str, list[str]] = {}
            for parent, child in found:
                pairs.setdefault(parent, []).append(child)
            many_data[name] = pairs
            wanted = sorted({c for children in pairs.values() for c in children})
        if not wanted:
            continue
        columns = ["seq", "id", "attrs"] + [rel_column(r) for r in target.to_one]
        target_rows = ctx.store.execute(
            f"SELECT {', '.join(columns)} FROM {target.table} WHERE account = ? AND id IN (SELECT unnest(?)) ORDER BY seq",
            [ctx.account, wanted]).fetchall()
        plain = ReadOptions(options.fields, (), ())
        included.extend(serialize_rows(ctx, ser, target, target_rows, plain))
    return included, many_data


def collection_response(ctx: RequestContext, source: Source):
    kind = source.kind
    options = read_options(ctx, kind)
    limit = page_size(ctx)
    conditions = filters(ctx)
    sort = sort_spec(ctx)
    ser = Serializer(ctx.spec, ctx.link_base, (ctx.op.method, ctx.op.path))
    page = None
    if (limit is not None and not options.include and not options.additional and kind.type not in options.fields
            and not (source.joined and kind.type == "profile")):
        page = fetch_page_json(ctx, ser, source, options, conditions, sort, limit)
    if page is not None:
        data, next_cursor, prev_cursor = page
    else:
        rows, next_cursor, prev_cursor = fetch_page(ctx, source, options, conditions, sort, limit)
        included, many_data = included_for(ctx, ser, kind, rows, options)
        items = serialize_rows(ctx, ser, kind, rows, options, many_data)
    args = list(ctx.args.items(multi=True))
    links = {"self": page_url(ctx.link_base, ctx.request.path, args, ctx.args.get("page[cursor]"))}
    if next_cursor is not None:
        links["next"] = page_url(ctx.link_base, ctx.request.path, args, next_cursor)
    if prev_cursor is not None:
        links["prev"] = page_url(ctx.link_base, ctx.request.path, args, prev_cursor)
    if page is not None:
        return ctx.respond(b'{"data":[' + data + b'],"links":' + orjson.dumps(links) + b"}")
    body = collection_body(items, links, included if options.include else None)
    return ctx.respond(body)


def _fetch_one(ctx: RequestContext, kind: Kind, id_: str, options: ReadOptions) -> tuple:
    columns = ["t.seq", "t.id", "t.attrs"] + [f"t.{rel_column(r)}" for r in kind.to_one]
    columns += [extra_sql(kind, x) for x in options.additional]
    row = ctx.store.execute(
        f"SELECT {', '.join(columns)} FROM {kind.table} t WHERE t.account = ? AND t.id = ?", [ctx.account, id_]).fetchone()
    if row is None:
        raise not_found(f"A {kind.type} with id {id_} does not exist.")
    return row


def single_response(ctx: RequestContext, kind: Kind, id_: str):
    options = read_options(ctx, kind)
    row = _fetch_one(ctx, kind, id_, options)
    ser = Serializer(ctx.spec, ctx.link_base, (ctx.op.method, ctx.op.path))
    included, many_data = included_for(ctx, ser, kind, [row], options)
    item = serialize_rows(ctx, ser, kind, [row], options, many_data)[0]
    links = {"self": page_url(ctx.link_base, ctx.request.path, list(ctx.args.items(multi=True)), None)}
    return ctx.respond(single_body(item, links, included if options.include else None))


# -- handler factories ------------------------------------------------------------------------
def list_handler(kind: Kind):
    def handle(ctx: RequestContext):
        return collection_response(ctx, base_source(ctx, kind))
    return handle


def get_handler(kind: Kind):
    def handle(ctx: RequestContext):
        return single_response(ctx, kind, ctx.path_params["id"])
    return handle


def related_handler(parent: Kind, name: str, rel: ToOne | Children | Linked, ids_only: bool):
    target = KINDS[rel.target]

    def handle(ctx: RequestContext):
        parent_id = ctx.path_params["id"]
        parent_row = _fetch_one(ctx, parent, parent_id, ReadOptions({}, (), ()))
        if isinstance(rel, ToOne):
            target_id = parent_row[3 + list(parent.to_one).index(name)]
            if ids_only:
                data = None if target_id is None else f'{{"type":{jstr(target.type)},"id":{jstr(target_id)}}}'
                links = {"self": page_url(ctx.link_base, ctx.request.path, [], None)}
                return ctx.respond(single_body(data, links))
            if target_id is None:
                links = {"self": page_url(ctx.link_base, ctx.request.path, [], None)}
                return ctx.respond(single_body(None, links))
            return single_response(ctx, target, target_id)
        source = related_source(ctx, parent, rel, parent_id)
        if not ids_only:
            return collection_response(ctx, source)
        # relationship endpoint: identifiers only
        limit = page_size(ctx)
        rows, next_cursor, prev_cursor = fetch_page(ctx, source, ReadOptions({}, (), ()), filters(ctx), sort_spec(ctx),
                                                    limit)
        items = [f'{{"type":{jstr(target.type)},"id":{jstr(r[1])}}}' for r in rows]
        args = list(ctx.args.items(multi=True))
        links = {"self": page_url(ctx.link_base, ctx.request.path, args, ctx.args.get("page[cursor]"))}
        if next_cursor is not None:
            links["next"] = page_url(ctx.link_base, ctx.request.path, args, next_cursor)
        if prev_cursor is not None:
            links["prev"] = page_url(ctx.link_base, ctx.request.path, args, prev_cursor)
        return ctx.respond(collection_body(items, links))

    return handle


def register_reads(app: SandboxApp) -> list[str]:
    """Register a handler for every spec GET path the store can serve; returns their operationIds."""
    registered = []
    for (method, path), op in app.spec.operations.items():
        if method != "GET" or not path.startswith("/api/"):
            continue
        parts = path[5:].split("/")
        kind = KIND_BY_COLLECTION.get(parts[0])
        if kind is None:
            continue
        handler = None
        if len(parts) == 1:
            handler = list_handler(kind)
        elif len(parts) == 2 and parts[1] in ("{id}",):
            handler = get_handler(kind)
        elif len(parts) == 3 and parts[1] == "{id}" and (kind.type, parts[2]) in RELATIONS:
            handler = related_handler(kind, parts[2], RELATIONS[(kind.type, parts[2])], ids_only=False)
        elif len(parts) == 4 and parts[1] == "{id}" and parts[2] == "relationships" and (kind.type, parts[3]) in RELATIONS:
            handler = related_handler(kind, parts[3], RELATIONS[(kind.type, parts[3])], ids_only=True)
        if handler is not None and (method, path) not in app.routes:
            app.route(method, path, handler)
            registered.append(op.operation_id)
    return registered


__all__ = ["register_reads", "RELATIONS", "RELATED_TYPES", "collection_response", "single_response", "Source",
           "base_source", "related_source", "ReadOptions", "read_options", "fetch_rows", "fetch_page", "serialize_rows"]
