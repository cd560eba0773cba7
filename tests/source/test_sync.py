"""Full and incremental loads against the sandbox over HTTP, into DuckDB and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.source.conftest import truth_ids

CORE = ["profiles", "events", "metrics", "campaigns", "catalog_items", "catalog_variants", "catalog_categories"]
TYPES = {
    "profiles": "profile",
    "events": "event",
    "metrics": "metric",
    "campaigns": "campaign",
    "catalog_items": "catalog-item",
    "catalog_variants": "catalog-variant",
    "catalog_categories": "catalog-category",
}


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def _loaded_rows(pipeline, table: str) -> int:
    return pipeline.last_trace.last_normalize_info.row_counts.get(table, 0)


def test_full_then_incremental_picks_up_exactly_the_changes(runner):
    sb = runner.sb
    pipeline, _ = runner.run(CORE)
    for table in CORE:
        ids = runner.ids(table)
        assert len(ids) == len(set(ids)), f"duplicates in {table}"
        assert set(ids) == truth_ids(sb, TYPES[table]), table
    # archived campaigns are read too (Klaviyo hides them unless asked)
    assert any(c["attributes"].get("archived") for c in sb.control.records("campaign"))
    assert runner.rows("SELECT count(*) FROM campaigns WHERE archived")[0][0] > 0

    watermark = max(_utc(p["attributes"]["updated"]) for p in sb.control.records("profile"))
    changed = [p["id"] for p in sb.control.records("profile")[:5]]
    for i, profile_id in enumerate(changed):
        sb.control.update_profile(profile_id, {"first_name": f"Changed{i}"})
    profile_id = changed[0]
    new_event = sb.control.insert_event(profile_id, "Placed Order", properties={"OrderId": "NEW-1"}, value=42.5)
    campaign = sb.control.records("campaign")[0]
    sb.control.update("campaign", campaign["id"], {"name": "Renamed campaign"})

    pipeline, _ = runner.run(CORE)
    # only profiles updated at or after the old watermark second were read again
    expected = [p for p in sb.control.records("profile") if _utc(p["attributes"]["updated"]) >= watermark.replace(microsecond=0)]
    assert _loaded_rows(pipeline, "profiles") == len(expected)
    assert dict(runner.rows("SELECT id, first_name FROM profiles WHERE first_name LIKE 'Changed%'")) == {
        pid: f"Changed{i}" for i, pid in enumerate(changed)
    }
    assert runner.rows(f"SELECT value, profile_id FROM events WHERE id = '{new_event}'") == [(42.5, profile_id)]
    assert runner.rows(f"SELECT name FROM campaigns WHERE id = '{campaign['id']}'") == [("Renamed campaign",)]
    for table in CORE:
        ids = runner.ids(table)
        assert len(ids) == len(set(ids)), f"duplicates in {table} after the incremental run"
        assert set(ids) == truth_ids(sb, TYPES[table]), table


def test_columns_are_typed_and_flattened(runner):
    runner.run(["profiles", "events"])
    if runner.destination.destination_name == "duckdb":
        types = dict(runner.rows("SELECT column_name, data_type FROM information_schema.columns "
                                 f"WHERE table_schema = '{runner.dataset}' AND table_name IN ('profiles', 'events')"))
        assert types["updated"] == "TIMESTAMP WITH TIME ZONE"
        assert types["datetime"] == "TIMESTAMP WITH TIME ZONE"
        assert types["properties"] == "JSON" and types["event_properties"] == "JSON"
    else:
        types = dict(runner.rows("SELECT column_name, data_type FROM information_schema.columns "
                                 f"WHERE table_schema = '{runner.dataset}' AND table_name IN ('profiles', 'events')"))
        assert types["updated"] == "timestamp with time zone"
        assert types["properties"] == "jsonb" and types["event_properties"] == "jsonb"
    truth = {p["id"]: p["attributes"] for p in runner.sb.control.records("profile")}
    rows = runner.rows("SELECT id, email, location__city, subscriptions__email__marketing__consent FROM profiles")
    assert len(rows) == len(truth)
    for pid, email, city, consent in rows:
        attrs = truth[pid]
        assert email == attrs.get("email")
        assert city == (attrs.get("location") or {}).get("city")
    events = {e["id"]: e for e in runner.sb.control.records("event")}
    for eid, metric_id, profile_id in runner.rows("SELECT id, metric_id, profile_id FROM events"):
        rel = events[eid]["relationships"]
        assert metric_id == rel["metric"] and profile_id == rel["profile"]


def test_late_events_inside_the_lookback_are_captured(runner):
    sb = runner.sb
    runner.run(["events"])
    profile_id = sb.control.records("profile")[0]["id"]
    now = dt.datetime.now(dt.timezone.utc)
    late = sb.control.insert_event(profile_id, "Placed Order", datetime=now - dt.timedelta(days=2), value=10.0)
    too_late = sb.control.insert_event(profile_id, "Placed Order", datetime=now - dt.timedelta(days=10), value=11.0)
    runner.run(["events"])  # default event_lookback: 3 days
    ids = set(runner.ids("events"))
    assert late in ids
    assert too_late not in ids  # older than the lookback: by design only a backfill reads it
    runner.run(["events"], event_lookback="15d")
    assert too_late in set(runner.ids("events"))
    assert len(runner.ids("events")) == len(set(runner.ids("events")))


def test_events_re_read_by_the_lookback_are_kept_not_rewritten(runner):
    runner.run(["events"])
    total = runner.count("events")
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    re_read = [e["id"] for e in runner.sb.control.records("event") if _utc(e["attributes"]["datetime"]) >= since]
    assert re_read, "the sandbox should hold events inside the default 3-day lookback"
    with runner.pipeline().sql_client() as client:  # mark the stored copy of one re-read event
        client.execute_sql(f"UPDATE {client.make_qualified_table_name('events')} SET uuid = 'stored-copy' "
                           f"WHERE id = '{re_read[0]}'")
    pipeline, _ = runner.run(["events"])
    assert _loaded_rows(pipeline, "events") >= len(re_read)  # the lookback really re-read them
    # insert-only merge: the stored row is kept (delete-insert would have rewritten it), no duplicates
    assert runner.rows(f"SELECT uuid FROM events WHERE id = '{re_read[0]}'") == [("stored-copy",)]
    assert runner.count("events") == total == len(set(runner.ids("events")))


def test_watermark_never_passes_now_even_with_future_records(runner):
    sb = runner.sb
    profile_id = sb.control.records("profile")[0]["id"]
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    future_event = sb.control.insert_event(profile_id, "Placed Order", datetime=future, value=1.0)
    pipeline, _ = runner.run(["events"])
    assert future_event in set(runner.ids("events"))
    state = pipeline.state["sources"]["klaviyo"]["resources"]["events"]["incremental"]["datetime"]
    assert _utc(str(state["last_value"]).replace(" ", "T")) <= dt.datetime.now(dt.timezone.utc)
    late = sb.control.insert_event(profile_id, "Placed Order", datetime=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    runner.run(["events"])  # the filter is built from a watermark <= now: no 400, the new event arrives
    assert late in set(runner.ids("events"))
