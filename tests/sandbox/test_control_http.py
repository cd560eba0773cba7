"""The control API (sb.control) over real HTTP: each change is checked through the Klaviyo API itself."""

from __future__ import annotations

import datetime as dt

import pytest
import requests

from klaviyo_sandbox import Sandbox
from klaviyo_sandbox.control_client import ControlClient, ControlError


@pytest.fixture(scope="module")
def sb():
    with Sandbox(seed=31, accounts=2, profiles=40, events=200, rate_limits=False, validate_responses=True) as sandbox:
        yield sandbox


def get(sb, path, account=0, **params):
    response = requests.get(sb.base_url + path, params=params or None, headers=sb.headers(account), timeout=30)
    return response


def test_update_profile_bumps_updated_and_is_seen_by_incremental_filter(sb):
    profile = sb.control.records("profile")[0]
    before = profile["attributes"]["updated"]
    changed = sb.control.update_profile(profile["id"], {"first_name": "Controlled"}, properties={"vip": True})
    assert changed["attributes"]["updated"] > before
    seen = get(sb, f"/api/profiles/{profile['id']}").json()["data"]["attributes"]
    assert seen["first_name"] == "Controlled" and seen["properties"]["vip"] is True
    since = (dt.datetime.fromisoformat(seen["updated"]) - dt.timedelta(seconds=1)).isoformat()
    ids = [p["id"] for p in get(sb, "/api/profiles", filter=f"greater-than(updated,{since})").json()["data"]]
    assert profile["id"] in ids


def test_backdated_event_is_served_with_its_datetime(sb):
    profile_id = sb.control.records("profile")[1]["id"]
    event_id = sb.control.insert_event(profile_id, "Placed Order", datetime=dt.datetime(2024, 2, 3, 4, 5, 6),
                                       properties={"OrderId": "LATE-1"}, value=99.0)
    event = get(sb, f"/api/events/{event_id}").json()["data"]
    assert event["attributes"]["datetime"] == "2024-02-03T04:05:06+00:00"
    assert event["attributes"]["event_properties"] == {"OrderId": "LATE-1", "$value": 99.0}
    truth = sb.control.record("event", event_id)
    assert truth["inserted_at"] > "2025"  # inserted now, dated in the past: a late-arriving event
    metric = get(sb, f"/api/metrics/{event['relationships']['metric']['data']['id']}").json()["data"]
    assert metric["attributes"]["name"] == "Placed Order"


@pytest.mark.parametrize("type_, collection", [("list", "lists"), ("segment", "segments"), ("template", "templates"),
                                               ("tag", "tags"), ("catalog-item", "catalog-items"), ("coupon", "coupons"),
                                               ("flow", "flows")])
def test_delete_any_resource(sb, type_, collection):
    victim = sb.control.records(type_)[-1]["id"]
    assert get(sb, f"/api/{collection}/{victim}").status_code == 200
    assert sb.control.delete(type_, victim) is True
    assert get(sb, f"/api/{collection}/{victim}").status_code == 404
    assert sb.control.record(type_, victim) is None
    if type_ in ("list", "segment"):
        assert get(sb, f"/api/{collection}/{victim}/profiles").status_code == 404
    with pytest.raises(ControlError, match="404"):
        sb.control.delete(type_, victim)


def test_campaign_deletion(sb):
    campaign = sb.control.records("campaign")[0]
    assert sb.control.delete("campaign", campaign["id"])
    assert get(sb, f"/api/campaigns/{campaign['id']}").status_code == 404


