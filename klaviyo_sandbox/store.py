"""The sandbox's ground truth: an embedded DuckDB database, one table per resource type.

Every record row holds ``account`` (the Klaviyo account it belongs to), ``seq`` (a
unique, increasing insertion number used as the keyset tie-breaker), ``id``,
``attrs`` (the record's JSON:API ``attributes`` as JSON text, ready to splice into a
response), ``inserted_at`` (when the record entered the store; for events this is
what makes a "backdated" event: ``datetime`` earlier than ``inserted_at``), the
typed columns that filters and sorts run on, and one ``rel_<name>`` column per
to-one relationship.  Many-to-many relationships (list/segment memberships, tag
links, webhook topics, item categories) live in the ``links`` table.

Write API (used by the write endpoints and the control API)::

    store.insert(account, "profile", {"email": "a@b.c", ...})            -> id
    store.insert(account, "event", attrs, relationships={"metric": m, "profile": p})
    store.get(account, "profile", id)          -> Record | None
    store.update(account, "profile", id, {"first_name": "X"})   # shallow merge; bumps updated
    store.delete(account, "profile", id)       -> bool
    store.add_members(account, "list", list_id, [profile_id, ...])
    store.remove_members(account, "list", list_id, [profile_id, ...])
    store.find_profile(account, email=..., phone_number=..., external_id=...) -> id | None
    store.link(account, "tag:campaign", tag_id, campaign_id) / store.unlink(...)
    store.now() / store.clock.advance(seconds) / store.clock.set(datetime)

All methods are thread-safe (writes are serialised by a lock; reads use one DuckDB
cursor per thread).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import duckdb
import orjson

UTC = dt.timezone.utc


class Clock:
    """The sandbox's notion of "now": real time plus an offset, or frozen at a value."""

    def __init__(self, frozen: dt.datetime | None = None):
        self._offset = dt.timedelta(0)
        self._frozen = frozen

    def now(self) -> dt.datetime:
        if self._frozen is not None:
            return self._frozen
        return dt.datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> dt.datetime:
        """Move "now" forward (tests use this to make new data appear later)."""
        if self._frozen is not None:
            self._frozen += dt.timedelta(seconds=seconds)
        else:
            self._offset += dt.timedelta(seconds=seconds)
        return self.now()

    def set(self, when: dt.datetime | None) -> None:
        """Freeze "now" at ``when`` (aware datetime), or unfreeze with ``None``."""
        self._frozen = when.astimezone(UTC) if when is not None else None


def iso(value: dt.datetime | None) -> str | None:
    """Klaviyo's datetime format: ``2024-01-02T03:04:05+00:00``."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).isoformat()


def parse_iso(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    text = str(value).replace("Z", "+00:00")
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """DuckDB TIMESTAMP columns hold naive UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Kind:
    """One resource type: its table, its typed columns and its relationships."""

    type: str  # JSON:API type, e.g. "catalog-item"
    table: str
    collection: str  # URL segment, e.g. "catalog-items"
    # typed column -> (DuckDB type, dotted attribute path it is derived from)
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)
    # to-one relationship name -> target type; stored in column rel_<name>
    to_one: dict[str, str] = field(default_factory=dict)
    # attributes only returned on request (additional-fields[...]); stored as x_<name> JSON text
    extras: tuple[str, ...] = ()
    # attribute bumped by store.update (if any)
    updated_attr: str | None = None
    created_attr: str | None = None
    id_style: str = "short"  # "short" (6 chars), "ulid" (26 chars), "event" (hex), "uuid", "digits"
    has_attributes: bool = True  # webhook-topic resources carry only type/id/links
    # typed columns that are never NULL (sorted on directly, so DuckDB can prune by zonemap)
    not_null: tuple[str, ...] = ()


def _ts(path: str) -> tuple[str, str]:
    return ("TIMESTAMP", path)


def _s(path: str) -> tuple[str, str]:
    return ("VARCHAR", path)


def _b(path: str) -> tuple[str, str]:
    return ("BOOLEAN", path)


