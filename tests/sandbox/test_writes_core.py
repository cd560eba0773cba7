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
    jobs = ImportJobs(store, complete_after_polls=2, complete_after_seconds=3600)
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
