"""Reverse sync against the sandbox over HTTP, with the audience in DuckDB and in the real PostgreSQL."""

from __future__ import annotations

import pytest

from klaviyo_source.reverse_sync import REJECTS_TABLE, STATE_TABLE, ReverseSyncError, make_client, reverse_sync
from klaviyo_source.reverse_sync.demo import list_members
from klaviyo_source.reverse_sync.source_rows import Warehouse
from klaviyo_source.reverse_sync.state import SyncState

# the auth and CLI tests exercise no destination behaviour: one destination is enough
DUCKDB_ONLY = pytest.mark.parametrize("destination", ["duckdb"], indirect=True)


def people(n: int, start: int = 0, **extra):
    return [{"email": f"person{i}@audience.test", "first_name": f"First{i}", "tier": "gold" if i % 2 else "silver",
             "ltv": float(i * 10), **extra} for i in range(start, start + n)]


def config(**over):
    base = {
        "name": "vip",
        "table": "audience",
        "identifiers": {"email": "email"},
        "attributes": {"first_name": "first_name"},
        "properties": {"tier": "tier", "ltv": "ltv"},
        "list": {"name": "VIP", "create": True, "mode": "mirror"},
    }
    base.update(over)
    return base


def run(warehouse, client, cfg=None, **kwargs):
    destination, dataset, pipelines_dir = warehouse
    return reverse_sync(cfg or config(), destination=destination, dataset_name=dataset, client=client,
                        pipelines_dir=pipelines_dir, **kwargs)


def profile_by_email(client, email):
    page = client.get("/api/profiles", params={"filter": f'equals(email,"{email}")'})
    data = page.get("data") or []
    return data[0] if data else None


def member_emails(client, list_id):
    return sorted(m["email"] for m in list_members(client, list_id))


def state_rows(warehouse, name="vip"):
    destination, dataset, pipelines_dir = warehouse
    return SyncState(Warehouse(destination, dataset, pipelines_dir=pipelines_dir + "_read"), name).load().to_pylist()


def rejects(warehouse, name="vip"):
    destination, dataset, pipelines_dir = warehouse
    return SyncState(Warehouse(destination, dataset, pipelines_dir=pipelines_dir + "_read"), name).rejects()


def test_push_then_unchanged_rerun_sends_nothing(warehouse, load, sandbox, client):
    sb, counter = sandbox
    load("audience", people(12))
    first = run(warehouse, client)
    assert (first.read, first.sent, first.created, first.added_to_list, first.rejected) == (12, 12, 12, 12, 0)
    assert first.list_created and first.jobs == 1
    assert member_emails(client, first.list_id) == sorted(p["email"] for p in people(12))
    person = profile_by_email(client, "person3@audience.test")["attributes"]
    assert person["first_name"] == "First3" and person["properties"] == {"tier": "gold", "ltv": 30.0}
    assert len(state_rows(warehouse)) == 12

    counter.reset()
    second = run(warehouse, client, config(list={"id": first.list_id, "mode": "mirror"}))
    assert (second.read, second.unchanged, second.sent, second.added_to_list, second.removed_from_list) == (12, 12, 0, 0, 0)
    assert counter.total() == 0, counter.seen  # list given by id: not a single request reaches Klaviyo

    counter.reset()
    third = run(warehouse, client)  # list by name: one lookup, still no write
    assert third.sent == 0 and counter.writes() == 0 and counter.total("GET", "/api/lists") == 1


def test_only_changed_rows_are_sent(warehouse, load, sandbox, client):
    sb, counter = sandbox
    rows = people(8)
    load("audience", rows)
    run(warehouse, client)
    rows[2]["first_name"] = "Changed"
    rows[5]["ltv"] = 999.0
    load("audience", rows)
    counter.reset()
    report = run(warehouse, client)
    assert (report.sent, report.updated, report.created, report.unchanged) == (2, 2, 0, 6)
    assert counter.total("POST", "/api/profile-bulk-import-jobs") == 1
    assert profile_by_email(client, "person2@audience.test")["attributes"]["first_name"] == "Changed"
    assert profile_by_email(client, "person5@audience.test")["attributes"]["properties"]["ltv"] == 999.0


