"""The Maton gateway shape over real HTTP: two connected accounts, connection selection, connection management."""

from __future__ import annotations

import pytest
import requests

from klaviyo_sandbox import REVISION, Sandbox


@pytest.fixture(scope="module")
def sb():
    with Sandbox(seed=21, accounts=2, profiles=30, events=100, rate_limits=False, validate_responses=True) as sandbox:
        yield sandbox


def maton(sb, connection=None, key=None):
    headers = {"Authorization": f"Bearer {key or sb.maton_api_key}", "revision": REVISION}
    if connection:
        headers["Maton-Connection"] = connection
    return headers


def emails(response):
    assert response.status_code == 200, response.text[:300]
    return {p["attributes"]["email"] for p in response.json()["data"]}


def test_connection_header_selects_the_account_and_default_is_oldest_active(sb):
    first, second = sb.accounts
    url = sb.base_url + "/klaviyo/api/profiles"
    native = [emails(requests.get(sb.base_url + "/api/profiles", headers=sb.headers(i))) for i in (0, 1)]
    assert native[0] != native[1]
    assert emails(requests.get(url, headers=maton(sb, first.maton_connection_id))) == native[0]
    assert emails(requests.get(url, headers=maton(sb, second.maton_connection_id))) == native[1]
    assert emails(requests.get(url, headers=maton(sb))) == native[0]  # default: the oldest ACTIVE connection


def test_gateway_errors(sb):
    url = sb.base_url + "/klaviyo/api/profiles"
    bad_key = requests.get(url, headers=maton(sb, key="not-the-key"))
    assert bad_key.status_code == 401 and "Maton API key" in bad_key.json()["error"]["message"]
    assert requests.get(url, headers={"revision": REVISION}).status_code == 401
    klaviyo_key_is_not_enough = requests.get(url, headers=sb.headers())
    assert klaviyo_key_is_not_enough.status_code == 401
    unknown = requests.get(url, headers=maton(sb, "00000000-0000-4000-a000-000000000000"))
    assert unknown.status_code == 400 and "not an active klaviyo connection" in unknown.json()["error"]["message"]
    # Klaviyo's own errors pass through in Klaviyo's JSON:API shape
    missing = requests.get(sb.base_url + "/klaviyo/api/profiles/01NOPE", headers=maton(sb))
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "not_found"
    no_revision = requests.get(url, headers={"Authorization": f"Bearer {sb.maton_api_key}"})
    assert no_revision.status_code == 400 and no_revision.json()["errors"][0]["source"]["parameter"] == "revision"


def test_writes_through_the_gateway_land_in_the_selected_account(sb):
    second = sb.accounts[1]
    body = {"data": {"type": "profile", "attributes": {"email": "via.maton@example.com"}}}
    created = requests.post(sb.base_url + "/klaviyo/api/profile-import", json=body, headers=maton(sb, second.maton_connection_id))
    assert created.status_code == 201, created.text
    assert sb.store.find_profile(second.id, email="via.maton@example.com") == created.json()["data"]["id"]
    assert sb.store.find_profile(sb.accounts[0].id, email="via.maton@example.com") is None


def test_links_point_at_the_native_api_as_real_maton_does(sb):
    body = requests.get(sb.base_url + "/klaviyo/api/profiles", headers=maton(sb)).json()
    assert body["links"]["next"].startswith(sb.base_url + "/api/profiles")
    # following it with the Maton key fails: the native API wants Klaviyo credentials
    assert requests.get(body["links"]["next"], headers=maton(sb)).status_code == 401
    rerouted = body["links"]["next"].replace(sb.base_url + "/api/", sb.base_url + "/klaviyo/api/")
    assert requests.get(rerouted, headers=maton(sb)).status_code == 200


def test_gateway_passes_429_through():
    with Sandbox(seed=5, profiles=5, events=5, rate_limits=True, rate_limit_scale=5, validate_responses=True) as sb:
        url = sb.base_url + "/klaviyo/api/profile-bulk-import-jobs"
        statuses = [requests.get(url, headers=maton(sb)).status_code for _ in range(12)]
        assert statuses[:10] == [200] * 10 and 429 in statuses  # get_bulk_import_profiles_jobs: burst 10/s
        throttled = requests.get(url, headers=maton(sb))
        assert throttled.status_code == 429 and throttled.json()["errors"][0]["code"] == "throttled"
        assert "Retry-After" in throttled.headers


def test_connection_management_lifecycle(sb):
    base = sb.base_url + "/connections"
    auth = {"Authorization": f"Bearer {sb.maton_api_key}"}
    listed = requests.get(base, params={"app": "klaviyo", "status": "ACTIVE"}, headers=auth).json()["connections"]
    assert [c["connection_id"] for c in listed] == [a.maton_connection_id for a in sb.accounts]
    assert set(listed[0]) == {"connection_id", "status", "creation_time", "last_updated_time", "url", "app", "metadata"}
    assert requests.get(base, headers={"Authorization": "Bearer wrong"}).status_code == 401

    created = requests.post(base, json={"app": "klaviyo"}, headers=auth)
    assert created.status_code == 200
    conn = created.json()["connection"]
    assert conn["status"] == "PENDING" and conn["url"].startswith("https://connect.maton.ai/?session_token=")
    assert requests.get(f"{base}/{conn['connection_id']}", headers=auth).json()["connection"]["status"] == "PENDING"
    pending = requests.get(base, params={"status": "PENDING"}, headers=auth).json()["connections"]
    assert [c["connection_id"] for c in pending] == [conn["connection_id"]]
    assert requests.get(base, params={"app": "slack"}, headers=auth).json()["connections"] == []
    # a PENDING connection cannot be used yet
    url = sb.base_url + "/klaviyo/api/profiles"
    assert requests.get(url, headers=maton(sb, conn["connection_id"])).status_code == 400

    # the browser OAuth step, played by the control API: it now reaches the second account
    sb.control.authorize_connection(conn["connection_id"], account_id=sb.accounts[1].id)
    second_native = emails(requests.get(sb.base_url + "/api/profiles", headers=sb.headers(1)))
    assert emails(requests.get(url, headers=maton(sb, conn["connection_id"]))) == second_native

    # revoking the oldest connection moves the default to the next oldest ACTIVE one
    sb.control.revoke_connection(sb.accounts[0].maton_connection_id)
    try:
        assert emails(requests.get(url, headers=maton(sb))) == second_native
        assert requests.get(url, headers=maton(sb, sb.accounts[0].maton_connection_id)).status_code == 400
    finally:
        sb.control.authorize_connection(sb.accounts[0].maton_connection_id, account_id=sb.accounts[0].id)

    assert requests.delete(f"{base}/{conn['connection_id']}", headers=auth).status_code == 200
    assert requests.get(f"{base}/{conn['connection_id']}", headers=auth).status_code == 404
    assert requests.get(url, headers=maton(sb, conn["connection_id"])).status_code == 400


def test_no_active_connection_is_400():
    with Sandbox(seed=6, accounts=1, profiles=5, events=5, rate_limits=False) as sb:
        sb.control.revoke_connection(sb.accounts[0].maton_connection_id)
        response = requests.get(sb.base_url + "/klaviyo/api/profiles", headers=maton(sb))
        assert response.status_code == 400 and "No active klaviyo connection" in response.json()["error"]["message"]