KINDS: dict[str, Kind] = {
    k.type: k
    for k in [
        Kind("account", "accounts", "accounts", id_style="short"),
        Kind(
            "profile", "profiles", "profiles",
            columns={"email": _s("email"), "phone_number": _s("phone_number"), "external_id": _s("external_id"),
                     "created": _ts("created"), "updated": _ts("updated")},
            extras=("subscriptions", "predictive_analytics"),
            updated_attr="updated", created_attr="created", id_style="ulid", not_null=("created", "updated"),
        ),
        Kind(
            "event", "events", "events",
            columns={"datetime": _ts("datetime"), "timestamp": ("BIGINT", "timestamp")},
            to_one={"metric": "metric", "profile": "profile"}, id_style="event", not_null=("datetime", "timestamp"),
        ),
        Kind(
            "metric", "metrics", "metrics",
            columns={"name": _s("name"), "integration_name": _s("integration.name"),
                     "integration_category": _s("integration.category"), "created": _ts("created"), "updated": _ts("updated")},
            updated_attr="updated", created_attr="created",
        ),
        Kind("list", "lists", "lists",
             columns={"name": _s("name"), "created": _ts("created"), "updated": _ts("updated")},
             updated_attr="updated", created_attr="created"),
        Kind("segment", "segments", "segments",
             columns={"name": _s("name"), "created": _ts("created"), "updated": _ts("updated"),
                      "is_active": _b("is_active"), "is_starred": _b("is_starred")},
             updated_attr="updated", created_attr="created"),
        Kind("campaign", "campaigns", "campaigns",
             columns={"name": _s("name"), "status": _s("status"), "archived": _b("archived"), "channel": _s("_channel"),
                      "created_at": _ts("created_at"), "scheduled_at": _ts("scheduled_at"), "updated_at": _ts("updated_at")},
             updated_attr="updated_at", created_attr="created_at", id_style="ulid"),
        Kind("campaign-message", "campaign_messages", "campaign-messages",
             columns={"created_at": _ts("created_at"), "updated_at": _ts("updated_at")},
             to_one={"campaign": "campaign", "template": "template"},
             updated_attr="updated_at", created_attr="created_at", id_style="ulid"),
        Kind("flow", "flows", "flows",
             columns={"name": _s("name"), "status": _s("status"), "archived": _b("archived"), "trigger_type": _s("trigger_type"),
                      "created": _ts("created"), "updated": _ts("updated")},
             extras=("definition",), updated_attr="updated", created_attr="created"),
        Kind("flow-action", "flow_actions", "flow-actions",
             columns={"action_type": _s("_type"),
                      "created": _ts("created"), "updated": _ts("updated")},
             to_one={"flow": "flow"}, updated_attr="updated", created_attr="created", id_style="digits"),
        Kind("flow-message", "flow_messages", "flow-messages",
             columns={"channel": _s("channel"), "created": _ts("created"), "updated": _ts("updated")},
             to_one={"flow-action": "flow-action", "template": "template"},
             updated_attr="updated", created_attr="created"),
        Kind("template", "templates", "templates",
             columns={"name": _s("name"), "created": _ts("created"), "updated": _ts("updated")},
             updated_attr="updated", created_attr="created"),
        Kind("tag", "tags", "tags", columns={"name": _s("name")}, to_one={"tag-group": "tag-group"}, id_style="uuid"),
        Kind("tag-group", "tag_groups", "tag-groups", columns={"name": _s("name")}, id_style="uuid"),
        Kind("coupon", "coupons", "coupons", columns={"external_id": _s("external_id")}),
        Kind("coupon-code", "coupon_codes", "coupon-codes",
             columns={"unique_code": _s("unique_code"), "status": _s("status"), "expires_at": _ts("expires_at")},
             to_one={"coupon": "coupon", "profile": "profile"}),
        Kind("catalog-item", "catalog_items", "catalog-items",
             columns={"title": _s("title"), "published": _b("published"), "external_id": _s("external_id"),
                      "created": _ts("created"), "updated": _ts("updated")},
             updated_attr="updated", created_attr="created"),
        Kind("catalog-variant", "catalog_variants", "catalog-variants",
             columns={"title": _s("title"), "sku": _s("sku"), "published": _b("published"), "external_id": _s("external_id"),
                      "created": _ts("created"), "updated": _ts("updated")},
             to_one={"item": "catalog-item"}, updated_attr="updated", created_attr="created"),
        Kind("catalog-category", "catalog_categories", "catalog-categories",
             columns={"name": _s("name"), "external_id": _s("external_id"), "updated": _ts("updated")},
             updated_attr="updated"),
        Kind("webhook", "webhooks", "webhooks",
             columns={"name": _s("name"), "created_at": _ts("created_at"), "updated_at": _ts("updated_at")},
             updated_attr="updated_at", created_attr="created_at"),
        Kind("webhook-topic", "webhook_topics", "webhook-topics", has_attributes=False),
    ]
}
KIND_BY_COLLECTION = {k.collection: k for k in KINDS.values()}