def test_list_members_add_remove_and_ground_truth(sb):
    list_id = sb.control.records("list")[0]["id"]
    members = [m["profile_id"] for m in sb.control.members("list", list_id)]
    outsider = next(p["id"] for p in sb.control.records("profile") if p["id"] not in members)
    assert sb.control.add_members("list", list_id, [outsider], joined_at="2025-01-01T00:00:00+00:00") == 1
    served = [p["id"] for p in get(sb, f"/api/lists/{list_id}/relationships/profiles", **{"page[size]": 100}).json()["data"]]
    assert outsider in served
    assert sb.control.remove_members("list", list_id, [outsider]) == 1
    served = [p["id"] for p in get(sb, f"/api/lists/{list_id}/relationships/profiles", **{"page[size]": 100}).json()["data"]]
    assert outsider not in served
    segment_id = sb.control.records("segment")[0]["id"]
    seg_members = [m["profile_id"] for m in sb.control.members("segment", segment_id)]
    if seg_members:
        assert sb.control.remove_members("segment", segment_id, seg_members[:1]) == 1
        served = [p["id"] for p in get(sb, f"/api/segments/{segment_id}/relationships/profiles",
                                        **{"page[size]": 100}).json()["data"]]
        assert seg_members[0] not in served


def test_faults_and_rate_limits_switch_at_runtime(sb):
    sb.control.set_faults({"GET /api/tags": {"status": 503}})
    try:
        assert get(sb, "/api/tags").status_code == 503
    finally:
        sb.control.set_faults(None)
    assert get(sb, "/api/tags").status_code == 200
    state = sb.control.set_rate_limits(enabled=True, scale=5)
    assert state == {"enabled": True, "scale": 5}
    try:
        statuses = [get(sb, "/api/profile-bulk-import-jobs").status_code for _ in range(12)]
        assert 429 in statuses
    finally:
        sb.control.set_rate_limits(enabled=False, scale=1)
    assert get(sb, "/api/profile-bulk-import-jobs").status_code == 200


def test_clock_controls_now(sb):
    now = dt.datetime.fromisoformat(sb.control.clock())
    later = dt.datetime.fromisoformat(sb.control.set_clock(advance_seconds=3600))
    assert later - now >= dt.timedelta(seconds=3600)
    frozen = sb.control.set_clock(now=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    assert frozen.startswith("2030-01-01T00:00:00")
    sb.control.set_clock(now=None)
    sb.control.set_clock(advance_seconds=-3600)


def test_accounts_are_selected_by_key_and_bad_input_is_explained(sb):
    second = sb.control.for_account(sb.accounts[1].api_key)
    assert second.account()["id"] == sb.accounts[1].id
    assert {r["id"] for r in second.records("list")}.isdisjoint({r["id"] for r in sb.control.records("list")})
    with pytest.raises(ControlError, match="401"):
        ControlClient(sb.base_url, "pk_wrong").records("profile")
    with pytest.raises(ControlError, match="unknown resource type"):
        sb.control.records("nonsense")
    with pytest.raises(ControlError, match="datetime"):
        sb.control.insert_event(sb.control.records("profile")[0]["id"], "X", datetime="yesterday-ish")
    assert "pk_" not in repr(sb.control)


def test_control_inserts_records_and_completes_jobs(sb, monkeypatch):
    list_id = sb.control.insert("list", {"name": "Inserted By Control"})
    assert get(sb, f"/api/lists/{list_id}").json()["data"]["attributes"]["name"] == "Inserted By Control"
    # jobs advance only when read or completed: the job is certainly pending when complete_jobs() runs
    # (in the default mode a background worker may finish it first)
    monkeypatch.setattr(sb.import_jobs, "start", "on_poll")
    job = requests.post(sb.base_url + "/api/profile-bulk-import-jobs", headers=sb.headers(), json={"data": {
        "type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": "finished.by.control@example.com"}}]}}}}).json()["data"]
    assert job["attributes"]["status"] == "queued"
    assert not sb.store.find_profile(sb.accounts[0].id, email="finished.by.control@example.com")
    assert sb.control.complete_jobs() >= 1
    assert sb.store.find_profile(sb.accounts[0].id, email="finished.by.control@example.com")
    listed = get(sb, "/api/profile-bulk-import-jobs", filter='equals(status,"complete")').json()["data"]
    assert job["id"] in [j["id"] for j in listed]
