"""Renders ``docs/tables.md``: every table and column of the source, from the stream table + spec.

``python -m klaviyo_source.tables_doc > docs/tables.md`` regenerates the reference part; the
example queries below it are kept verbatim (a test runs them on DuckDB and PostgreSQL).
"""

from __future__ import annotations

import sys
from pathlib import Path

from klaviyo_source.columns import DLT_TYPES
from klaviyo_source.resources import ReadOptions, table_columns
from klaviyo_source.streams import STREAMS

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "tables.md"
MARKER = "<!-- generated reference ends; example queries below are hand-written -->"


def render_reference() -> str:
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
    ]
    options = ReadOptions()
    for stream in STREAMS:
        load = stream.write_disposition
        if stream.incremental:
            load += f", incremental on `{stream.cursor_field}`"
            if stream.lookback == "event_lookback":
                load += " (re-reads `event_lookback`)"
        lines += [
            f"## `{stream.name}`",
            "",
            f"{stream.description}  Endpoint `GET {stream.path}`; load: {load}; "
            f"rate tier {stream.rate_tier.burst_per_second}/s, {stream.rate_tier.steady_per_minute}/min.",
            "",
            "| column | type | notes |",
            "|---|---|---|",
        ]
        optional = set(stream.optional_fields)
        enabled = ReadOptions(enabled_fields=tuple(optional))
        base = {c.name for c in table_columns(stream, options)}
        for column in table_columns(stream, enabled):
            note = column.description.replace("|", "/").replace("\n", " ")
            if column.name not in base:
                note = f"only with `{'/'.join(sorted(optional))}` enabled. " + note
            kind = DLT_TYPES[column.kind] + (" (tz)" if column.kind == "timestamp" else "")
            lines.append(f"| `{column.name}` | {kind} | {note.strip()} |")
        lines.append("")
    lines.append(MARKER)
    return "\n".join(lines) + "\n"


def rendered_document(current: str | None = None) -> str:
    """The full document: a fresh reference + the hand-written part of ``current``."""
    current = current if current is not None else (DOC_PATH.read_text() if DOC_PATH.exists() else "")
    tail = current.split(MARKER, 1)[1] if MARKER in current else "\n"
    return render_reference() + "\n" + tail.lstrip("\n")


if __name__ == "__main__":
    sys.stdout.write(rendered_document())
