"""Cursor pagination reaches every record exactly once (compared with the store's ground truth)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

import pytest


def _event_datetimes(sandbox, account):
    return {r.id: r.attributes["datetime"] for r in sandbox.store.all(account, "event")}


@pytest.mark.parametrize("sort", [None, "datetime", "-datetime", "timestamp", "-timestamp"])
def test_events_every_record_once(api, sandbox, sort):
    params = {"page[size]": "333"}
    if sort:
        params["sort"] = sort
    got = api.all_pages("/api/events", **params)
    ids = [e["id"] for e in got]
    truth = _event_datetimes(sandbox, api.account)
    assert len(ids) == len(set(ids)) == len(truth)
    assert set(ids) == set(truth)
    if sort:
        key = [truth[i] for i in ids]
        assert key == sorted(key, reverse=sort.startswith("-"))


def test_events_filtered_and_sorted_pages(api, sandbox):
    cut = "2025-06-01T00:00:00+00:00"
    got = api.all_pages("/api/events", filter=f"greater-than(datetime,{cut})", sort="-datetime", **{"page[size]": "97"})
    truth = {i for i, d in _event_datetimes(sandbox, api.account).items() if d > cut}
    assert [e["id"] for e in got] and len(got) == len(truth) and {e["id"] for e in got} == truth


def test_next_link_keeps_query_and_carries_cursor(api, sandbox):
    body = api.ok("/api/events", filter="greater-than(datetime,2025-01-01T00:00:00+00:00)", sort="datetime",
                  **{"page[size]": "10"})
    next_url = body["links"]["next"]
    assert next_url.startswith(sandbox.base_url + "/api/events?")
    query = parse_qs(urlsplit(next_url).query)
    assert query["filter"] == ["greater-than(datetime,2025-01-01T00:00:00+00:00)"]
    assert query["sort"] == ["datetime"] and query["page[size]"] == ["10"] and query["page[cursor]"][0]
    second = api.ok(next_url)
    assert {e["id"] for e in second["data"]}.isdisjoint({e["id"] for e in body["data"]})


def test_last_page_has_no_next(api):
    body = api.ok("/api/metrics")
    assert "next" not in body["links"]


@pytest.mark.parametrize("sort", [None, "created", "-updated", "email", "-id"])
def test_profiles_every_record_once(api, sandbox, sort):
    params = {"page[size]": "100"}
    if sort:
        params["sort"] = sort
    got = [p["id"] for p in api.all_pages("/api/profiles", **params)]
    assert len(got) == len(set(got))
    assert set(got) == set(sandbox.store.ids(api.account, "profile"))


def test_lists_ten_per_page(api, sandbox):
    got = api.all_pages("/api/lists", **{"page[size]": "3"})
    assert sorted(x["id"] for x in got) == sorted(sandbox.store.ids(api.account, "list"))


def test_bad_cursor_is_400(api):
    assert api.error("/api/events", **{"page[cursor]": "not-a-cursor"})["source"] == {"parameter": "page[cursor]"}


def test_new_events_appear_after_paging_started(sandbox, make_api):
    """Keyset pages: a record inserted while paging (default order) shows up on a later page, none repeat."""
    api = make_api(sandbox, 1)
    first = api.ok("/api/events", **{"page[size]": "1000"})
    profile = sandbox.store.ids(api.account, "profile")[0]
    metric = sandbox.store.ids(api.account, "metric")[0]
    when = dt.datetime(2025, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    new_id = sandbox.store.insert(api.account, "event", {
        "timestamp": int(when.timestamp()), "event_properties": {"late": True}, "datetime": when.isoformat(),
        "uuid": "00000000-0000-4000-a000-000000000001"}, relationships={"metric": metric, "profile": profile})
    try:
        seen = [e["id"] for e in first["data"]]
        body = first
        while body["links"].get("next"):
            body = api.ok(body["links"]["next"])
            seen += [e["id"] for e in body["data"]]
        assert new_id in seen and len(seen) == len(set(seen))
    finally:
        sandbox.store.delete(api.account, "event", new_id)


@pytest.mark.parametrize("path,params", [
    ("/api/events", {"page[size]": "150", "sort": "-datetime"}),
    ("/api/events", {"page[size]": "150", "filter": "greater-than(datetime,2025-01-01T00:00:00+00:00)"}),
    ("/api/profiles", {"page[size]": "33", "sort": "email"}),
])
def test_prev_links_walk_back_over_the_same_pages(api, path, params):
    first = api.ok(path, **params)
    assert "prev" not in first["links"]
    pages = [first]
    while pages[-1]["links"].get("next") and len(pages) < 4:
        pages.append(api.ok(pages[-1]["links"]["next"]))
    assert len(pages) >= 3
    for later, earlier in zip(reversed(pages[1:]), reversed(pages[:-1])):
        back = api.ok(later["links"]["prev"])
        assert [x["id"] for x in back["data"]] == [x["id"] for x in earlier["data"]]
        # forward again from the page reached backwards
        assert [x["id"] for x in api.ok(back["links"]["next"])["data"]] == [x["id"] for x in later["data"]]
    assert "prev" not in api.ok(pages[1]["links"]["prev"])["links"]
