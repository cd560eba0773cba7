"""Write endpoints over real HTTP: every effect is checked through the read endpoints (and the store)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import requests

from klaviyo_sandbox import Sandbox


class Client:
    def __init__(self, sb: Sandbox, account: int = 0):
        self.sb = sb
        self.session = requests.Session()
        self.session.headers.update(sb.headers(account))
        self.account = sb.accounts[account].id

    def __getattr__(self, method):
        def call(path, **kwargs):
            url = path if path.startswith("http") else self.sb.base_url + path
            return self.session.request(method.upper(), url, timeout=30, **kwargs)
        return call


@pytest.fixture(scope="module")
def sb():
    with Sandbox(seed=11, accounts=2, profiles=60, events=300, rate_limits=False, validate_responses=True) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def api(sb):
    return Client(sb)


def _profile(**attrs):
    return {"data": {"type": "profile", "attributes": attrs}}


def _error(response, status, code=None):
    assert response.status_code == status, response.text[:500]
    error = response.json()["errors"][0]
    if code:
        assert error["code"] == code, error
    return error


def _existing(sb, api, need=("email", "phone_number")):
    return [r for r in sb.store.all(api.account, "profile") if all(r.attributes.get(k) for k in need)]


def test_profile_import_creates_then_updates_and_null_clears(api):
    created = api.post("/api/profile-import", json=_profile(email="Writer.One@Example.com", first_name="Wanda",
                                                             last_name="Writer", properties={"tier": "gold", "n": 1}))
    assert created.status_code == 201, created.text
    pid = created.json()["data"]["id"]
    first_updated = created.json()["data"]["attributes"]["updated"]
    again = api.post("/api/profile-import", json=_profile(email="writer.one@example.com", last_name=None,
                                                           properties={"tier": None, "m": 2}))
    assert again.status_code == 200 and again.json()["data"]["id"] == pid
    seen = api.get(f"/api/profiles/{pid}").json()["data"]["attributes"]
    assert seen["email"] == "writer.one@example.com" and seen["first_name"] == "Wanda" and seen["last_name"] is None
    assert seen["properties"] == {"n": 1, "m": 2}
    assert seen["updated"] >= first_updated
    # incremental extraction sees the write: updated moved past a moment before it
    before = (dt.datetime.fromisoformat(seen["updated"]) - dt.timedelta(seconds=1)).isoformat()
    found = api.get("/api/profiles", params={"filter": f"greater-than(updated,{before})"}).json()["data"]
    assert pid in [p["id"] for p in found]


def test_create_profile_409_duplicate_and_400_invalid_identifiers(sb, api):
    someone = _existing(sb, api, ("email",))[0]
    error = _error(api.post("/api/profiles", json=_profile(email=someone.attributes["email"])), 409, "duplicate_profile")
    assert error["meta"]["duplicate_profile_id"] == someone.id
    error = _error(api.post("/api/profiles", json=_profile(email="not-an-email")), 400, "invalid")
    assert error["source"]["pointer"] == "/data/attributes/email"
    error = _error(api.post("/api/profiles", json=_profile(email="ok@example.com", phone_number="555-1234")), 400)
    assert error["source"]["pointer"] == "/data/attributes/phone_number"
    error = _error(api.post("/api/profiles", json=_profile(email=5)), 400)
    assert error["source"]["pointer"] == "/data/attributes/email"
    made = api.post("/api/profiles", json=_profile(email="brand.new@example.com", phone_number="+14155550123"))
    assert made.status_code == 201
    assert api.get(f"/api/profiles/{made.json()['data']['id']}").json()["data"]["attributes"]["phone_number"] == "+14155550123"


def test_email_and_phone_of_two_profiles_is_409_naming_the_other(sb, api):
    with_phone = _existing(sb, api, ("phone_number",))[0]
    other = next(r for r in _existing(sb, api, ("email",)) if r.id != with_phone.id)
    error = _error(api.post("/api/profile-import", json=_profile(email=other.attributes["email"],
                                                                 phone_number=with_phone.attributes["phone_number"])),
                   409, "duplicate_profile")
    assert error["meta"]["duplicate_profile_id"] == with_phone.id
    assert sb.store.get(api.account, "profile", other.id).attributes["phone_number"] == other.attributes["phone_number"]


def test_patch_profile(sb, api):
    target, other = _existing(sb, api, ("email",))[:2]
    response = api.patch(f"/api/profiles/{target.id}", json={"data": {"type": "profile", "id": target.id, "attributes": {
        "title": "Chief Tester", "organization": None}}})
    assert response.status_code == 200, response.text
    seen = api.get(f"/api/profiles/{target.id}").json()["data"]["attributes"]
    assert seen["title"] == "Chief Tester" and seen["organization"] is None
    assert seen["first_name"] == target.attributes["first_name"]
    assert seen["updated"] > target.attributes["updated"]
    error = _error(api.patch(f"/api/profiles/{target.id}", json={"data": {"type": "profile", "id": target.id,
                                                                           "attributes": {"email": other.attributes["email"]}}}),
                   409, "duplicate_profile")
    assert error["meta"]["duplicate_profile_id"] == other.id
    _error(api.patch("/api/profiles/01NOSUCHPROFILE000000000000", json={"data": {"type": "profile", "id": "01NOSUCHPROFILE000000000000",
                                                                                  "attributes": {"title": "x"}}}), 404)


def _job_body(profiles, list_id=None):
    body = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}}
    if list_id:
        body["data"]["relationships"] = {"lists": {"data": [{"type": "list", "id": list_id}]}}
    return body


def test_bulk_import_job_progression_errors_profiles_and_list(sb, api, monkeypatch):
    monkeypatch.setattr(sb.import_jobs, "start", "on_poll")  # deterministic states
    list_id = api.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "Bulk Imported"}}}).json()["data"]["id"]
    keeper = _existing(sb, api, ("email", "first_name"))[0]
    profiles = [
        {"type": "profile", "attributes": {"email": "bulk.a@example.com", "first_name": "A"}},
        {"type": "profile", "attributes": {"email": "bulk.b@example.com", "phone_number": "12345"}},
        {"type": "profile", "attributes": {"email": keeper.attributes["email"], "first_name": None, "title": "Imported"}},
        {"type": "profile", "attributes": {"first_name": "No Identifier"}},
    ]
    accepted = api.post("/api/profile-bulk-import-jobs", json=_job_body(profiles, list_id))
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()["data"]
    assert job["attributes"]["status"] == "queued" and job["attributes"]["total_count"] == 4
    assert api.get("/api/profiles", params={"filter": 'equals(email,"bulk.a@example.com")'}).json()["data"] == []
    statuses = []
    for _ in range(5):
        attributes = api.get(f"/api/profile-bulk-import-jobs/{job['id']}").json()["data"]["attributes"]
        statuses.append(attributes["status"])
        if attributes["status"] == "complete":
            break
    assert statuses[0] == "processing" and statuses[-1] == "complete"
    assert (attributes["completed_count"], attributes["failed_count"]) == (2, 2) and attributes["completed_at"]

    errors = api.get(f"/api/profile-bulk-import-jobs/{job['id']}/import-errors").json()["data"]
    assert sorted(e["attributes"]["source"]["pointer"] for e in errors) == [
        "/data/attributes/profiles/data/1/attributes/phone_number", "/data/attributes/profiles/data/3/attributes"]
    imported = api.get(f"/api/profile-bulk-import-jobs/{job['id']}/profiles").json()["data"]
    ids = api.get(f"/api/profile-bulk-import-jobs/{job['id']}/relationships/profiles").json()["data"]
    assert sorted(p["id"] for p in imported) == sorted(i["id"] for i in ids)
    assert {p["attributes"]["email"] for p in imported} == {"bulk.a@example.com", keeper.attributes["email"]}
    kept = next(p for p in imported if p["id"] == keeper.id)["attributes"]
    assert kept["first_name"] == keeper.attributes["first_name"] and kept["title"] == "Imported"  # null ignored
    members = api.get(f"/api/lists/{list_id}/relationships/profiles").json()["data"]
    assert sorted(m["id"] for m in members) == sorted(p["id"] for p in imported)
    assert api.get(f"/api/profile-bulk-import-jobs/{job['id']}/lists").json()["data"][0]["id"] == list_id
    assert api.get(f"/api/profile-bulk-import-jobs/{job['id']}/relationships/lists").json()["data"] == [{"type": "list", "id": list_id}]
    listed = api.get("/api/profile-bulk-import-jobs", params={"filter": 'equals(status,"complete")'}).json()["data"]
    assert job["id"] in [j["id"] for j in listed]
    _error(api.get("/api/profile-bulk-import-jobs/NOPE"), 404)


def test_bulk_import_jobs_run_in_the_background_in_arrival_order(sb, api):
    """As on Klaviyo, jobs are processed whether or not anyone polls them, one after another."""
    list_id = api.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "Background"}}}).json()["data"]["id"]
    batches = [[{"type": "profile", "attributes": {"email": f"bg{n}.{i}@example.com", "first_name": f"Job{n}"}}
                for i in range(200)] for n in range(3)]
    # the same person in the first and last job: the last job's name wins only if they ran in order
    batches[2][0] = {"type": "profile", "attributes": {"email": "bg0.0@example.com", "first_name": "Last"}}
    accepted = [api.post("/api/profile-bulk-import-jobs", json=_job_body(b, list_id)).json()["data"] for b in batches]
    assert [job["attributes"]["status"] for job in accepted] == ["queued"] * 3
    deadline = dt.datetime.now() + dt.timedelta(seconds=30)
    while sb.import_jobs.get(sb.accounts[0].id, accepted[-1]["id"]).status != "complete":  # no client poll
        assert dt.datetime.now() < deadline, "the jobs never ran"
        time.sleep(0.01)
    jobs = [sb.import_jobs.get(sb.accounts[0].id, job["id"]) for job in accepted]
    assert [job.polls for job in jobs] == [0, 0, 0] and all(job.status == "complete" for job in jobs)
    assert jobs[0].completed_at <= jobs[1].started_at and jobs[1].completed_at <= jobs[2].started_at
    polled = api.get(f"/api/profile-bulk-import-jobs/{accepted[0]['id']}").json()["data"]["attributes"]
    assert (polled["status"], polled["completed_count"], polled["failed_count"]) == ("complete", 200, 0)
    first = api.get("/api/profiles", params={"filter": 'equals(email,"bg0.0@example.com")'}).json()["data"]
    assert [p["attributes"]["first_name"] for p in first] == ["Last"]
    assert len(sb.store.members(sb.accounts[0].id, "list", list_id)) == 599


def test_bulk_import_limits(api):
    too_many = [{"type": "profile", "attributes": {"email": f"p{i}@example.com"}} for i in range(10_001)]
    error = _error(api.post("/api/profile-bulk-import-jobs", json=_job_body(too_many)), 400)
    assert "10000" in error["detail"]
    huge = [{"type": "profile", "attributes": {"email": f"h{i}@example.com", "properties": {"blob": "x" * 60_000}}}
            for i in range(90)]
    assert api.post("/api/profile-bulk-import-jobs", json=_job_body(huge)).status_code == 413
    error = _error(api.post("/api/profile-bulk-import-jobs", json=_job_body([{"type": "profile", "attributes": {"email": 3}}])), 400)
    assert error["source"]["pointer"] == "/data/attributes/profiles/data/0/attributes/email"


def test_lists_create_add_remove_and_limits(sb, api):
    created = api.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "Reverse Synced"}}})
    assert created.status_code == 201
    list_id = created.json()["data"]["id"]
    assert api.get(f"/api/lists/{list_id}").json()["data"]["attributes"]["name"] == "Reverse Synced"
    names, page = [], api.get("/api/lists").json()
    while True:
        names += [item["attributes"]["name"] for item in page["data"]]
        if not page["links"].get("next"):
            break
        page = api.get(page["links"]["next"]).json()
    assert "Reverse Synced" in names
    ids = [r.id for r in sb.store.all(api.account, "profile")[:5]]
    payload = {"data": [{"type": "profile", "id": i} for i in ids]}
    assert api.post(f"/api/lists/{list_id}/relationships/profiles", json=payload).status_code == 204
    members = api.get(f"/api/lists/{list_id}/profiles").json()["data"]
    assert sorted(m["id"] for m in members) == sorted(ids)
    assert api.delete(f"/api/lists/{list_id}/relationships/profiles", json={"data": payload["data"][:2]}).status_code == 204
    members = api.get(f"/api/lists/{list_id}/relationships/profiles").json()["data"]
    assert sorted(m["id"] for m in members) == sorted(ids[2:])
    too_many = {"data": [{"type": "profile", "id": ids[0]}] * 1001}
    error = _error(api.post(f"/api/lists/{list_id}/relationships/profiles", json=too_many), 400)
    assert "1000" in error["detail"]
    _error(api.delete(f"/api/lists/{list_id}/relationships/profiles", json=too_many), 400)
    _error(api.post("/api/lists/NOLIST/relationships/profiles", json=payload), 404)
    _error(api.post(f"/api/lists/{list_id}/relationships/profiles", json={"data": [{"type": "profile", "id": "01MISSING"}]}), 400)
    assert api.delete(f"/api/lists/{list_id}").status_code == 204
    _error(api.get(f"/api/lists/{list_id}/profiles"), 404)


def test_events_single_and_bulk_visible_through_reads(sb, api):
    event = {"data": {"type": "event", "attributes": {
        "properties": {"OrderId": "W-1"}, "value": 42.5, "time": "2026-01-02T03:04:05+00:00", "unique_id": "W-1",
        "metric": {"data": {"type": "metric", "attributes": {"name": "Reverse Synced Order"}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": "eventful@example.com"}}}}}}
    assert api.post("/api/events", json=event).status_code == 202
    assert api.post("/api/events", json=event).status_code == 202  # same unique_id: de-duplicated
    pid = api.get("/api/profiles", params={"filter": 'equals(email,"eventful@example.com")'}).json()["data"][0]["id"]
    seen = api.get("/api/events", params={"filter": f'equals(profile_id,"{pid}")'}).json()["data"]
    assert len(seen) == 1
    assert seen[0]["attributes"]["datetime"] == "2026-01-02T03:04:05+00:00"
    assert seen[0]["attributes"]["event_properties"]["$value"] == 42.5
    metric_id = seen[0]["relationships"]["metric"]["data"]["id"]
    assert api.get(f"/api/metrics/{metric_id}").json()["data"]["attributes"]["name"] == "Reverse Synced Order"

    bulk = {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": [
        {"type": "event-bulk-create", "attributes": {
            "profile": {"data": {"type": "profile", "attributes": {"email": "bulk.events@example.com"}}},
            "events": {"data": [
                {"type": "event", "attributes": {"properties": {"n": n}, "time": f"2026-01-0{n}T00:00:00+00:00",
                                                 "metric": {"data": {"type": "metric", "attributes": {"name": "Bulk Thing"}}}}}
                for n in (1, 2, 3)]}}}]}}}}
    assert api.post("/api/event-bulk-create-jobs", json=bulk).status_code == 202
    pid = api.get("/api/profiles", params={"filter": 'equals(email,"bulk.events@example.com")'}).json()["data"][0]["id"]
    seen = api.get("/api/events", params={"filter": f'equals(profile_id,"{pid}")'}).json()["data"]
    assert sorted(e["attributes"]["event_properties"]["n"] for e in seen) == [1, 2, 3]
    _error(api.post("/api/events", json={"data": {"type": "event", "attributes": {"properties": {}}}}), 400)


def test_subscriptions_visible_in_additional_fields(sb, api):
    list_id = sb.store.ids(api.account, "list")[0]
    body = {"data": {"type": "profile-subscription-bulk-create-job", "attributes": {"profiles": {"data": [
        {"type": "profile", "attributes": {"email": "consenting@example.com", "phone_number": "+14155550199",
                                           "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}},
                                                             "sms": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}},
        "relationships": {"list": {"data": {"type": "list", "id": list_id}}}}}
    assert api.post("/api/profile-subscription-bulk-create-jobs", json=body).status_code == 202
    found = api.get("/api/profiles", params={"filter": 'equals(email,"consenting@example.com")',
                                             "additional-fields[profile]": "subscriptions"}).json()["data"][0]
    subs = found["attributes"]["subscriptions"]
    assert subs["email"]["marketing"]["consent"] == "SUBSCRIBED" and subs["email"]["marketing"]["can_receive_email_marketing"]
    assert subs["sms"]["marketing"]["consent"] == "SUBSCRIBED"
    members = [m["id"] for m in api.get(f"/api/lists/{list_id}/relationships/profiles", params={"page[size]": 100}).json()["data"]]
    assert found["id"] in members or found["id"] in [p for p, _ in sb.store.members(api.account, "list", list_id)]


def test_writes_need_auth_and_revision_and_are_per_account(sb, api):
    url = sb.base_url + "/api/profile-import"
    assert requests.post(url, json=_profile(email="a@b.co"), headers={"revision": "2026-07-15"}).status_code == 401
    no_revision = requests.post(url, json=_profile(email="a@b.co"),
                                headers={"Authorization": f"Klaviyo-API-Key {sb.api_key}"})
    assert no_revision.status_code == 400
    other = Client(sb, 1)
    made = other.post("/api/profile-import", json=_profile(email="only.in.second@example.com"))
    assert made.status_code == 201
    assert api.get(f"/api/profiles/{made.json()['data']['id']}").status_code == 404
    assert other.get(f"/api/profiles/{made.json()['data']['id']}").status_code == 200


def test_writes_obey_spec_rate_limits_and_faults():
    with Sandbox(seed=2, profiles=10, events=20, rate_limits=True, rate_limit_scale=5, validate_responses=True) as sb:
        api = Client(sb)
        body = _job_body([{"type": "profile", "attributes": {"email": "r@example.com"}}])
        statuses = [api.post("/api/profile-bulk-import-jobs", json=body).status_code for _ in range(12)]
        assert statuses[:10] == [202] * 10 and 429 in statuses[10:]  # bulk_import_profiles: burst 10/s
        throttled = api.post("/api/profile-bulk-import-jobs", json=body)
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
        sb.control.set_faults({"create_or_update_profile": {"status": 503, "times": 1}})
        faulted = api.post("/api/profile-import", json=_profile(email="faulted@example.com"))
        assert faulted.status_code == 503 and sb.store.find_profile(api.account, email="faulted@example.com") is None
        assert api.post("/api/profile-import", json=_profile(email="faulted@example.com")).status_code == 201
