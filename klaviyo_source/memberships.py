"""List and segment memberships: one row per (group id, profile id) with ``joined_group_at``.

* Joins arrive incrementally: per group, ``GET /api/lists/{id}/profiles`` (``get_profiles_for_list``;
  segments: ``get_profiles_for_segment``) filtered ``greater-or-equal(joined_group_at,<cursor>)``,
  sorted by ``joined_group_at``, with a sparse fieldset (``fields[profile]=joined_group_at``) so
  pages stay small.  The cursor is kept per group in the resource state.
* Removals are invisible to that filter: a *full-membership pass* reads the group's member ids
  (``GET /api/lists/{id}/relationships/profiles``, 100 per page) and diffs them with the stored
  members; members that left get ``removed_at`` (rows are kept, never silently dropped).  The
  pass runs when the group's last pass is older than ``full_pass_every`` (default daily) or on
  every run for groups of at most ``small_group_size`` stored members.
* A group that is gone (no longer listed, or its member endpoints answer 404 mid-run) has all its
  stored members marked ``removed_at`` in that run; the ``lists`` / ``segments`` deletion sweep
  marks the group itself ``deleted_at``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterator

import dlt
import pyarrow as pa
from dlt.extract.resource import DltResource

from klaviyo_source.deletions import _stored, sql_client
from klaviyo_source.errors import KlaviyoAPIError
from klaviyo_source.filters import condition, format_datetime, parse_datetime, utc_now

log = logging.getLogger(__name__)
TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Group:
    """A kind of profile group: its listing endpoint and member endpoints."""

    type: str  # "list" / "segment"
    listing: str  # "/api/lists"
    members: str  # "/api/lists/{id}/profiles"
    member_ids: str  # "/api/lists/{id}/relationships/profiles"
    listing_page_size: int = 10  # lists and segments: max 10 per page

    @property
    def key(self) -> str:
        return f"{self.type}_id"


GROUPS = {
    "list_members": Group("list", "/api/lists", "/api/lists/{id}/profiles", "/api/lists/{id}/relationships/profiles"),
    "segment_members": Group("segment", "/api/segments", "/api/segments/{id}/profiles",
                             "/api/segments/{id}/relationships/profiles"),
}
MEMBER_PAGE_SIZE = 100


@dataclass(frozen=True)
class MembershipOptions:
    full_pass_every: timedelta = timedelta(days=1)
    small_group_size: int = 1000


def _not_found(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return isinstance(exc, KlaviyoAPIError) and response is not None and response.status_code == 404


def group_ids(client: Any, group: Group) -> list[str]:
    """Every list (segment) id, with a one-attribute sparse fieldset."""
    ids: list[str] = []
    params = {"page[size]": group.listing_page_size, f"fields[{group.type}]": "name"}
    for document in client.pages(group.listing, params):
        ids.extend(record["id"] for record in document.get("data") or [])
    return ids


def stored_members(table: str, group: Group) -> dict[str, dict[str, datetime | None]]:
    """{group id: {profile id: joined_group_at}} of members stored without ``removed_at``."""
    found = _stored(table)
    if found is None:
        return {}
    pipeline, columns = found
    members: dict[str, dict[str, datetime | None]] = {}
    with sql_client(pipeline) as sql:
        where = " WHERE removed_at IS NULL" if "removed_at" in columns else ""
        query = f"SELECT {group.key}, profile_id, joined_group_at FROM {sql.make_qualified_table_name(table)}{where}"
        try:
            with sql.execute_query(query) as cursor:
                for group_id, profile_id, joined in cursor.fetchall():
                    members.setdefault(group_id, {})[profile_id] = joined
        except Exception as exc:  # noqa: BLE001
            from klaviyo_source.deletions import _is_missing_relation

            if _is_missing_relation(exc):
                return {}
            raise
    return members


def _table(group: Group, group_id: str, rows: list[tuple[str, Any]], removed_at: datetime | None) -> pa.Table:
    joined = [parse_datetime(v, "joined_group_at") if isinstance(v, str) else v for _, v in rows]
    return pa.table({
        group.key: pa.array([group_id] * len(rows), pa.string()),
        "profile_id": pa.array([p for p, _ in rows], pa.string()),
        "joined_group_at": pa.array(joined, TIMESTAMP),
        "removed_at": pa.array([removed_at] * len(rows), TIMESTAMP),
    })


def read_joins(client: Any, group: Group, group_id: str, cursor: str | None) -> Iterator[list[tuple[str, Any]]]:
    """Pages of (profile id, joined_group_at) joined at or after ``cursor``."""
    params: dict[str, Any] = {"page[size]": MEMBER_PAGE_SIZE, "sort": "joined_group_at",
                              "fields[profile]": "joined_group_at"}
    if cursor:
        params["filter"] = condition("greater-or-equal", "joined_group_at", parse_datetime(cursor, "cursor"))
    for document in client.pages(group.members.format(id=group_id), params):
        page = [(r["id"], (r.get("attributes") or {}).get("joined_group_at")) for r in document.get("data") or []]
        if page:
            yield page


def read_member_ids(client: Any, group: Group, group_id: str) -> set[str]:
    ids: set[str] = set()
    for document in client.pages(group.member_ids.format(id=group_id), {"page[size]": MEMBER_PAGE_SIZE}):
        ids.update(r["id"] for r in document.get("data") or [])
    return ids


def _pass_due(last: str | None, stored_count: int, now: datetime, options: MembershipOptions) -> bool:
    if stored_count == 0:
        return False  # nothing stored that could have left
    if stored_count <= options.small_group_size or last is None:
        return True
    return now - parse_datetime(last, "last_full_pass") >= options.full_pass_every


def read_memberships(client: Any, table: str, group: Group, options: MembershipOptions,
                     state: dict[str, Any]) -> Iterator[pa.Table]:
    """All membership changes of every group since the last run (joins, then removals)."""
    cursors: dict[str, str] = state.setdefault("joined_cursor", {})
    passes: dict[str, str] = state.setdefault("last_full_pass", {})
    now = utc_now()
    stored = stored_members(table, group)
    listed = group_ids(client, group)
    for group_id in sorted(set(stored) - set(listed)):
        # the group is gone (the lists/segments sweep marks it deleted_at): so are its members
        yield from _group_gone(group, group_id, stored[group_id], now, cursors, passes)
    for group_id in listed:
        try:
            joined_now: set[str] = set()
            latest = cursors.get(group_id)
            for page in read_joins(client, group, group_id, cursors.get(group_id)):
                joined_now.update(p for p, _ in page)
                stamps = [v for _, v in page if v]
                if stamps:
                    latest = max([latest, *stamps] if latest else stamps, key=lambda v: parse_datetime(v, "joined"))
                yield _table(group, group_id, page, None)
            current = stored.get(group_id, {})
            if _pass_due(passes.get(group_id), len(current), now, options):
                served = read_member_ids(client, group, group_id)
                gone = sorted(set(current) - served - joined_now)
                if gone:
                    log.info("%s %s: %d member(s) left; marking removed_at", group.type, group_id, len(gone))
                    yield _table(group, group_id, [(p, current[p]) for p in gone], now)
                passes[group_id] = format_datetime(now)
            if latest:
                cursors[group_id] = latest
        except KlaviyoAPIError as exc:
            if not _not_found(exc):
                raise
            # deleted between listing and reading its members (the lists/segments sweep marks the
            # group itself on its next listing)
            log.warning("%s %s vanished mid-run (404)", group.type, group_id)
            yield from _group_gone(group, group_id, stored.get(group_id, {}), now, cursors, passes)


def _group_gone(group: Group, group_id: str, members: dict[str, Any], now: datetime,
                cursors: dict[str, str], passes: dict[str, str]) -> Iterator[pa.Table]:
    """Rows marking every stored member of a vanished group ``removed_at``; its state is forgotten
    (should it come back, its members are read again from the start)."""
    cursors.pop(group_id, None)
    passes.pop(group_id, None)
    if members:
        log.info("%s %s: gone; marking its %d member(s) removed_at", group.type, group_id, len(members))
        yield _table(group, group_id, sorted(members.items()), now)


def make_members_resource(stream: Any, client: Any, options: Any = None,
                          membership: MembershipOptions | None = None) -> DltResource:
    """The ``list_members`` / ``segment_members`` resource (merge on group id + profile id)."""
    group = GROUPS[stream.name]
    membership = membership or getattr(options, "membership", None) or MembershipOptions()

    def members() -> Iterator[pa.Table]:
        yield from read_memberships(client, stream.name, group, membership, dlt.current.resource_state())

    return dlt.resource(
        members,
        name=stream.name,
        table_name=stream.name,
        primary_key=(group.key, "profile_id"),
        write_disposition="merge",
        columns={
            group.key: {"data_type": "text", "description": f"{group.type} id"},
            "profile_id": {"data_type": "text", "description": "profile id"},
            "joined_group_at": {"data_type": "timestamp", "timezone": True, "nullable": True,
                                "description": f"when the profile joined the {group.type}"},
            "removed_at": {"data_type": "timestamp", "timezone": True, "nullable": True,
                           "description": "when the profile was found no longer in the group, or the group deleted"},
        },
    )