# Many-to-many link kinds: name -> (type of side a, type of side b)
LINKS: dict[str, tuple[str, str]] = {
    "list_members": ("list", "profile"),
    "segment_members": ("segment", "profile"),
    "tag:campaign": ("tag", "campaign"),
    "tag:flow": ("tag", "flow"),
    "tag:list": ("tag", "list"),
    "tag:segment": ("tag", "segment"),
    "webhook_topics": ("webhook", "webhook-topic"),
    "item_categories": ("catalog-item", "catalog-category"),
}
MEMBERS = {"list": "list_members", "segment": "segment_members"}


def rel_column(name: str) -> str:
    return "rel_" + name.replace("-", "_")


def extra_column(name: str) -> str:
    return "x_" + name


def _dig(attributes: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = attributes
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


_COLUMN_PATHS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {}


def _column_paths(kind: Kind) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(column, SQL type, attribute path parts) of a kind's typed columns."""
    paths = _COLUMN_PATHS.get(kind.type)
    if paths is None:
        paths = tuple((column, sql_type, tuple(path.split("."))) for column, (sql_type, path) in kind.columns.items())
        _COLUMN_PATHS[kind.type] = paths
    return paths


@dataclass
class Record:
    """A stored record, as Python values."""

    type: str
    id: str
    account: str
    attributes: dict[str, Any]
    relationships: dict[str, str | None]
    seq: int
    inserted_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "attributes": self.attributes, "relationships": self.relationships}


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def make_id(style: str, *parts: Any) -> str:
    """A deterministic Klaviyo-shaped id from ``parts`` (same parts -> same id)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=20).digest()
    number = int.from_bytes(digest, "big")
    if style == "ulid":
        return "01" + "".join(_CROCKFORD[(number >> (5 * i)) & 31] for i in range(24))
    if style == "event":
        return digest.hex()[:16]
    if style == "uuid":
        h = digest.hex()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
    if style == "digits":
        return str(10_000_000 + number % 89_999_999)
    return "".join(_ALPHABET[(number >> (6 * i)) % 62] for i in range(6))


class Store:
    """DuckDB-backed ground truth for every account's resources (see module docstring)."""

    def __init__(self, path: str | None = None, clock: Clock | None = None):
        self.path = path or ":memory:"
        self.db = duckdb.connect(self.path)
        self.db.execute("SET GLOBAL TimeZone='UTC'")
        self.clock = clock or Clock()
        self.lock = threading.RLock()
        self._local = threading.local()
        self._cursors: set[duckdb.DuckDBPyConnection] = set()  # handed out to threads; closed by close()
        self._cursors_lock = threading.Lock()
        self._seq: dict[str, itertools.count] = {}
        self._id_counter = itertools.count(1)
        # ulid-style ids made by new_id: a per-store random part, then a counter (unique, cheap)
        self._new_ulid_prefix = "01" + make_id("ulid", os.urandom(16))[2:14]
        self.create_tables()

    # -- plumbing -----------------------------------------------------------------
    def now(self) -> dt.datetime:
        return self.clock.now()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor private to the calling thread."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self.db.cursor()
            self._local.cursor = cur
            with self._cursors_lock:
                self._cursors.add(cur)
        return cur

    def release_cursor(self) -> None:
        """Close the calling thread's cursor; a thread calls it before it ends.

        Left to the thread's teardown, the cursor is freed after the thread has left Python, where
        the interpreter's exit can unwind it by force in the middle of DuckDB (the process aborts)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            return
        self._local.cursor = None
        with self._cursors_lock:
            self._cursors.discard(cur)
        cur.close()

    def execute(self, sql: str, params: Iterable[Any] | None = None) -> duckdb.DuckDBPyConnection:
        return self.cursor().execute(sql, list(params) if params is not None else None)

    def create_tables(self) -> None:
        for kind in KINDS.values():
            cols = ["account VARCHAR NOT NULL", "seq BIGINT NOT NULL", "id VARCHAR NOT NULL", "attrs VARCHAR NOT NULL",
                    "inserted_at TIMESTAMP NOT NULL"]
            cols += [f'"{c}" {t}' for c, (t, _) in kind.columns.items()]
            cols += [f"{rel_column(r)} VARCHAR" for r in kind.to_one]
            cols += [f"{extra_column(x)} VARCHAR" for x in kind.extras]
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {kind.table} ({', '.join(cols)})")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS links (account VARCHAR NOT NULL, link VARCHAR NOT NULL, a VARCHAR NOT NULL,"
            " b VARCHAR NOT NULL, joined_at TIMESTAMP NOT NULL, seq BIGINT NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS accounts_meta (account VARCHAR PRIMARY KEY, api_key VARCHAR, oauth_token VARCHAR,"
            " maton_connection_id VARCHAR)"
        )

    def reset_sequences(self) -> None:
        """Re-read the highest ``seq`` of every table (after bulk generation)."""
        for kind in KINDS.values():
            top = self.db.execute(f"SELECT coalesce(max(seq), 0) FROM {kind.table}").fetchone()[0]
            self._seq[kind.table] = itertools.count(top + 1)
        top = self.db.execute("SELECT coalesce(max(seq), 0) FROM links").fetchone()[0]
        self._seq["links"] = itertools.count(top + 1)

    def next_seq(self, table: str) -> int:
        if table not in self._seq:
            self.reset_sequences()
        return next(self._seq[table])

    def create_indexes(self) -> None:
        """Point-lookup indexes on ids (built once after bulk generation)."""
        for kind in KINDS.values():
            self.db.execute(f"CREATE INDEX IF NOT EXISTS {kind.table}_id ON {kind.table} (id)")

    @staticmethod
    def kind(type_: str) -> Kind:
        try:
            return KINDS[type_]
        except KeyError:
            raise KeyError(f"unknown resource type {type_!r}; known: {', '.join(sorted(KINDS))}") from None

    # -- reads --------------------------------------------------------------------
    def _row_to_record(self, kind: Kind, row: tuple) -> Record:
        account, seq, id_, attrs, inserted_at, *rest = row
        attributes = orjson.loads(attrs)
        rels = dict(zip(kind.to_one, rest[: len(kind.to_one)]))
        for name, raw in zip(kind.extras, rest[len(kind.to_one):]):
            if raw is not None:
                attributes[name] = orjson.loads(raw)
        return Record(kind.type, id_, account, attributes, rels, seq, inserted_at.replace(tzinfo=UTC))

    def _select_cols(self, kind: Kind) -> str:
        cols = ["account", "seq", "id", "attrs", "inserted_at"]
        cols += [rel_column(r) for r in kind.to_one] + [extra_column(x) for x in kind.extras]
        return ", ".join(cols)

    def get(self, account: str, type_: str, id_: str) -> Record | None:
        """One record with its attributes (extras included) and to-one relationship ids."""
        kind = self.kind(type_)
        row = self.execute(
            f"SELECT {self._select_cols(kind)} FROM {kind.table} WHERE account = ? AND id = ?", [account, id_]
        ).fetchone()
        return self._row_to_record(kind, row) if row else None

    def all(self, account: str, type_: str) -> list[Record]:
        """Every record of a type for an account, in ``seq`` order (ground truth for tests)."""
        kind = self.kind(type_)
        rows = self.execute(
            f"SELECT {self._select_cols(kind)} FROM {kind.table} WHERE account = ? ORDER BY seq", [account]
        ).fetchall()
        return [self._row_to_record(kind, r) for r in rows]

    def ids(self, account: str, type_: str) -> list[str]:
        kind = self.kind(type_)
        return [r[0] for r in self.execute(f"SELECT id FROM {kind.table} WHERE account = ? ORDER BY seq", [account]).fetchall()]

    def count(self, account: str, type_: str) -> int:
        kind = self.kind(type_)
        return self.execute(f"SELECT count(*) FROM {kind.table} WHERE account = ?", [account]).fetchone()[0]

    def exists(self, account: str, type_: str, id_: str) -> bool:
        kind = self.kind(type_)
        return self.execute(f"SELECT 1 FROM {kind.table} WHERE account = ? AND id = ?", [account, id_]).fetchone() is not None

    def find_profile(self, account: str, email: str | None = None, phone_number: str | None = None,
                     external_id: str | None = None) -> str | None:
        """The id of the profile with this email, else phone number, else external id."""
        for column, value in (("email", email), ("phone_number", phone_number), ("external_id", external_id)):
            if value:
                row = self.execute(
                    f'SELECT id FROM profiles WHERE account = ? AND "{column}" = ? ORDER BY seq LIMIT 1', [account, value]
                ).fetchone()
                if row:
                    return row[0]
        return None

    def members(self, account: str, group_type: str, group_id: str) -> list[tuple[str, dt.datetime]]:
        """(profile id, joined_group_at) of a list's or segment's members."""
        rows = self.execute(
            "SELECT b, joined_at FROM links WHERE account = ? AND link = ? AND a = ? ORDER BY seq",
            [account, MEMBERS[group_type], group_id],
        ).fetchall()
        return [(r[0], r[1].replace(tzinfo=UTC)) for r in rows]

    def linked(self, account: str, link: str, a: str | None = None, b: str | None = None) -> list[str]:
        """Ids on the other side of a many-to-many link (give exactly one of ``a``/``b``)."""
        if a is not None:
            rows = self.execute("SELECT b FROM links WHERE account=? AND link=? AND a=? ORDER BY seq", [account, link, a])
        else:
            rows = self.execute("SELECT a FROM links WHERE account=? AND link=? AND b=? ORDER BY seq", [account, link, b])
        return [r[0] for r in rows.fetchall()]

    # -- writes -------------------------------------------------------------------
    def _row_values(self, kind: Kind, attributes: dict[str, Any], relationships: dict[str, Any],
                    memo: dict[Any, Any] | None = None, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        """The column values of one record.  ``memo`` (one per batch of rows) parses a repeated
        timestamp string once and serialises an extras object shared by several rows once.
        ``extras``: given apart, with ``attributes`` holding only served attributes (no ``_`` keys)."""
        memo = {} if memo is None else memo
        if extras is None:
            base = {k: v for k, v in attributes.items() if k not in kind.extras and not k.startswith("_")}
            extras = attributes
        else:
            base = attributes
        values: dict[str, Any] = {"attrs": orjson.dumps(base).decode()}
        for column, sql_type, path in _column_paths(kind):
            value = _dig(attributes, path)
            if sql_type == "TIMESTAMP":
                key = ("ts", value)
                if key not in memo:
                    memo[key] = naive_utc(parse_iso(value))
                value = memo[key]
            values[column] = value
        for name in kind.to_one:
            values[rel_column(name)] = relationships.get(name)
        for name in kind.extras:
            extra = extras.get(name)
            if extra is None:
                values[extra_column(name)] = None
                continue
            key = ("extra", id(extra))  # rows of one batch are alive together: ids are not reused
            if key not in memo:
                memo[key] = orjson.dumps(extra).decode()
            values[extra_column(name)] = memo[key]
        return values

    def insert(self, account: str, type_: str, attributes: dict[str, Any], relationships: dict[str, str] | None = None,
               id: str | None = None) -> str:
        """Insert a record; returns its id (generated Klaviyo-style when not given).

        ``created``/``updated`` style attributes default to ``now``; keys starting with ``_``
        feed typed columns only (e.g. a campaign's ``_channel``) and are not served.
        """
        kind = self.kind(type_)
        now = self.now()
        attributes = dict(attributes)
        for attr in (kind.created_attr, kind.updated_attr):
            if attr and attributes.get(attr) is None:
                attributes[attr] = iso(now)
        if kind.type == "event" and attributes.get("datetime") is None:  # Klaviyo: time defaults to now
            attributes["datetime"] = iso(now)
        if kind.type == "event" and attributes.get("timestamp") is None:
            attributes["timestamp"] = int(parse_iso(attributes["datetime"]).timestamp())
        with self.lock:
            seq = self.next_seq(kind.table)
            id_ = id or make_id(kind.id_style, account, type_, seq, next(self._id_counter), now.timestamp())
            values = self._row_values(kind, attributes, relationships or {})
            values.update(account=account, seq=seq, id=id_, inserted_at=naive_utc(now))
            cols = list(values)
            self.db.execute(
                f"INSERT INTO {kind.table} ({', '.join(chr(34) + c + chr(34) for c in cols)}) VALUES ({', '.join('?' * len(cols))})",
                [values[c] for c in cols],
            )
        return id_

    def bulk_insert(self, account: str, type_: str, rows: list[dict[str, Any]], inserted_at: dt.datetime | None = None) -> None:
        """Insert many records at once: each row ``{"id", "attributes", "relationships"?, "extras"?}``
        (ids required; ``extras`` apart from served-only ``attributes``, see ``_row_values``)."""
        import pyarrow as pa

        if not rows:
            return
        kind = self.kind(type_)
        stamp = naive_utc(inserted_at or self.now())
        with self.lock:
            memo: dict[Any, Any] = {}
            encoded = [self._row_values(kind, row["attributes"], row.get("relationships") or {}, memo, row.get("extras"))
                       for row in rows]
            columns = {name: [values[name] for values in encoded] for name in encoded[0]}
            columns["account"] = [account] * len(rows)
            columns["seq"] = [self.next_seq(kind.table) for _ in rows]
            columns["id"] = [row["id"] for row in rows]
            columns["inserted_at"] = [naive_utc(row.get("inserted_at")) or stamp for row in rows]
            types = {c: (pa.timestamp("us") if t == "TIMESTAMP" else None) for c, (t, _) in kind.columns.items()}
            types["inserted_at"] = pa.timestamp("us")
            arrays = {c: pa.array(v, type=types.get(c)) for c, v in columns.items()}
            staged = pa.table(arrays)  # noqa: F841 - read by DuckDB's replacement scan below
            cols = ", ".join(f'"{c}"' for c in arrays)
            self.db.execute(f"INSERT INTO {kind.table} ({cols}) SELECT {cols} FROM staged")

    def new_id(self, account: str, type_: str) -> str:
        """A fresh id of ``type_``'s style, for records inserted later with ``insert_many``."""
        kind = self.kind(type_)
        if kind.id_style == "ulid":  # hex digits are Crockford base32 digits too
            return f"{self._new_ulid_prefix}{next(self._id_counter):012X}"
        return make_id(kind.id_style, account, type_, "new", next(self._id_counter), self.now().timestamp())

    def insert_many(self, account: str, type_: str, records: dict[str, dict[str, Any]],
                    extras: dict[str, Any] | None = None) -> None:
        """Insert many new records (id -> served attributes, in order) as ``insert`` would one by
        one (``created``/``updated`` defaulting to now), each with the same ``extras``, in one statement."""
        kind = self.kind(type_)
        now = self.now()
        stamps = [attr for attr in (kind.created_attr, kind.updated_attr) if attr]
        rows = []
        for id_, attributes in records.items():
            if any(attributes.get(attr) is None for attr in stamps):
                attributes = {**attributes, **{a: iso(now) for a in stamps if attributes.get(a) is None}}
            rows.append({"id": id_, "attributes": attributes, "extras": extras or {}})
        self.bulk_insert(account, type_, rows, inserted_at=now)

    def replace_many(self, account: str, type_: str, attributes_by_id: dict[str, dict[str, Any]]) -> None:
        """Overwrite the served attributes (and typed columns) of many existing records in one statement.

        Nothing is merged or bumped (pass the final attributes); extras, relationships and columns
        fed by ``_`` keys keep their stored values.
        """
        import pyarrow as pa

        if not attributes_by_id:
            return
        kind = self.kind(type_)
        written = [c for c, (_, path) in kind.columns.items() if not path.startswith("_")]
        columns: dict[str, list[Any]] = {"id": [], "attrs": [], **{c: [] for c in written}}
        memo: dict[Any, Any] = {}
        for id_, attributes in attributes_by_id.items():
            values = self._row_values(kind, attributes, {}, memo)
            columns["id"].append(id_)
            for name in ("attrs", *written):
                columns[name].append(values[name])
        types = {c: (pa.timestamp("us") if kind.columns[c][0] == "TIMESTAMP" else None) for c in written}
        staged = pa.table({c: pa.array(v, type=types.get(c)) for c, v in columns.items()})  # noqa: F841 - DuckDB scan
        sets = ", ".join(f'"{c}" = staged."{c}"' for c in ("attrs", *written))
        with self.lock:
            self.db.execute(f"UPDATE {kind.table} SET {sets} FROM staged "
                            f"WHERE {kind.table}.account = ? AND {kind.table}.id = staged.id", [account])

    def update(self, account: str, type_: str, id_: str, attributes: dict[str, Any],
               relationships: dict[str, str | None] | None = None, touch: bool = True) -> Record:
        """Merge ``attributes`` into a record (top-level keys replaced; ``properties`` merged key by key).

        ``touch`` sets the kind's ``updated``/``updated_at`` attribute to now unless given.
        Raises ``KeyError`` when the record does not exist.
        """
        kind = self.kind(type_)
        with self.lock:
            current = self.get(account, type_, id_)
            if current is None:
                raise KeyError(f"{type_} {id_} not found in account {account}")
            merged = dict(current.attributes)
            for key, value in attributes.items():
                if key == "properties" and isinstance(value, dict) and isinstance(merged.get("properties"), dict):
                    merged["properties"] = {**merged["properties"], **value}
                else:
                    merged[key] = value
            if touch and kind.updated_attr and kind.updated_attr not in attributes:
                merged[kind.updated_attr] = iso(self.now())
            rels = {**current.relationships, **(relationships or {})}
            hidden = [(c, p) for c, (_, p) in kind.columns.items() if p.startswith("_") and p not in attributes]
            if hidden:  # columns fed by "_" keys keep their value unless given
                old = self.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c, _ in hidden)} FROM {kind.table} "
                                   "WHERE account = ? AND id = ?", [account, id_]).fetchone()
                merged.update({p: v for (_, p), v in zip(hidden, old)})
            values = self._row_values(kind, merged, rels)
            sets = ", ".join(f'"{c}" = ?' for c in values)
            self.db.execute(f"UPDATE {kind.table} SET {sets} WHERE account = ? AND id = ?", [*values.values(), account, id_])
            return self.get(account, type_, id_)  # type: ignore[return-value]

    def delete(self, account: str, type_: str, id_: str) -> bool:
        """Delete a record and its many-to-many links; True when it existed."""
        kind = self.kind(type_)
        with self.lock:
            existed = self.exists(account, type_, id_)
            self.db.execute(f"DELETE FROM {kind.table} WHERE account = ? AND id = ?", [account, id_])
            for link, (a_type, b_type) in LINKS.items():
                if a_type == type_:
                    self.db.execute("DELETE FROM links WHERE account=? AND link=? AND a=?", [account, link, id_])
                if b_type == type_:
                    self.db.execute("DELETE FROM links WHERE account=? AND link=? AND b=?", [account, link, id_])
        return existed

    def link(self, account: str, link: str, a: str, b: str, joined_at: dt.datetime | None = None) -> bool:
        """Add a many-to-many link (idempotent); True when it was new."""
        if link not in LINKS:
            raise KeyError(f"unknown link {link!r}; known: {', '.join(LINKS)}")
        with self.lock:
            present = self.execute("SELECT 1 FROM links WHERE account=? AND link=? AND a=? AND b=?", [account, link, a, b]).fetchone()
            if present:
                return False
            self.db.execute(
                "INSERT INTO links VALUES (?, ?, ?, ?, ?, ?)",
                [account, link, a, b, naive_utc(joined_at or self.now()), self.next_seq("links")],
            )
            return True

    def link_many(self, account: str, link: str, a: str, bs: Iterable[str], joined_at: dt.datetime | None = None) -> int:
        """Add links from ``a`` to each of ``bs`` (idempotent, in order) in one statement; returns how many were new."""
        import pyarrow as pa

        if link not in LINKS:
            raise KeyError(f"unknown link {link!r}; known: {', '.join(LINKS)}")
        wanted = list(dict.fromkeys(bs))
        if not wanted:
            return 0
        with self.lock:
            present = {r[0] for r in self.execute(
                "SELECT b FROM links WHERE account=? AND link=? AND a=? AND b IN (SELECT unnest(?))",
                [account, link, a, wanted]).fetchall()}
            new = [b for b in wanted if b not in present]
            if not new:
                return 0
            staged = pa.table({  # noqa: F841 - read by DuckDB's replacement scan below
                "b": pa.array(new, pa.string()),
                "joined_at": pa.array([naive_utc(joined_at or self.now())] * len(new), pa.timestamp("us")),
                "seq": pa.array([self.next_seq("links") for _ in new], pa.int64()),
            })
            self.db.execute("INSERT INTO links SELECT ?, ?, ?, b, joined_at, seq FROM staged", [account, link, a])
        return len(new)

    def unlink(self, account: str, link: str, a: str, b: str) -> bool:
        with self.lock:
            present = self.execute("SELECT 1 FROM links WHERE account=? AND link=? AND a=? AND b=?", [account, link, a, b]).fetchone()
            self.db.execute("DELETE FROM links WHERE account=? AND link=? AND a=? AND b=?", [account, link, a, b])
            return present is not None

    def add_members(self, account: str, group_type: str, group_id: str, profile_ids: Iterable[str],
                    joined_at: dt.datetime | None = None) -> int:
        """Add profiles to a list or segment (``group_type`` "list"/"segment"); returns how many were new."""
        return sum(self.link(account, MEMBERS[group_type], group_id, p, joined_at) for p in profile_ids)

    def remove_members(self, account: str, group_type: str, group_id: str, profile_ids: Iterable[str]) -> int:
        """Remove profiles from a list or segment; returns how many were members."""
        return sum(self.unlink(account, MEMBERS[group_type], group_id, p) for p in profile_ids)

    # -- accounts -----------------------------------------------------------------
    def register_account(self, account: str, api_key: str, oauth_token: str, maton_connection_id: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO accounts_meta VALUES (?, ?, ?, ?)", [account, api_key, oauth_token, maton_connection_id]
        )

    def close(self) -> None:
        """Close every cursor still open, then the database (once the threads using them are done)."""
        with self._cursors_lock:
            cursors, self._cursors = list(self._cursors), set()
        for cur in cursors:
            try:
                cur.close()
            except Exception:  # noqa: BLE001 - closing twice is harmless
                pass
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - closing twice is harmless
            pass
