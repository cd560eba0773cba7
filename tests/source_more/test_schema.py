"""One schema on every destination: docs/tables.md is the schema loaded on DuckDB and on PostgreSQL.

Column names fit PostgreSQL's 63-character identifiers by design (no destination shortens them
its own way), and every row carries the ``_dlt_load_id`` of the load that wrote it.
"""

from __future__ import annotations

import re

from klaviyo_source.streams import ALL_STREAMS
from klaviyo_source.tables_doc import DOC_PATH, MARKER

ALL = [s.name for s in ALL_STREAMS]


def documented_columns() -> dict[str, dict[str, str]]:
    """{table: {column: documented type}} from the generated reference of docs/tables.md."""
    reference = DOC_PATH.read_text().split(MARKER, 1)[0]
    tables: dict[str, dict[str, str]] = {}
    for section in re.split(r"^## ", reference, flags=re.M)[1:]:
        name = re.match(r"`(\w+)`", section).group(1)
        tables[name] = {c: t.removesuffix(" (tz)") for c, t in re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", section, re.M)}
    return tables


def loaded_columns(runner) -> dict[str, set[str]]:
    """{table: columns} as the destination's information_schema has them."""
    rows = runner.rows("SELECT table_name, column_name FROM information_schema.columns "
                       f"WHERE table_schema = '{runner.dataset}'")
    tables: dict[str, set[str]] = {}
    for table, column in rows:
        if not table.startswith("_dlt"):
            tables.setdefault(table, set()).add(column)
    return tables


def test_docs_tables_are_the_schema_loaded_on_every_destination(runner):
    pipeline, _ = runner.run(ALL, predictive_analytics=True)
    documented = documented_columns()
    assert set(documented) == set(ALL)
    loaded = loaded_columns(runner)
    assert set(loaded) == set(ALL)
    for table in ALL:
        assert loaded[table] == set(documented[table]), table
        assert all(len(c) <= 63 for c in loaded[table]), table
        schema = pipeline.default_schema.get_table_columns(table)
        assert {c: schema[c]["data_type"] for c in documented[table]} == documented[table], table


def test_every_row_carries_the_load_id_of_the_load_that_wrote_it(runner):
    sb = runner.sb
    resources = ["profiles", "lists", "list_members", "metric_aggregates", "flow_actions", "tag_links"]
    runner.run(resources)
    first = {r[0] for r in runner.rows("SELECT load_id FROM _dlt_loads")}
    for table in resources:
        assert runner.count(table) > 0, table
        ids = {r[0] for r in runner.rows(f"SELECT DISTINCT _dlt_load_id FROM {table}")}
        assert ids and ids <= first, table

    profile = sb.control.records("profile")[0]["id"]
    sb.control.set_clock(advance_seconds=5)
    sb.control.update_profile(profile, attributes={"first_name": "Changed"})
    runner.run(["profiles"])
    (second,) = {r[0] for r in runner.rows("SELECT load_id FROM _dlt_loads")} - first
    assert runner.rows(f"SELECT _dlt_load_id FROM profiles WHERE id = '{profile}'") == [(second,)]
    assert runner.count("profiles", f"_dlt_load_id = '{second}'") < runner.count("profiles")


def test_tables_loaded_before_load_ids_get_the_column_on_the_next_run(runner, monkeypatch):
    import klaviyo_source

    # an earlier version: no _dlt_load_id column at all
    with monkeypatch.context() as patch:
        patch.setattr(klaviyo_source, "stamp_load_ids", lambda resource: resource)
        runner.run(["lists", "tags"])
    assert "_dlt_load_id" not in loaded_columns(runner)["lists"]
    before = runner.count("lists")

    sb = runner.sb
    sb.control.set_clock(advance_seconds=5)
    changed = sb.control.records("list")[0]["id"]
    sb.control.update("list", changed, {"name": "Renamed"})
    runner.run(["lists", "tags"])
    assert runner.count("lists") == before
    (load_id,) = runner.rows(f"SELECT _dlt_load_id FROM lists WHERE id = '{changed}'")[0]
    assert load_id is not None
    assert runner.count("tags", "_dlt_load_id IS NULL") == 0  # read in full every run: every row rewritten


def test_load_ids_with_dlts_own_option_on_too(runner, monkeypatch):
    # a user's pipeline may also set dlt's option: dlt then writes the same id over the source's
    monkeypatch.setenv("NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID", "true")
    runner.run(["lists"])
    (load_id,) = {r[0] for r in runner.rows("SELECT load_id FROM _dlt_loads")}
    assert runner.rows("SELECT DISTINCT _dlt_load_id FROM lists") == [(load_id,)]