def test_mirror_removes_exactly_the_departed_members(warehouse, load, sandbox, client):
    sb, counter = sandbox
    load("audience", people(10))
    first = run(warehouse, client)
    # someone else's member of the same list: the sync never added it, so it must stay
    outsider = next(p for p in client.get("/api/profiles", params={"page[size]": 20})["data"]
                    if p["attributes"]["email"] and not p["attributes"]["email"].endswith("@audience.test"))
    added = client.rest_client().request(f"/api/lists/{first.list_id}/relationships/profiles", method="POST",
                                         json={"data": [{"type": "profile", "id": outsider["id"]}]},
                                         headers={"content-type": "application/vnd.api+json"})
    assert added.status_code == 204
    load("audience", [p for p in people(10) if p["email"] not in
                                       {"person1@audience.test", "person4@audience.test", "person7@audience.test"}])
    counter.reset()
    report = run(warehouse, client)
    assert (report.removed_from_list, report.sent, report.unchanged) == (3, 0, 7)
    assert counter.total("DELETE") == 1
    expected = sorted(p["email"] for p in people(10) if p["email"] not in
                      {"person1@audience.test", "person4@audience.test", "person7@audience.test"})
    expected = sorted(expected + [outsider["attributes"]["email"]])
    assert member_emails(client, first.list_id) == expected
    # departed people keep their profile; they are only out of the list
    assert profile_by_email(client, "person4@audience.test") is not None
    # re-running removes nothing more
    counter.reset()
    again = run(warehouse, client)
    assert again.removed_from_list == 0 and counter.writes() == 0


def test_add_mode_never_removes(warehouse, load, sandbox, client):
    load("audience", people(5))
    first = run(warehouse, client, config(list={"name": "Adds", "create": True, "mode": "add"}))
    load("audience", people(2))
    second = run(warehouse, client, config(list={"name": "Adds", "mode": "add"}))
    assert second.removed_from_list == 0
    assert len(member_emails(client, first.list_id)) == 5


def test_null_clears_the_field_in_klaviyo(warehouse, load, sandbox, client):
    rows = people(4)
    load("audience", rows)
    run(warehouse, client)
    rows[1]["first_name"] = None
    rows[1]["tier"] = None
    load("audience", rows)
    report = run(warehouse, client)
    assert (report.cleared, report.sent) == (1, 1)
    attributes = profile_by_email(client, "person1@audience.test")["attributes"]
    assert attributes["first_name"] is None
    assert "tier" not in attributes["properties"] and attributes["properties"]["ltv"] == 10.0
    assert profile_by_email(client, "person2@audience.test")["attributes"]["first_name"] == "First2"
    assert run(warehouse, client).sent == 0  # the clear was accepted: state advanced


