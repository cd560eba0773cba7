"""The reporting endpoints over real HTTP: wiring, spec rate limits, errors, ground truth.

Every response body is checked against the spec schema by the conformance plugin.
"""

from __future__ import annotations

import datetime as dt

import pytest
import requests

from klaviyo_sandbox import Sandbox

REVISION = "2026-07-15"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(seed=5, accounts=1, profiles=200, events=3000, rate_limits=True) as sb:
        yield sb


def _headers(sb):
    return {"Authorization": f"Klaviyo-API-Key {sb.api_key}", "revision": REVISION,
            "content-type": "application/vnd.api+json"}


def _metrics(sb):
    documents = requests.get(f"{sb.base_url}/api/metrics", headers=_headers(sb), timeout=30).json()["data"]
    return {m["attributes"]["name"]: m["id"] for m in documents}


def test_metric_aggregates_counts_match_the_store(sandbox):
    metric = _metrics(sandbox)["Opened Email"]
    now = sandbox.store.now().astimezone(dt.timezone.utc)
    start = (now - dt.timedelta(days=200)).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    end = now.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    body = {"data": {"type": "metric-aggregate", "attributes": {
        "metric_id": metric, "measurements": ["count", "unique"], "interval": "week",
        "filter": [f"greater-or-equal(datetime,{start.isoformat()})", f"less-than(datetime,{end.isoformat()})"]}}}
    response = requests.post(f"{sandbox.base_url}/api/metric-aggregates", headers=_headers(sandbox), json=body,
                             timeout=30)
    assert response.status_code == 200, response.text
    (row,) = response.json()["data"]["attributes"]["data"]
    truth = sandbox.store.execute(
        "SELECT count(*), count(DISTINCT rel_profile) FROM events WHERE account = ? AND rel_metric = ? "
        "AND datetime >= ? AND datetime < ?", [sandbox.account.id, metric, start, end]).fetchone()
    assert sum(row["measurements"]["count"]) == truth[0] > 0
    assert max(row["measurements"]["unique"]) <= truth[1]


def test_campaign_values_limit_is_the_specs_one_per_second(sandbox):
    order = _metrics(sandbox)["Placed Order"]
    body = {"data": {"type": "campaign-values-report", "attributes": {
        "statistics": ["recipients", "opens", "conversions", "conversion_value"],
        "timeframe": {"key": "last_365_days"}, "conversion_metric_id": order}}}
    url = f"{sandbox.base_url}/api/campaign-values-reports"
    first = requests.post(url, headers=_headers(sandbox), json=body, timeout=30)
    second = requests.post(url, headers=_headers(sandbox), json=body, timeout=30)
    assert first.status_code == 200, first.text
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    results = first.json()["data"]["attributes"]["results"]
    assert results and all(set(r["groupings"]) == {"campaign_id", "campaign_message_id", "send_channel"}
                           for r in results)
    assert sum(r["statistics"]["recipients"] for r in results) > 0


def test_flow_series_over_http_and_bad_body_is_one_line_400(sandbox):
    order = _metrics(sandbox)["Placed Order"]
    url = f"{sandbox.base_url}/api/flow-series-reports"
    body = {"data": {"type": "flow-series-report", "attributes": {
        "statistics": ["recipients", "opens"], "interval": "daily", "timeframe": {"key": "last_30_days"},
        "conversion_metric_id": order}}}
    response = requests.post(url, headers=_headers(sandbox), json=body, timeout=30)
    assert response.status_code == 200, response.text
    document = response.json()["data"]
    assert len(document["attributes"]["date_times"]) == 30
    assert all(len(r["statistics"]["opens"]) == 30 for r in document["attributes"]["results"])
    flows = {f.id for f in sandbox.store.all(sandbox.account.id, "flow")}
    assert {r["groupings"]["flow_id"] for r in document["attributes"]["results"]} <= flows

    bad = {"data": {"type": "flow-series-report", "attributes": {**body["data"]["attributes"], "interval": "yearly"}}}
    import time

    time.sleep(1.1)  # 1/s burst
    response = requests.post(url, headers=_headers(sandbox), json=bad, timeout=30)
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert "yearly" in error["detail"] and "\n" not in error["detail"]
    assert error["source"]["pointer"].startswith("/data/attributes")
