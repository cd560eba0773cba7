"""Readers for stream rows the generic factory cannot read (``Stream.parent`` / ``Stream.factory``)."""

from __future__ import annotations

from typing import Any, Iterator

import dlt
import pyarrow as pa
from dlt.extract.resource import DltResource


def make_ids_resource(stream: Any, client: Any, options: Any = None) -> DltResource:
    """Resources without attributes (webhook topics): one ``id`` column."""

    def ids() -> Iterator[pa.Table]:
        for document in client.pages(stream.path, dict(stream.params)):
            found = [r["id"] for r in document.get("data") or []]
            if found:
                yield pa.table({"id": pa.array(found, pa.string())})

    return dlt.resource(ids, name=stream.name, table_name=stream.name, primary_key="id",
                        write_disposition=stream.write_disposition, columns={"id": {"data_type": "text", "description": "Klaviyo id (primary key)"}})


def custom_resource(stream: Any, client: Any, options: Any = None) -> DltResource:
    """The resource of a row with ``factory=`` or ``parent=``."""
    from klaviyo_source.children import make_child_resource, make_tag_links_resource
    from klaviyo_source.memberships import make_members_resource
    from klaviyo_source.reports import make_report_resource

    factories = {
        "members": make_members_resource,
        "report": make_report_resource,
        "tag_links": make_tag_links_resource,
        "ids": make_ids_resource,
    }
    if stream.factory:
        return factories[stream.factory](stream, client, options)
    return make_child_resource(stream, client, options)