def test_local_rejects_and_conflicts_land_in_rejects_table(warehouse, load, sandbox, client):
    sb, counter = sandbox
    # two existing Klaviyo profiles: one holds an email, the other an external id
    for attributes in ({"email": "holder@audience.test"}, {"external_id": "ext-owned"}):
        created = client.rest_client().request("/api/profile-import", method="POST",
                                               json={"data": {"type": "profile", "attributes": attributes}},
                                               headers={"content-type": "application/vnd.api+json"})
        assert created.status_code == 201
    audience = [
        {"email": "ok@audience.test", "external_id": "ext-ok", "first_name": "Ok"},
        {"email": "not-an-email", "external_id": None, "first_name": "Bad"},
        {"email": None, "external_id": None, "first_name": "Nobody"},
        # identifiers of two different existing profiles: Klaviyo answers duplicate_profile
        {"email": "holder@audience.test", "external_id": "ext-owned", "first_name": "Clash"},
    ]
    load("audience", audience)
    cfg = config(identifiers={"email": "email", "external_id": "external_id"}, properties={})
    report = run(warehouse, client, cfg)
    assert (report.read, report.rejected_local, report.rejected_remote, report.sent) == (4, 2, 1, 2)
    assert report.added_to_list == 1
    found = {(r["stage"], r["identity_key"]): r for r in rejects(warehouse)}
    assert "invalid email" in found[("local", "email:not-an-email")]["reason"]
    assert any(stage == "local" and key is None and "no identifier" in r["reason"] for (stage, key), r in found.items())
    clash = found[("conflict", "external_id:ext-owned")]
    assert "duplicate_profile" in clash["reason"] and "holder@audience.test" in clash["row_json"]
    assert profile_by_email(client, "not-an-email") is None
    assert member_emails(client, report.list_id) == ["ok@audience.test"]
    # the conflicting row is retried next time (state did not advance), the rest is unchanged
    again = run(warehouse, client, cfg)
    assert (again.sent, again.rejected_remote, again.unchanged) == (1, 1, 1)


def test_reject_threshold_fails_the_run_before_sending(warehouse, load, sandbox, client):
    sb, counter = sandbox
    load("audience", people(2) + [{"email": f"bad{i}", "first_name": "x", "tier": "t", "ltv": 1.0}
                                                   for i in range(3)])
    counter.reset()
    with pytest.raises(ReverseSyncError, match="3 of 5 rows rejected"):
        run(warehouse, client, config(max_rejected_fraction=0.5))
    assert counter.writes() == 0
    assert len(rejects(warehouse)) == 3  # recorded all the same


def test_crash_between_batches_then_rerun(warehouse, load, sandbox, client):
    sb, counter = sandbox
    load("audience", people(25))
    cfg = config(batch_size=10)

    class Killed(Exception):
        pass

    def die_after_first(number, report):
        if number == 0:
            raise Killed

    with pytest.raises(Killed):
        run(warehouse, client, cfg, on_batch=die_after_first)
    assert len(state_rows(warehouse)) == 10  # the accepted batch is remembered
    counter.reset()
    report = run(warehouse, client, cfg)
    assert (report.sent, report.jobs, report.unchanged) == (15, 2, 10)
    assert counter.total("POST", "/api/profile-bulk-import-jobs") == 2
    assert member_emails(client, report.list_id) == sorted(p["email"] for p in people(25))
    for person in people(25)[::6]:
        assert len(client.get("/api/profiles", params={"filter": f'equals(email,"{person["email"]}")'})["data"]) == 1
    assert run(warehouse, client, cfg).sent == 0


@pytest.mark.parametrize("in_flight, posts_before_first_poll", [(3, 3), (1, 1)])
def test_jobs_are_submitted_ahead_of_the_one_awaited(warehouse, load, sandbox, client, in_flight,
                                                     posts_before_first_poll):
    sb, counter = sandbox
    load("audience", people(25))
    counter.reset()
    report = run(warehouse, client, config(batch_size=10, jobs_in_flight=in_flight))
    jobs = [method for method, path in counter.order if path.startswith("/api/profile-bulk-import-jobs")]
    assert jobs.count("POST") == 3 and jobs.index("GET") == posts_before_first_poll
    assert (report.sent, report.jobs) == (25, 3)
    assert len(state_rows(warehouse)) == 25
    assert member_emails(client, report.list_id) == sorted(p["email"] for p in people(25))


