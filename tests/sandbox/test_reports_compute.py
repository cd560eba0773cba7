"""Sandbox reporting computations against a real store, checked with independent Python counts.

These call the report functions directly on a DuckDB ``Store`` (the HTTP wiring is covered
in ``test_reports_http.py``); every response is validated against the spec schema.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict
from zoneinfo import ZoneInfo

import pytest

from klaviyo_sandbox import reports
from klaviyo_sandbox.conformance import validate_response
from klaviyo_sandbox.store import Clock, Store

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
ACCOUNT = "acct"


@pytest.fixture(scope="module")
def world():
    """A small account: 2 campaigns, 1 flow with 2 messages, random email events and orders."""
    store = Store(clock=Clock(frozen=NOW))
    rng = random.Random(11)
    metrics = {name: store.insert(ACCOUNT, "metric", {"name": name})
               for name in ("Received Email", "Opened Email", "Clicked Email", "Bounced Email", "Placed Order")}
    profiles = [store.insert(ACCOUNT, "profile", {"email": f"p{i}@example.com"}) for i in range(12)]
    campaigns, messages = {}, {}
    for n, sent in enumerate(("2026-11-05T15:00:00+00:00", "2026-10-01T15:00:00+00:00")):
        cid = store.insert(ACCOUNT, "campaign", {"name": f"C{n}", "send_time": sent, "status": "Sent"})
        mid = store.insert(ACCOUNT, "campaign-message", {"definition": {"channel": "email", "label": f"M{n}"}},
                           relationships={"campaign": cid})
        campaigns[cid] = dt.datetime.fromisoformat(sent)
        messages[mid] = ("campaign", cid, dt.datetime.fromisoformat(sent))
    flow = store.insert(ACCOUNT, "flow", {"name": "Welcome"})
    action = store.insert(ACCOUNT, "flow-action", {"definition": {"type": "send-email"}}, relationships={"flow": flow})
    for n in range(2):
        fm = store.insert(ACCOUNT, "flow-message", {"name": f"W{n}", "channel": "email"},
                          relationships={"flow-action": action})
        messages[fm] = ("flow", flow, None)
    events = []

    def add(metric, profile, when, **props):
        store.insert(ACCOUNT, "event", {"datetime": when.isoformat(), "event_properties": props},
                     relationships={"metric": metrics[metric], "profile": profile})
        events.append((metric, profile, when, props))

    for mid, (kind, parent, sent) in messages.items():
        for profile in rng.sample(profiles, 8):
            received = sent or dt.datetime(2026, 11, rng.randint(10, 15), rng.randint(0, 23), tzinfo=UTC)
            tag = {"$message": mid, **({"$flow": parent} if kind == "flow" else {})}
            add("Received Email", profile, received, **tag)
            if rng.random() < 0.15:
                add("Bounced Email", profile, received + dt.timedelta(minutes=1), **tag)
                continue
            for _ in range(rng.randint(0, 3)):
                add("Opened Email", profile, received + dt.timedelta(hours=rng.randint(1, 60)), **tag)
            if rng.random() < 0.5:
                add("Clicked Email", profile, received + dt.timedelta(hours=rng.randint(1, 60)), **tag)
            if rng.random() < 0.4:
                add("Placed Order", profile, received + dt.timedelta(hours=rng.randint(1, 80)),
                    **{"$attributed_message": mid, "$value": round(rng.uniform(5, 120), 2)})
    loner = store.insert(ACCOUNT, "profile", {"email": "no-email-engagement@example.com"})
    add("Placed Order", loner, dt.datetime(2026, 11, 12, tzinfo=UTC), **{"$value": 999.0})  # nothing to attribute to
    yield {"store": store, "metrics": metrics, "messages": messages, "events": events, "flow": flow}
    store.close()


def _aggregate_body(metric_id, **attributes):
    return {"data": {"type": "metric-aggregate", "attributes": {"metric_id": metric_id, **attributes}}}


def test_metric_aggregates_count_unique_sum_per_day_in_timezone(world):
    zone = ZoneInfo("America/New_York")
    body = _aggregate_body(world["metrics"]["Placed Order"], measurements=["count", "sum_value", "unique"],
                           interval="day", timezone="America/New_York",
                           filter=["greater-or-equal(datetime,2026-11-01T00:00:00)",
                                   "less-than(datetime,2026-11-20T00:00:00)"])
    result = reports.query_metric_aggregates(world["store"], ACCOUNT, body, "http://sandbox")
    validate_response("POST", "/api/metric-aggregates", 200, result)
    dates = result["data"]["attributes"]["dates"]
    assert dates[0] == "2026-11-01T00:00:00-04:00" and len(dates) == 19  # DST ends on Nov 1st
    start = dt.datetime(2026, 11, 1, tzinfo=zone)
    end = dt.datetime(2026, 11, 20, tzinfo=zone)
    count, total, unique = Counter(), defaultdict(float), defaultdict(set)
    for metric, profile, when, props in world["events"]:
        if metric == "Placed Order" and start <= when < end:
            day = when.astimezone(zone).date().isoformat()
            count[day] += 1
            total[day] += props["$value"]
            unique[day].add(profile)
    (row,) = result["data"]["attributes"]["data"]
    assert row["dimensions"] == []
    by_day = {d[:10]: i for i, d in enumerate(dates)}
    for day, i in by_day.items():
        assert row["measurements"]["count"][i] == count[day]
        assert row["measurements"]["sum_value"][i] == pytest.approx(total[day])
        assert row["measurements"]["unique"][i] == len(unique[day])
    assert sum(row["measurements"]["count"]) == sum(count.values()) > 0


def test_metric_aggregates_group_by_message_and_filter(world):
    opened = world["metrics"]["Opened Email"]
    some_message = next(iter(world["messages"]))
    body = _aggregate_body(opened, measurements=["count"], interval="month", by=["$message"],
                           filter=["greater-or-equal(datetime,2026-09-01T00:00:00)",
                                   "less-than(datetime,2026-11-20T00:00:00)"])
    result = reports.query_metric_aggregates(world["store"], ACCOUNT, body)
    expected = Counter(p["$message"] for m, _, w, p in world["events"] if m == "Opened Email" and w < NOW)
    got = {tuple(r["dimensions"]): sum(r["measurements"]["count"]) for r in result["data"]["attributes"]["data"]}
    assert got == {(k,): v for k, v in expected.items()}
    assert len(result["data"]["attributes"]["dates"]) == 3  # Sep, Oct, Nov

    body["data"]["attributes"]["filter"].append(f'equals($message,"{some_message}")')
    result = reports.query_metric_aggregates(world["store"], ACCOUNT, body)
    assert [r["dimensions"] for r in result["data"]["attributes"]["data"]] == [[some_message]]


@pytest.mark.parametrize("filters, fragment", [
    (["greater-or-equal(datetime,2026-11-01T00:00:00)"], "time range"),
    (["greater-or-equal(datetime,2026-11-01)", "less-than(datetime,2025-01-01T00:00:00)"], "empty"),
    (["greater-or-equal(datetime,2024-01-01T00:00:00)", "less-than(datetime,2026-01-01T00:00:00)"], "1 year"),
    (["greater-or-equal(datetime,2026-11-01T00:00:00)", "less-than(datetime,2026-11-02T00:00:00)",
      "equals(Nonsense,1)"], "Nonsense"),
])
def test_metric_aggregates_rejects_bad_filters_with_one_clear_line(world, filters, fragment):
    body = _aggregate_body(world["metrics"]["Opened Email"], measurements=["count"], filter=filters)
    with pytest.raises(reports.ReportError) as caught:
        reports.query_metric_aggregates(world["store"], ACCOUNT, body)
    assert fragment in caught.value.detail and "\n" not in caught.value.detail


def test_metric_aggregates_body_validated_against_spec(world):
    body = _aggregate_body(world["metrics"]["Opened Email"], measurements=["median"],
                           filter=["greater-or-equal(datetime,2026-11-01T00:00:00)",
                                   "less-than(datetime,2026-11-02T00:00:00)"])
    with pytest.raises(reports.ReportError, match="median"):
        reports.query_metric_aggregates(world["store"], ACCOUNT, body)
    with pytest.raises(reports.ReportError, match="metric_id"):
        reports.query_metric_aggregates(world["store"], ACCOUNT, _aggregate_body(
            "NOPE00", measurements=["count"], filter=["greater-or-equal(datetime,2026-11-01T00:00:00)",
                                                      "less-than(datetime,2026-11-02T00:00:00)"]))


def _expected_message_stats(world, message_id, bucket_of=None):
    """Independent count of one message's statistics (optionally per send-date bucket)."""
    stats: dict = defaultdict(lambda: defaultdict(float))
    uniques: dict = defaultdict(lambda: defaultdict(set))
    sent_at = {}
    for metric, profile, when, props in world["events"]:
        if metric == "Received Email" and props.get("$message") == message_id:
            sent_at[profile] = min(when, sent_at.get(profile, when))
    for metric, profile, when, props in world["events"]:
        key = bucket_of(sent_at.get(profile, when)) if bucket_of else None
        if props.get("$message") == message_id:
            name = {"Received Email": "recipients", "Opened Email": "opens", "Clicked Email": "clicks",
                    "Bounced Email": "bounced"}[metric]
            stats[key][name] += 1
            uniques[key][name].add(profile)
        if metric == "Placed Order" and props.get("$attributed_message") == message_id:
            stats[key]["conversions"] += 1
            stats[key]["conversion_value"] += props["$value"]
            uniques[key]["conversions"].add(profile)
    return stats, uniques


