"""Renders ``docs/tables.md``: every table and column of the source, from the stream table + spec.

``python -m klaviyo_source.tables_doc`` rewrites the reference part of docs/tables.md in place; the
example queries below it are kept verbatim (a test runs them on DuckDB and PostgreSQL).  It also
rewrites the table of API scopes per resource in README.md (``klaviyo_source.scopes``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from klaviyo_source.streams import ALL_STREAMS

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "tables.md"
MARKER = "<!-- generated reference ends; example queries below are hand-written -->"


def render_reference() -> str:
    """Tables and columns as the source declares them to dlt (the resources' column hints)."""
    from klaviyo_source import klaviyo_source

    lines = [
        "# Klaviyo tables",
        "",
        "One table per resource, one row per Klaviyo record.  `id` is the Klaviyo id (primary key);",
        "attributes are top-level columns, nested objects are flattened with `__`",
        "(`location__city`), relationships are `<name>_id`, timestamps are `timestamp with time zone`",
        "(UTC), free-form bags (`properties`, `event_properties`, ...) are JSON columns",
        "(`flatten_properties=True` flattens them instead).  Generated from `klaviyo_source/streams.py`",
        "and the OpenAPI spec by `python -m klaviyo_source.tables_doc`.",
        "",
        "**Same names on every destination.**  No column name is longer than 63 characters",
        "(PostgreSQL's limit, past which dlt would shorten it with a hash of its own), so DuckDB,",
        "PostgreSQL and this page agree.  A longer path is shortened by one rule (`klaviyo_source/naming.py`):",
        "the last segment drops the words its path already says",
        "(`subscriptions__sms__transactional__can_receive_sms_transactional` ->",
        "`subscriptions__sms__transactional__can_receive`); if that is not enough, the name is cut to",
        "54 characters plus `_` and 8 hex digits of its SHA-256.  Tables loaded by earlier versions keep",
        "their old long column (DuckDB) or dlt's hashed one (PostgreSQL), no longer filled for new rows.",
        "",
        "**`_dlt_load_id`** is on every row of every table: the id of the load that wrote the row",
        "(join `_dlt_loads` on `load_id` for its time and status).  The source stamps it itself, so",
        "it is there whatever pipeline runs the source (the CLI, Airflow, your own `dlt.pipeline`).",
        "Rows loaded by earlier versions, before the column existed, keep it NULL until rewritten.",
        "",
    ]
    names = [s.name for s in ALL_STREAMS]
    source = klaviyo_source(api_key="documentation-only", resources=names, predictive_analytics=True)
    plain = klaviyo_source(api_key="documentation-only", resources=names)
    by_name = {s.name: s for s in ALL_STREAMS}
    for name in names:
        stream = by_name[name]
        resource = source.resources[name]
        columns = resource.compute_table_schema()["columns"]
        base = set(plain.resources[name].compute_table_schema()["columns"])
        load = str(stream.write_disposition)
        if stream.write_disposition == "merge" and stream.merge_strategy != "delete-insert":
            load += f" ({stream.merge_strategy})"
        if stream.incremental:
            load += f", incremental on `{stream.cursor_field}`"
            if stream.lookback == "event_lookback":
                load += " (re-reads `event_lookback`)"
        if not stream.default_selected:
            load += "; loaded only when named in `resources`"
        tier = stream.rate_tier
        lines += [
            f"## `{name}`",
            "",
            f"{stream.description}  Endpoint `{'POST' if stream.factory == 'report' else 'GET'} {stream.path}`; load: {load}; "
            f"rate tier {tier.burst_per_second}/s, {tier.steady_per_minute}/min.",
            "",
            "| column | type | notes |",
            "|---|---|---|",
        ]
        for column_name, column in columns.items():
            note = (column.get("description") or "").replace("|", "/").replace("\n", " ").strip()
            if column_name not in base:
                note = ("only with `predictive_analytics=True`. " + note).strip()
            kind = str(column.get("data_type", "?")) + (" (tz)" if column.get("data_type") == "timestamp" else "")
            lines.append(f"| `{column_name}` | {kind} | {note} |")
        lines.append("")
    lines.append(MARKER)
    return "\n".join(lines) + "\n"


def rendered_document(current: str | None = None) -> str:
    """The full document: a fresh reference + the hand-written part of ``current``."""
    current = current if current is not None else (DOC_PATH.read_text() if DOC_PATH.exists() else "")
    tail = current.split(MARKER, 1)[1] if MARKER in current else "\n"
    return render_reference() + "\n" + tail.lstrip("\n")


if __name__ == "__main__":
    from klaviyo_source.scopes import README_PATH, rendered_readme

    # written here, not through a shell redirect: `> docs/tables.md` would empty the file
    # before its hand-written part is read
    DOC_PATH.write_text(rendered_document())
    sys.stdout.write(f"wrote {DOC_PATH}\n")
    README_PATH.write_text(rendered_readme(README_PATH.read_text()))  # the scopes table
    sys.stdout.write(f"wrote the scopes table in {README_PATH}\n")