def test_failure_after_a_job_was_submitted_then_rerun(warehouse, load, sandbox, client):
    """The job is accepted by Klaviyo but the run dies before it learns the outcome: the rerun sends
    the batch again (an idempotent upsert) and everything ends up there exactly once."""
    sb, counter = sandbox
    load("audience", people(6))
    sb.set_faults({"get_bulk_import_profiles_job": {"status": 403}})
    with pytest.raises(ReverseSyncError, match="403"):
        run(warehouse, client)
    assert state_rows(warehouse) == []
    sb.set_faults(None)
    report = run(warehouse, client)
    assert (report.sent, report.rejected) == (6, 0)
    assert member_emails(client, report.list_id) == sorted(p["email"] for p in people(6))
    assert len(client.get("/api/profiles", params={"filter": 'equals(email,"person2@audience.test")'})["data"]) == 1


def test_dry_run_sends_nothing(warehouse, load, sandbox, client):
    sb, counter = sandbox
    rows = people(6) + [{"email": "broken", "first_name": "B", "tier": "t", "ltv": 0.0}]
    load("audience", rows)
    counter.reset()
    report = run(warehouse, client, dry_run=True)
    assert counter.total() == 0
    assert report.would == {"create": 6, "update": 0, "clear": 0, "add": 6, "remove": 0, "subscribe": 0, "reject": 1}
    assert len(report.samples["create"]) == 5 and report.samples["reject"][0]["reason"].startswith("invalid email")
    assert state_rows(warehouse) == [] and rejects(warehouse) == []
    assert profile_by_email(client, "person0@audience.test") is None
    assert "dry run" in report.summary()


def test_consent_only_when_mapped(warehouse, load, sandbox, client):
    rows = [{"email": "yes@audience.test", "opted_in": True, "opted_in_at": "2024-05-01T10:00:00+00:00"},
            {"email": "no@audience.test", "opted_in": False, "opted_in_at": None}]
    load("audience", rows)
    cfg = config(attributes={}, properties={},
                 consent={"email": {"column": "opted_in", "consented_at": "opted_in_at"}})
    report = run(warehouse, client, cfg)
    assert report.subscribed == 1 and report.added_to_list == 2

    def consent(email):
        found = client.get("/api/profiles", params={"filter": f'equals(email,"{email}")',
                                                    "additional-fields[profile]": "subscriptions"})["data"][0]
        return found["attributes"]["subscriptions"]["email"]["marketing"]["consent"]

    assert consent("yes@audience.test") == "SUBSCRIBED"
    assert consent("no@audience.test") == "NEVER_SUBSCRIBED"  # list membership implies no consent
    again = run(warehouse, client, cfg)  # the consent stage kept what the profile stage recorded
    assert (again.subscribed, again.sent) == (0, 0)


@DUCKDB_ONLY
def test_auth_failure_is_one_line_without_the_key(warehouse, load, sandbox):
    sb, _ = sandbox
    load("audience", people(2))
    bad = make_client("pk_wrong_key_123456", sb.base_url, pacing=False, max_attempts=1)
    with pytest.raises(ReverseSyncError) as failure:
        run(warehouse, bad)
    message = str(failure.value)
    assert "\n" not in message and "pk_wrong_key_123456" not in message and "401" in message


@DUCKDB_ONLY
def test_cli_flags_through_the_maton_gateway(warehouse, load, sandbox):
    """What ``klaviyo-dlt reverse-sync`` calls, with Maton auth against the sandbox's gateway."""
    from klaviyo_source.reverse_sync.flags import run_reverse_sync

    sb, counter = sandbox
    destination, dataset, pipelines_dir = warehouse
    load("audience", people(3))
    report = run_reverse_sync(destination=destination, dataset_name=dataset, pipelines_dir=pipelines_dir,
                              auth="maton", api_key=sb.maton_api_key, base_url=f"{sb.base_url}/klaviyo",
                              maton_connection=sb.accounts[0].maton_connection_id,
                              table="audience", email="email", attributes=["first_name=first_name"],
                              properties=["tier=tier"], list_name="Via Maton", create_list=True, list_mode="mirror")
    assert (report.sync_name, report.sent, report.added_to_list) == ("via_maton", 3, 3)
    client = make_client(sb.api_key, sb.base_url, pacing=False)
    assert member_emails(client, report.list_id) == sorted(p["email"] for p in people(3))