def test_campaign_values_match_independent_counts_and_send_date_scope(world):
    order = world["metrics"]["Placed Order"]
    body = {"data": {"type": "campaign-values-report", "attributes": {
        "statistics": ["recipients", "delivered", "opens", "opens_unique", "clicks_unique", "open_rate",
                       "conversions", "conversion_uniques", "conversion_value", "bounced"],
        "timeframe": {"start": "2026-11-01T00:00:00+00:00", "end": "2026-11-20T00:00:00+00:00"},
        "conversion_metric_id": order}}}
    result = reports.query_campaign_values(world["store"], ACCOUNT, body, "http://sandbox")
    validate_response("POST", "/api/campaign-values-reports", 200, result)
    (row,) = result["data"]["attributes"]["results"]  # only the campaign sent on Nov 5th
    message_id = row["groupings"]["campaign_message_id"]
    kind, campaign_id, sent = world["messages"][message_id]
    assert (kind, row["groupings"]["campaign_id"], row["groupings"]["send_channel"]) == ("campaign", campaign_id,
                                                                                          "email")
    assert sent.month == 11
    stats, uniques = _expected_message_stats(world, message_id)
    s, u = stats[None], uniques[None]
    got = row["statistics"]
    assert got["recipients"] == s["recipients"] and got["bounced"] == s["bounced"]
    assert got["delivered"] == s["recipients"] - s["bounced"]
    assert got["opens"] == s["opens"] and got["opens_unique"] == len(u["opens"])
    assert got["clicks_unique"] == len(u["clicks"])
    assert got["open_rate"] == pytest.approx(len(u["opens"]) / got["delivered"], abs=1e-4)
    assert got["conversions"] == s["conversions"] and got["conversion_uniques"] == len(u["conversions"])
    assert got["conversion_value"] == pytest.approx(s["conversion_value"], abs=0.01)
    assert result["data"]["relationships"]["campaigns"]["data"] == [{"type": "campaign", "id": campaign_id}]


