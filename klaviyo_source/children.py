"""Child endpoints read once per parent record: ``/api/campaigns/{id}/campaign-messages`` and friends.

A ``Stream`` row with ``parent="<stream name>"`` and a ``{id}`` path is read by listing the
parent's ids (sparse fieldset, every partition; recursively for grandchildren such as
flow messages under flow actions under flows) and reading the child endpoint for each.
Rows get the parent id column (``<parent type>_id``).  Parents deleted between the listing
and the read (404) are skipped.  Children are merged on id; a row with a ``cursor_field``
(flow actions and flow messages allow ``updated`` filters) reads only the children changed since
the stored watermark (one request per parent is still needed), others are read fully every run.

``tag_links`` reads ``/api/tags/{id}/relationships/{campaigns,flows,lists,segments}``: one
row per (tag, resource type, resource id), replaced every run.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import dlt
import pyarrow as pa
from dlt.extract.resource import DltResource

from klaviyo_source.arrow import PageConverter
from klaviyo_source.cleaning import CLEAN_ORJSON
from klaviyo_source.columns import stream_columns
from klaviyo_source.deletions import live_ids
from klaviyo_source.errors import KlaviyoAPIError
from klaviyo_source.filters import combine, range_conditions, to_utc
from klaviyo_source.memberships import _not_found

log = logging.getLogger(__name__)

TAGGED = ("campaigns", "flows", "lists", "segments")


def _streams() -> dict[str, Any]:
    from klaviyo_source.streams import streams_by_name

    return streams_by_name()


def parent_ids(client: Any, stream: Any) -> Iterator[str]:
    """Ids of every record of ``stream`` (a top-level stream, or a child stream via its parents)."""
    if not stream.parent:
        yield from sorted(live_ids(client, stream))
        return
    parent = _streams()[stream.parent]
    for pid in parent_ids(client, parent):
        try:
            for document in client.pages(stream.path.format(id=pid), _params(stream, ids_only=True)):
                for record in document.get("data") or []:
                    yield record["id"]
        except KlaviyoAPIError as exc:
            if not _not_found(exc):
                raise


def _params(stream: Any, ids_only: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = dict(stream.params)
    if stream.page_size:
        params["page[size]"] = stream.page_size
    if ids_only and stream.cursor_field and stream.resource_type:
        params[f"fields[{stream.resource_type}]"] = stream.cursor_field
    return params


def parent_column(stream: Any) -> str:
    parent = _streams()[stream.parent]
    return f"{parent.resource_type.replace('-', '_')}_id"


def read_children(client: Any, stream: Any, converter: PageConverter, since: Any = None) -> Iterator[pa.Table]:
    """Every parent's children; with ``since``, only those whose cursor field is at or after it."""
    parent = _streams()[stream.parent]
    column = parent_column(stream)
    params = _params(stream)
    if since is not None:
        params["filter"] = combine(range_conditions(stream.cursor_field, stream.cursor_operators, since, None))
    for pid in parent_ids(client, parent):
        try:
            for document in client.pages(stream.path.format(id=pid), params, decoder=CLEAN_ORJSON):
                table = converter.convert(document.get("data") or [])
                if table.num_rows:
                    if column in table.column_names:
                        table = table.drop_columns([column])
                    yield table.append_column(column, pa.array([pid] * table.num_rows, pa.string()))
        except KlaviyoAPIError as exc:
            if not _not_found(exc):
                raise
            log.warning("%s: parent %s %s vanished mid-run (404); skipped", stream.name, parent.name, pid)


def make_child_resource(stream: Any, client: Any, options: Any = None) -> DltResource:
    """The resource of a per-parent child endpoint (merge on id; incremental when the row has a cursor)."""
    columns = stream_columns(stream)
    converter = PageConverter(columns)
    hints = {c.name: c.dlt_hint() for c in columns}
    hints[parent_column(stream)] = {"name": parent_column(stream), "data_type": "text", "nullable": True,
                                    "description": f"id of the parent {stream.parent} record"}

    if stream.cursor_field:
        from klaviyo_source.resources import ClampedIncremental

        cursor_default = ClampedIncremental(
            stream.cursor_field, initial_value=getattr(options, "start_date", None), primary_key=(),
            on_cursor_value_missing="include", allow_external_schedulers=False)

        def children(cursor: Any = cursor_default) -> Iterator[pa.Table]:
            since = to_utc(cursor.start_value) if cursor is not None and cursor.start_value is not None else None
            yield from read_children(client, stream, converter, since)
    else:
        def children() -> Iterator[pa.Table]:
            yield from read_children(client, stream, converter)

    return dlt.resource(children, name=stream.name, table_name=stream.name, primary_key=stream.primary_key,
                        write_disposition=stream.write_disposition, columns=hints)


def read_tag_links(client: Any, stream: Any) -> Iterator[pa.Table]:
    tags = _streams()["tags"]
    for tag_id in parent_ids(client, tags):
        for kind in TAGGED:
            try:
                document = client.get(f"/api/tags/{tag_id}/relationships/{kind}")
            except KlaviyoAPIError as exc:
                if _not_found(exc):
                    break  # tag deleted mid-run
                raise
            ids = [r["id"] for r in document.get("data") or []]
            if ids:
                yield pa.table({
                    "tag_id": pa.array([tag_id] * len(ids), pa.string()),
                    "resource_type": pa.array([kind[:-1]] * len(ids), pa.string()),
                    "resource_id": pa.array(ids, pa.string()),
                })


def make_tag_links_resource(stream: Any, client: Any, options: Any = None) -> DltResource:
    """``tag_links``: which campaigns, flows, lists and segments carry each tag (replaced every run)."""

    def links() -> Iterator[pa.Table]:
        yield from read_tag_links(client, stream)

    return dlt.resource(links, name=stream.name, table_name=stream.name,
                        primary_key=("tag_id", "resource_type", "resource_id"), write_disposition="replace",
                        columns={"tag_id": {"data_type": "text", "description": "tag id"},
                                 "resource_type": {"data_type": "text",
                                                   "description": "campaign, flow, list or segment"},
                                 "resource_id": {"data_type": "text", "description": "id of the tagged record"}})