def test_state_and_rejects_tables_live_in_the_destination(warehouse, load, sandbox, client):
    load("audience", people(3) + [{"email": "x", "first_name": "X", "tier": "t", "ltv": 1.0}])
    run(warehouse, client)
    destination, dataset, pipelines_dir = warehouse
    tables = Warehouse(destination, dataset, pipelines_dir=pipelines_dir + "_t").table_columns_map()
    assert STATE_TABLE in tables and REJECTS_TABLE in tables
    assert {"identity_key", "profile_hash", "in_list", "list_id"} <= set(tables[STATE_TABLE])


def test_round_trip_extract_audience_reverse_sync_extract(warehouse, sandbox, client):
    """Extract with the Klaviyo source, build an audience in SQL, reverse-sync it, extract again."""
    import json

    import dlt

    from klaviyo_source import klaviyo_source

    sb, counter = sandbox
    destination, dataset, pipelines_dir = warehouse
    extraction = dlt.pipeline("rs_round_trip", destination=destination, dataset_name=dataset,
                              pipelines_dir=pipelines_dir + "_extract")
    file_format = "parquet" if destination.destination_type.endswith("duckdb") else "csv"

    def extract():
        source = klaviyo_source(api_key=sb.api_key, base_url=sb.base_url, resources=["profiles"], pacing=False)
        extraction.run(source, loader_file_format=file_format).raise_on_failed_jobs()

    extract()
    audience_sql = ("select email, upper(first_name) as first_name, 'round-trip' as segment from profiles "
                    "where email is not null order by email limit 8")
    cfg = config(table=None, query=audience_sql, properties={"segment": "segment"},
                 list={"name": "Round trip", "create": True, "mode": "mirror"})
    report = run(warehouse, client, cfg)
    assert (report.read, report.sent, report.updated, report.added_to_list) == (8, 8, 8, 8)

    extract()  # incremental: picks up the profiles the reverse sync just updated
    reader = Warehouse(destination, dataset, pipelines_dir=pipelines_dir + "_read")
    loaded = reader.read_arrow("select email, first_name, properties from profiles where email is not null "
                               "order by email").to_pylist()
    tagged = [r for r in loaded if (json.loads(r["properties"]) if isinstance(r["properties"], str)
                                    else (r["properties"] or {})).get("segment") == "round-trip"]
    assert [r["email"] for r in tagged] == [r["email"] for r in loaded[:8]]
    assert all(r["first_name"] == r["first_name"].upper() for r in tagged if r["first_name"])
    assert member_emails(client, report.list_id) == [r["email"] for r in loaded[:8]]

    # mirror removal resolves Klaviyo ids from the extracted profiles table: no profile lookups
    cfg["query"] = audience_sql.replace("limit 8", "limit 5")
    counter.reset()
    smaller = run(warehouse, client, cfg)
    assert smaller.removed_from_list == 3 and counter.total("GET", "/api/profiles") == 0
    assert member_emails(client, report.list_id) == [r["email"] for r in loaded[:5]]


def test_dry_run_shows_updates_clears_and_removals(warehouse, load, sandbox, client):
    sb, counter = sandbox
    rows = people(5)
    load("audience", rows)
    run(warehouse, client)
    rows[0]["first_name"] = None
    rows[1]["tier"] = "platinum"
    load("audience", rows[:4])
    counter.reset()
    report = run(warehouse, client, dry_run=True)
    assert counter.total() == 0
    assert report.would == {"create": 0, "update": 2, "clear": 1, "add": 0, "remove": 1, "subscribe": 0, "reject": 0}
    assert report.samples["clear"] == [{"identity": "email:person0@audience.test", "fields": ["first_name"]}]
    assert report.samples["remove"] == [{"identity": "email:person4@audience.test"}]
    assert report.samples["update"][1]["properties.tier"] == "platinum"