def test_flow_series_buckets_engagement_by_send_date(world):
    order = world["metrics"]["Placed Order"]
    body = {"data": {"type": "flow-series-report", "attributes": {
        "statistics": ["recipients", "opens", "clicks", "conversions", "conversion_value"],
        "timeframe": {"start": "2026-11-08T00:00:00", "end": "2026-11-18T00:00:00"},
        "interval": "daily", "conversion_metric_id": order}}}
    result = reports.query_flow_series(world["store"], ACCOUNT, body, "http://sandbox")
    validate_response("POST", "/api/flow-series-reports", 200, result)
    date_times = result["data"]["attributes"]["date_times"]
    assert len(date_times) == 10 and date_times[0] == "2026-11-08T00:00:00+00:00"
    results = result["data"]["attributes"]["results"]
    flow_messages = sorted(m for m, (kind, _, _) in world["messages"].items() if kind == "flow")
    assert sorted(r["groupings"]["flow_message_id"] for r in results) == flow_messages
    for row in results:
        assert row["groupings"]["flow_id"] == world["flow"]
        stats, _ = _expected_message_stats(world, row["groupings"]["flow_message_id"],
                                           bucket_of=lambda when: when.date().isoformat())
        for i, stamp in enumerate(date_times):
            day = stamp[:10]
            for name in ("recipients", "opens", "clicks", "conversions"):
                assert row["statistics"][name][i] == stats[day][name], (name, day)
            assert row["statistics"]["conversion_value"][i] == pytest.approx(stats[day]["conversion_value"], abs=0.01)
        assert sum(row["statistics"]["recipients"]) == 8


