"""Write rules against a real store: identity/merge semantics, bulk import job lifecycle, events, consent."""

from __future__ import annotations

import pytest

from klaviyo_sandbox.generator import generate
from klaviyo_sandbox.identity import WriteError, upsert_profile
from klaviyo_sandbox.ingest import create_event, subscribe_profiles
from klaviyo_sandbox.jobs import ImportJobs
from klaviyo_sandbox.store import Store


@pytest.fixture
def world():
    store = Store()
    account = generate(store, seed=3, accounts=1, profiles=40, events=100)[0].id
    yield store, account
    store.close()


def _event(email, name="Custom Thing", unique_id=None, **attrs):
    return {"data": {"type": "event", "attributes": {
        "properties": {"sku": "A1"}, "unique_id": unique_id, **attrs,
        "metric": {"data": {"type": "metric", "attributes": {"name": name}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}}}}}


def test_nulls_clear_fields_on_update_but_absent_fields_stay(world):
    store, account = world
    pid, created = upsert_profile(store, account, {"email": "Mixed.Case@Example.com", "first_name": "Ann",
                                                   "last_name": "Lee", "properties": {"a": 1, "b": 2}}, nulls_clear=True)
    assert created and store.get(account, "profile", pid).attributes["email"] == "mixed.case@example.com"
    same, created = upsert_profile(store, account, {"email": "mixed.case@example.com", "first_name": None,
                                                    "properties": {"a": None, "c": 3}}, nulls_clear=True)
    attrs = store.get(account, "profile", pid).attributes
    assert same == pid and not created
    assert attrs["first_name"] is None and attrs["last_name"] == "Lee" and attrs["properties"] == {"b": 2, "c": 3}


def test_conflicting_identifiers_are_a_409_naming_the_other_profile(world):
    store, account = world
    with_phone = next(r for r in store.all(account, "profile") if r.attributes["phone_number"] and r.attributes["email"])
    with_email = next(r for r in store.all(account, "profile") if r.attributes["email"] and r.id != with_phone.id)
    with pytest.raises(WriteError) as caught:
        upsert_profile(store, account, {"email": with_email.attributes["email"],
                                        "phone_number": with_phone.attributes["phone_number"]}, nulls_clear=True)
    assert caught.value.status == 409 and caught.value.code == "duplicate_profile"
    assert caught.value.body()["errors"][0]["meta"] == {"duplicate_profile_id": with_phone.id}


def test_bulk_import_job_moves_queued_processing_complete_and_ignores_nulls(world):
    store, account = world
    existing = next(r for r in store.all(account, "profile") if r.attributes["email"] and r.attributes["first_name"])
    list_id = store.ids(account, "list")[0]
    jobs = ImportJobs(store, complete_after_polls=2, complete_after_seconds=3600, start="on_poll")
    job = jobs.submit(account, [
        {"type": "profile", "attributes": {"email": "bulk.one@example.com", "first_name": "Bo"}},
        {"type": "profile", "attributes": {"email": "not-an-email"}},
        {"type": "profile", "attributes": {"email": existing.attributes["email"], "first_name": None, "title": "CEO"}},
    ], [list_id])
    assert job.attributes()["status"] == "queued"
    assert store.find_profile(account, email="bulk.one@example.com") is None  # not written before completion
    assert jobs.get(account, job.id, poll=True).attributes()["status"] == "processing"
    done = jobs.get(account, job.id, poll=True).attributes()
    assert (done["status"], done["total_count"], done["completed_count"], done["failed_count"]) == ("complete", 3, 2, 1)
    assert done["completed_at"] is not None
    new_id = store.find_profile(account, email="bulk.one@example.com")
    updated = store.get(account, "profile", existing.id).attributes
    assert updated["first_name"] == existing.attributes["first_name"] and updated["title"] == "CEO"
    assert {new_id, existing.id} <= {m for m, _ in store.members(account, "list", list_id)}
    error = job.errors[0].resource()["attributes"]
    assert error["source"]["pointer"] == "/data/attributes/profiles/data/1/attributes/email"
    assert error["original_payload"]["attributes"]["email"] == "not-an-email"


def test_a_completed_bulk_job_starts_the_next_queued_one(world):
    store, account = world
    jobs = ImportJobs(store, complete_after_polls=2, complete_after_seconds=3600, start="on_poll")
    first = jobs.submit(account, [{"type": "profile", "attributes": {"email": "queue.one@example.com"}}], [])
    second = jobs.submit(account, [{"type": "profile", "attributes": {"email": "queue.two@example.com"}}], [])
    assert second.attributes()["status"] == "queued"
    jobs.get(account, first.id, poll=True)
    assert jobs.get(account, first.id, poll=True).attributes()["status"] == "complete"
    assert second.status == "processing" and second.polls == 0  # under way without being polled
    second.worker.join()  # (the test's timeout bounds it)
    assert store.find_profile(account, email="queue.two@example.com") is not None
    # its processing is over: the first poll already shows it complete
    assert jobs.get(account, second.id, poll=True).attributes()["status"] == "complete"


