"""Walk every endpoint the sandbox serves and validate each body against the spec; prove live drift is caught."""

from __future__ import annotations

import re

import pytest
import requests

from klaviyo_sandbox import Sandbox
from klaviyo_sandbox.conformance import DRIFT, ConformanceError, default_validator, tolerated
from klaviyo_sandbox.store import KIND_BY_COLLECTION

REQUIRED_FILTERS = {
    "get_campaigns": "equals(messages.channel,'email')",
}


@pytest.fixture(scope="module")
def sb():
    with Sandbox(seed=41, accounts=1, profiles=60, events=400, rate_limits=False, validate_responses=True) as sandbox:
        yield sandbox


def _concrete(sb, account, path, job_id):
    """The spec path with real ids substituted, or None when the store has nothing of that type."""
    parts = path.split("/")
    collection = parts[2]
    if "{job_id}" in path or (collection == "profile-bulk-import-jobs" and "{id}" in path):
        return path.replace("{job_id}", job_id).replace("{id}", job_id)
    kind = KIND_BY_COLLECTION.get(collection)
    if kind is None:
        return None if "{" in path else path
    ids = sb.store.ids(account, kind.type)
    if "{id}" in path and not ids:
        return None
    return path.replace("{id}", requests.utils.quote(ids[0], safe="")) if ids else path


def test_every_served_get_endpoint_conforms(sb):
    account = sb.accounts[0].id
    session = requests.Session()
    session.headers.update(sb.headers())
    job = session.post(sb.base_url + "/api/profile-bulk-import-jobs", json={"data": {
        "type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": "walker@example.com"}},
            {"type": "profile", "attributes": {"email": "broken"}}]}}}}).json()["data"]["id"]
    sb.control.complete_jobs()
    validator = default_validator()
    checked, problems = [], []
    for (method, path), _handler in sorted(sb.app.routes.items()):
        if method != "GET":
            continue
        op = sb.spec.operation(method, path)
        url = _concrete(sb, account, path, job)
        if url is None:
            continue
        params = {}
        if op.operation_id in REQUIRED_FILTERS:
            params["filter"] = REQUIRED_FILTERS[op.operation_id]
        elif op.filter_required:
            example = op.parameters.get("filter", {}).get("schema", {}).get("example")
            if not example:
                continue
            params["filter"] = example
        response = session.get(sb.base_url + url, params=params, timeout=30)
        try:
            validator.validate(method, url, response.status_code, response.content, tolerate=tolerated)
        except ConformanceError as exc:
            problems.append(str(exc))
        checked.append((op.operation_id, response.status_code))
    DRIFT.drain()  # reported above, per endpoint
    ok = [name for name, status in checked if status == 200]
    assert len(ok) >= 60, checked  # the walk really covers the API, not just error bodies
    assert not problems, "\n".join(problems)


def test_live_drift_is_caught_by_the_suite_wide_middleware(sb):
    profile = sb.control.records("profile")[0]["id"]
    sb.control.update("profile", profile, {"first_name": 12345})  # the API promises a string
    try:
        response = requests.get(f"{sb.base_url}/api/profiles/{profile}", headers=sb.headers(), timeout=30)
        assert response.status_code == 200 and response.json()["data"]["attributes"]["first_name"] == 12345
        drift = DRIFT.drain()  # taken here, so the plugin does not fail this test for it
        assert len(drift) == 1
        assert re.search(r"GET /api/profiles/\w+ -> 200 \(get_profile\).*at \$\.data\.attributes\.first_name: 12345 is not of type",
                         drift[0]), drift
    finally:
        sb.control.update("profile", profile, {"first_name": "Restored"})
    requests.get(f"{sb.base_url}/api/profiles/{profile}", headers=sb.headers(), timeout=30)
    assert DRIFT.drain() == []