def test_reports_reject_bad_group_by_timeframe_and_unknown_metric(world):
    order = world["metrics"]["Placed Order"]
    base = {"statistics": ["opens"], "timeframe": {"key": "last_30_days"}, "conversion_metric_id": order}
    with pytest.raises(reports.ReportError, match="campaign_message_id"):
        reports.query_campaign_values(world["store"], ACCOUNT, {"data": {
            "type": "campaign-values-report", "attributes": {**base, "group_by": ["campaign_id"]}}})
    with pytest.raises(reports.ReportError, match="conversion_metric_id"):
        reports.query_campaign_values(world["store"], ACCOUNT, {"data": {
            "type": "campaign-values-report", "attributes": {**base, "conversion_metric_id": "XXXXXX"}}})
    with pytest.raises(reports.ReportError, match="60 days"):
        reports.query_flow_series(world["store"], ACCOUNT, {"data": {"type": "flow-series-report", "attributes": {
            **base, "interval": "daily", "timeframe": {"key": "last_90_days"}}}})
    with pytest.raises(reports.ReportError, match="interval"):
        reports.query_flow_series(world["store"], ACCOUNT, {"data": {"type": "flow-series-report",
                                                                     "attributes": base}})


def test_conversions_without_attribution_go_to_last_open_or_click_within_5_days():
    store = Store(clock=Clock(frozen=NOW))
    try:
        metrics = {n: store.insert(ACCOUNT, "metric", {"name": n}) for n in ("Opened Email", "Placed Order")}
        campaign = store.insert(ACCOUNT, "campaign", {"name": "C", "send_time": "2026-11-01T00:00:00+00:00"})
        messages = [store.insert(ACCOUNT, "campaign-message", {"definition": {"channel": "email", "label": str(n)}},
                                 relationships={"campaign": campaign}) for n in range(2)]
        buyer = store.insert(ACCOUNT, "profile", {"email": "buyer@example.com"})

        def add(metric, day, **props):
            store.insert(ACCOUNT, "event", {"datetime": f"2026-11-{day:02d}T12:00:00+00:00", "event_properties": props},
                         relationships={"metric": metrics[metric], "profile": buyer})

        add("Opened Email", 2, **{"$message": messages[0]})
        add("Opened Email", 4, **{"$message": messages[1]})
        add("Placed Order", 6, **{"$value": 10.0})  # last touch within 5 days: message 1
        add("Placed Order", 15, **{"$value": 20.0})  # 11 days after the last open: unattributed
        add("Placed Order", 16, **{"$value": 40.0, "$attributed_message": messages[0]})  # explicit wins
        body = {"data": {"type": "campaign-values-report", "attributes": {
            "statistics": ["conversions", "conversion_value"], "conversion_metric_id": metrics["Placed Order"],
            "timeframe": {"start": "2026-10-25T00:00:00", "end": "2026-11-20T00:00:00"}}}}
        result = reports.query_campaign_values(store, ACCOUNT, body)
        got = {r["groupings"]["campaign_message_id"]: r["statistics"] for r in result["data"]["attributes"]["results"]}
        assert got[messages[1]] == {"conversions": 1, "conversion_value": 10.0}
        assert got[messages[0]] == {"conversions": 1, "conversion_value": 40.0}
    finally:
        store.close()


def test_generated_message_tags_are_mapped_onto_real_messages_without_losing_events():
    """Seeded events carry random ``$message`` values: each maps to exactly one email message."""
    store = Store(clock=Clock(frozen=NOW))
    try:
        received = store.insert(ACCOUNT, "metric", {"name": "Received Email"})
        order = store.insert(ACCOUNT, "metric", {"name": "Placed Order"})
        campaign = store.insert(ACCOUNT, "campaign", {"name": "C", "send_time": "2026-11-01T00:00:00+00:00"})
        for n in range(3):
            store.insert(ACCOUNT, "campaign-message", {"definition": {"channel": "email", "label": str(n)}},
                         relationships={"campaign": campaign})
        profile = store.insert(ACCOUNT, "profile", {"email": "r@example.com"})
        for n in range(40):
            store.insert(ACCOUNT, "event", {"datetime": "2026-11-02T00:00:00+00:00",
                                            "event_properties": {"$message": f"{n:06x}"}},
                         relationships={"metric": received, "profile": profile})
        body = {"data": {"type": "campaign-values-report", "attributes": {
            "statistics": ["recipients"], "conversion_metric_id": order, "timeframe": {"key": "last_30_days"}}}}
        first = reports.query_campaign_values(store, ACCOUNT, body)["data"]["attributes"]["results"]
        again = reports.query_campaign_values(store, ACCOUNT, body)["data"]["attributes"]["results"]
        assert first == again
        assert sum(r["statistics"]["recipients"] for r in first) == 40
        assert len(first) >= 2  # spread over the messages, not piled on one
    finally:
        store.close()