def test_events_create_profiles_and_metrics_and_dedupe_on_unique_id(world):
    store, account = world
    before = store.count(account, "event")
    event_id = create_event(store, account, _event("buyer@example.com", unique_id="order-1", value=12.5,
                                                   time="2024-03-01T10:00:00+00:00"))
    assert create_event(store, account, _event("buyer@example.com", unique_id="order-1")) is None
    assert store.count(account, "event") == before + 1
    event = store.get(account, "event", event_id)
    assert event.attributes["datetime"] == "2024-03-01T10:00:00+00:00"
    assert event.attributes["event_properties"] == {"sku": "A1", "$value": 12.5, "$event_id": "order-1"}
    assert event.relationships["profile"] == store.find_profile(account, email="buyer@example.com")
    assert store.get(account, "metric", event.relationships["metric"]).attributes["name"] == "Custom Thing"


def test_subscribe_sets_consent_and_list_membership(world):
    store, account = world
    list_id = store.ids(account, "list")[-1]
    [pid] = subscribe_profiles(store, account, [{"type": "profile", "attributes": {
        "email": "fan@example.com", "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}}], list_id)
    marketing = store.get(account, "profile", pid).attributes["subscriptions"]["email"]["marketing"]
    assert marketing["consent"] == "SUBSCRIBED" and marketing["can_receive_email_marketing"] is True
    assert pid in [m for m, _ in store.members(account, "list", list_id)]


def _messy_batch(store, account, n=300):
    """Bulk-import items that hit every identity rule: matches by each identifier, repeats within
    the batch, conflicts, unknown ids, missing identifiers, nulls, properties and patches."""
    import random

    rnd = random.Random(11)
    existing = store.all(account, "profile")
    items = []
    for i in range(n):
        other = rnd.choice(existing).attributes
        attrs: dict = {}
        roll = rnd.random()
        if roll < 0.25:
            attrs["email"] = (other["email"] or "x@example.com").upper()
        elif roll < 0.4:
            attrs["phone_number"] = other["phone_number"] or "+15550001111"
        elif roll < 0.5:
            attrs["email"] = rnd.choice(existing).attributes["email"] or "q@example.com"
            attrs["phone_number"] = rnd.choice(existing).attributes["phone_number"] or "+15550002222"
        elif roll < 0.85:
            attrs["email"] = f"new{rnd.randint(0, 60)}@example.com"
        if rnd.random() < 0.3:
            attrs["phone_number"] = f"+1555{rnd.randint(0, 40):07d}"
        if rnd.random() < 0.2:
            attrs["external_id"] = f"ext-{rnd.randint(0, 30)}"
        attrs["first_name"] = rnd.choice([None, "A", "B"])
        if rnd.random() < 0.5:
            attrs["properties"] = {"k": rnd.choice([None, 1, 2]), f"p{i % 5}": i}
        if rnd.random() < 0.3:
            attrs["location"] = {"city": rnd.choice([None, "Paris"])}
        patch = {"append": {"tags": "t"}} if rnd.random() < 0.1 else None
        profile_id = rnd.choice(existing).id if rnd.random() < 0.05 else ("01NOSUCH" if rnd.random() < 0.03 else None)
        items.append((profile_id, attrs, patch))
    return items


def test_batch_import_writes_what_one_by_one_upserts_write():
    import datetime as dt
    import re

    from klaviyo_sandbox.identity import check_profile_attributes, import_profiles
    from klaviyo_sandbox.store import Clock

    def world_at_noon():
        store = Store(clock=Clock(frozen=dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)))
        return store, generate(store, seed=5, accounts=1, profiles=120, events=10)[0].id

    (one, account), (batch, _) = world_at_noon(), world_at_noon()
    items = _messy_batch(one, account)
    singly = []
    for profile_id, attrs, patch in items:
        try:
            singly.append(upsert_profile(one, account, check_profile_attributes(dict(attrs)), profile_id=profile_id,
                                         nulls_clear=False, patch_properties=patch)[0])
        except WriteError as exc:
            singly.append((exc.status, exc.code, exc.detail))
    together = import_profiles(batch, account, [(p, check_profile_attributes(dict(a)), x) for p, a, x in items])
    sql = "SELECT attrs, email, phone_number, external_id, created, updated, x_subscriptions, id FROM profiles ORDER BY seq"
    rows_one, rows_batch = one.execute(sql).fetchall(), batch.execute(sql).fetchall()
    assert [r[:-1] for r in rows_one] == [r[:-1] for r in rows_batch]  # same profiles, same order, same columns
    same_id = {a[-1]: b[-1] for a, b in zip(rows_one, rows_batch)}  # new profiles get fresh ids
    expected = [same_id[r] if isinstance(r, str) else
                (r[0], r[1], re.sub(r"01[0-9A-Z]{24}", lambda m: same_id.get(m.group(0), m.group(0)), r[2]))
                for r in singly]
    assert [r if isinstance(r, str) else (r.status, r.code, r.detail) for r in together] == expected
    assert sum(not isinstance(r, str) for r in together) > 20 and len(rows_batch) > 120 + 20  # the batch was messy
    one.close(), batch.close()
