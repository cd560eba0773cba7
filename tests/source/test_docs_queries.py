"""docs/tables.md: the reference matches the source, and its example queries are right on both databases."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from decimal import Decimal

from klaviyo_source.tables_doc import DOC_PATH, rendered_document

DOC = DOC_PATH.read_text()
QUERIES = dict(re.findall(r"### (.+?)\n.*?```sql\n(.*?)```", DOC.split("## Example queries", 1)[1], re.S))


def test_reference_is_current():
    assert rendered_document(DOC) == DOC, "run: python -m klaviyo_source.tables_doc"


def test_the_example_queries_are_documented():
    assert set(QUERIES) == {
        "Revenue per day from Placed Order events",
        "Profiles per email consent state",
        "Events per campaign",
        "Orders per currency: JSON keys starting with `$`",
        "Profiles per metric and day: the `unique` column",
    }


def test_example_queries_match_the_ground_truth(runner):
    sb = runner.sb
    runner.run(["profiles", "events", "metrics", "campaigns", "metric_aggregates"], rate_limit_scale=0.001)
    metrics = {m["id"]: m["attributes"]["name"] for m in sb.control.records("metric")}
    events = sb.control.records("event")

    revenue: dict[dt.date, Decimal] = defaultdict(Decimal)
    orders: Counter = Counter()
    for event in events:
        if metrics[event["relationships"]["metric"]] == "Placed Order":
            day = dt.datetime.fromisoformat(event["attributes"]["datetime"]).astimezone(dt.timezone.utc).date()
            revenue[day] += Decimal(str(event["attributes"]["event_properties"].get("$value") or 0))
            orders[day] += 1
    rows = runner.rows(QUERIES["Revenue per day from Placed Order events"])
    assert len(rows) == len(orders) > 0
    for day, amount, count in rows:
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
        assert count == orders[day]
        assert abs(Decimal(str(amount)) - revenue[day]) <= Decimal("0.01")

    consent = Counter(
        (((p["attributes"].get("subscriptions") or {}).get("email") or {}).get("marketing") or {}).get("consent") or "NONE"
        for p in sb.control.records("profile")
    )
    rows = runner.rows(QUERIES["Profiles per email consent state"])
    assert dict(rows) == dict(consent) and len(consent) > 1

    names = Counter(c["attributes"]["name"] for c in sb.control.records("campaign"))
    expected: Counter = Counter()
    unmatched = 0
    for event in events:
        name = (event["attributes"]["event_properties"] or {}).get("Campaign Name")
        if name in names:
            expected[(name, metrics[event["relationships"]["metric"]])] += names[name]
        elif name is not None:
            unmatched += 1
    rows = runner.rows(QUERIES["Events per campaign"])
    assert {(c, m): n for c, m, n in rows} == dict(expected) and expected
    assert unmatched == 0, f"{unmatched} events name a campaign that does not exist"

    currencies: dict[str, list] = defaultdict(lambda: [0, Decimal(0)])
    for event in events:
        props = event["attributes"]["event_properties"] or {}
        if metrics[event["relationships"]["metric"]] == "Placed Order" and "$currency_code" in props:
            currencies[props["$currency_code"]][0] += 1
            currencies[props["$currency_code"]][1] += Decimal(str(props.get("$value") or 0))
    rows = runner.rows(QUERIES["Orders per currency: JSON keys starting with `$`"])
    assert len(rows) == len(currencies) > 0
    for currency, count, amount in rows:
        assert count == currencies[currency][0]
        assert abs(Decimal(str(amount)) - currencies[currency][1]) <= Decimal("0.01")

    profiles: dict[tuple[str, dt.date], set] = defaultdict(set)
    for event in events:
        day = dt.datetime.fromisoformat(event["attributes"]["datetime"]).astimezone(dt.timezone.utc).date()
        profiles[(metrics[event["relationships"]["metric"]], day)].add(event["relationships"]["profile"])
    rows = runner.rows(QUERIES["Profiles per metric and day: the `unique` column"])
    assert rows
    for metric, day, count in rows:
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
        assert count == len(profiles[(metric, day)]), (metric, day)
