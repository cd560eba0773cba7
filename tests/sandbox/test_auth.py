"""Authentication (private key, OAuth bearer) and the revision header."""

from __future__ import annotations

import requests


def _get(sandbox, headers, path="/api/profiles"):
    return requests.get(sandbox.base_url + path, headers=headers, timeout=10)


def test_missing_key_is_401_not_authenticated(sandbox, revision):
    response = _get(sandbox, {"revision": revision})
    assert response.status_code == 401
    error = response.json()["errors"][0]
    assert error["code"] == "not_authenticated" and error["status"] == 401


def test_wrong_key_is_401_authentication_failed(sandbox, revision):
    response = _get(sandbox, {"Authorization": "Klaviyo-API-Key pk_wrong", "revision": revision})
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "authentication_failed"
    assert "pk_wrong" not in response.text


def test_private_key_and_bearer_token(sandbox, revision):
    account = sandbox.accounts[1]
    by_key = _get(sandbox, {"Authorization": f"Klaviyo-API-Key {account.api_key}", "revision": revision}, "/api/accounts")
    by_token = _get(sandbox, {"Authorization": f"Bearer {account.oauth_token}", "revision": revision}, "/api/accounts")
    assert by_key.status_code == by_token.status_code == 200
    assert by_key.json()["data"][0]["id"] == by_token.json()["data"][0]["id"] == account.id
    wrong = _get(sandbox, {"Authorization": "Bearer nope", "revision": revision})
    assert wrong.status_code == 401 and wrong.json()["errors"][0]["code"] == "authentication_failed"


def test_default_key_is_documented(sandbox):
    from klaviyo_sandbox import DEFAULT_API_KEY

    assert sandbox.api_key == DEFAULT_API_KEY and DEFAULT_API_KEY.startswith("pk_sandbox_")


def test_missing_revision_is_400(sandbox):
    response = _get(sandbox, {"Authorization": f"Klaviyo-API-Key {sandbox.api_key}"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["code"] == "invalid" and "revision" in error["detail"]


def test_malformed_revision_is_400(sandbox):
    response = _get(sandbox, {"Authorization": f"Klaviyo-API-Key {sandbox.api_key}", "revision": "latest"})
    assert response.status_code == 400


def test_response_headers(sandbox, revision):
    response = _get(sandbox, {"Authorization": f"Klaviyo-API-Key {sandbox.api_key}", "revision": revision})
    assert response.headers["Content-Type"].startswith("application/vnd.api+json")
    assert response.headers["X-Klaviyo-API-Revision"] == revision
    assert "RateLimit-Limit" in response.headers
