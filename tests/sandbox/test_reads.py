"""Read endpoints over real HTTP: envelopes, single resources, related paths, include, fields, sort, page sizes."""

from __future__ import annotations

import datetime as dt

import pytest

from klaviyo_sandbox.spec import load_spec
from klaviyo_sandbox.store import KINDS

COLLECTIONS = ["accounts", "profiles", "events", "metrics", "lists", "segments", "flows", "templates", "tags",
               "coupons", "catalog-items", "catalog-variants", "catalog-categories", "webhooks", "webhook-topics"]


def _store_type(collection: str) -> str:
    return next(k.type for k in KINDS.values() if k.collection == collection)


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_collection_envelope_and_single(api, sandbox, collection):
    body = api.ok(f"/api/{collection}")
    type_ = _store_type(collection)
    assert body["data"], collection
    assert body["links"]["self"].startswith(sandbox.base_url + f"/api/{collection}")
    first = body["data"][0]
    assert first["type"] == type_
    assert first["links"]["self"].endswith("/")
    truth = sandbox.store.get(api.account, type_, first["id"])
    assert truth is not None
    if KINDS[type_].has_attributes:
        expected = {k: v for k, v in truth.attributes.items() if k not in KINDS[type_].extras}
        assert first["attributes"] == expected
    single = api.ok(f"/api/{collection}/{first['id']}")
    assert single["data"]["id"] == first["id"]
    assert single["data"].get("attributes") == first.get("attributes")


def test_single_unknown_id_is_404(api):
    error = api.error("/api/profiles/01NOPE", status=404)
    assert error["code"] == "not_found" and error["status"] == 404


def test_unknown_path_is_404_json(api):
    assert api.error("/api/no-such-thing", status=404)["code"] == "not_found"


def test_campaigns_require_channel_filter(api, sandbox):
    error = api.error("/api/campaigns")
    assert error["source"] == {"parameter": "filter"}
    for channel in ("email", "sms", "mobile_push"):
        body = api.ok("/api/campaigns", filter=f"equals(messages.channel,'{channel}')")
        ids = {c["id"] for c in body["data"]}
        truth = {r.id for r in sandbox.store.all(api.account, "campaign")
                 if sandbox.store.execute("SELECT channel FROM campaigns WHERE id = ?", [r.id]).fetchone()[0] == channel
                 and not r.attributes["archived"]}  # archived ones only when the filter asks
        assert ids == truth and ids
    archived = api.ok("/api/campaigns", filter="equals(messages.channel,'email'),equals(archived,true)")["data"]
    assert all(c["attributes"]["archived"] for c in archived)


def test_events_include_metric_and_profile(api, sandbox):
    body = api.ok("/api/events", **{"include": "metric,profile", "page[size]": "50"})
    included = {(i["type"], i["id"]) for i in body["included"]}
    for event in body["data"]:
        rels = event["relationships"]
        assert ("metric", rels["metric"]["data"]["id"]) in included
        assert ("profile", rels["profile"]["data"]["id"]) in included
        truth = sandbox.store.get(api.account, "event", event["id"])
        assert truth.relationships == {"metric": rels["metric"]["data"]["id"], "profile": rels["profile"]["data"]["id"]}
    assert len(included) == len(set(included)) == len(body["included"])


def test_event_related_paths(api):
    event = api.ok("/api/events", **{"page[size]": "1"})["data"][0]
    metric_id = event["relationships"]["metric"]["data"]["id"]
    assert api.ok(f"/api/events/{event['id']}/metric")["data"]["id"] == metric_id
    assert api.ok(f"/api/events/{event['id']}/relationships/metric")["data"] == {"type": "metric", "id": metric_id}
    profile = api.ok(f"/api/events/{event['id']}/profile")["data"]
    assert profile["type"] == "profile" and profile["id"] == event["relationships"]["profile"]["data"]["id"]


def test_list_members_match_store(api, sandbox):
    for lst in api.ok("/api/lists")["data"]:
        members = api.all_pages(f"/api/lists/{lst['id']}/profiles", **{"page[size]": "100"})
        truth = [pid for pid, _ in sandbox.store.members(api.account, "list", lst["id"])]
        assert sorted(m["id"] for m in members) == sorted(truth)
        ids = api.all_pages(f"/api/lists/{lst['id']}/relationships/profiles", **{"page[size]": "100"})
        assert sorted(i["id"] for i in ids) == sorted(truth)
        assert all(i == {"type": "profile", "id": i["id"]} for i in ids)


def test_profile_lists_and_segments(api, sandbox):
    rows = sandbox.store.execute(
        "SELECT b, count(*) FROM links WHERE account = ? AND link = 'list_members' GROUP BY b ORDER BY 2 DESC LIMIT 1",
        [api.account]).fetchone()
    profile_id = rows[0]
    lists = api.ok(f"/api/profiles/{profile_id}/lists")["data"]
    assert sorted(x["id"] for x in lists) == sorted(sandbox.store.linked(api.account, "list_members", b=profile_id))
    segs = api.ok(f"/api/profiles/{profile_id}/relationships/segments")["data"]
    assert sorted(x["id"] for x in segs) == sorted(sandbox.store.linked(api.account, "segment_members", b=profile_id))


def test_joined_group_at_filter_and_sort(api, sandbox):
    lst = api.ok("/api/lists", sort="name")["data"][0]
    truth = sandbox.store.members(api.account, "list", lst["id"])
    cut = sorted(t for _, t in truth)[len(truth) // 2]
    got = api.all_pages(f"/api/lists/{lst['id']}/profiles", **{
        "filter": f"greater-than(joined_group_at,{cut.isoformat()})", "sort": "-joined_group_at", "page[size]": "7"})
    assert sorted(g["id"] for g in got) == sorted(p for p, t in truth if t > cut)


def test_campaign_messages_flows_tags(api, sandbox):
    campaign = api.ok("/api/campaigns", filter="equals(messages.channel,'sms')")["data"][0]
    messages = api.ok(f"/api/campaigns/{campaign['id']}/campaign-messages")["data"]
    assert messages and all(m["type"] == "campaign-message" for m in messages)
    msg = api.ok(f"/api/campaign-messages/{messages[0]['id']}")["data"]
    assert msg["attributes"]["definition"]["channel"] == "sms"
    flow = api.ok("/api/flows")["data"][0]
    actions = api.ok(f"/api/flows/{flow['id']}/flow-actions")["data"]
    assert actions
    flow_messages = [m for a in actions for m in api.ok(f"/api/flow-actions/{a['id']}/flow-messages")["data"]]
    assert flow_messages and api.ok(f"/api/flow-messages/{flow_messages[0]['id']}")["data"]["type"] == "flow-message"
    for tag in api.ok("/api/tags")["data"]:
        for rel, link in (("campaigns", "tag:campaign"), ("flows", "tag:flow"), ("lists", "tag:list"),
                          ("segments", "tag:segment")):
            got = api.ok(f"/api/tags/{tag['id']}/relationships/{rel}")["data"]
            assert sorted(x["id"] for x in got) == sorted(sandbox.store.linked(api.account, link, a=tag["id"]))


def test_coupon_codes_require_filter(api):
    assert api.error("/api/coupon-codes")["source"]["parameter"] == "filter"
    coupon = api.ok("/api/coupons")["data"][0]
    codes = api.ok("/api/coupon-codes", filter=f"equals(coupon.id,'{coupon['id']}')")["data"]
    assert codes and all(c["relationships"]["coupon"]["data"]["id"] == coupon["id"] for c in codes)


def test_catalog_variants_and_categories(api):
    item = api.ok("/api/catalog-items")["data"][0]
    variants = api.ok("/api/catalog-variants", filter=f"equals(item.id,'{item['id']}')")["data"]
    assert variants and all(v["relationships"]["item"]["data"]["id"] == item["id"] for v in variants)
    cats = api.ok(f"/api/catalog-items/{item['id']}/categories")["data"]
    assert cats
    in_cat = api.ok("/api/catalog-items", filter=f"equals(category.id,'{cats[0]['id']}')")["data"]
    assert item["id"] in {i["id"] for i in in_cat}


def test_webhook_topics_have_no_attributes(api):
    topic = api.ok("/api/webhook-topics")["data"][0]
    assert set(topic) == {"type", "id", "links"}


@pytest.mark.parametrize("path,default,maximum", [("/api/profiles", 20, 100), ("/api/events", 200, 1000),
                                                    ("/api/lists", 10, 10), ("/api/segments", 10, 10),
                                                    ("/api/catalog-items", 100, 100), ("/api/tags", 50, 50)])
def test_page_size_default_and_limits(api, path, default, maximum):
    op = load_spec().operation("GET", path)
    assert (op.page_size.default, op.page_size.maximum) == (default, maximum)
    body = api.ok(path)
    assert len(body["data"]) <= default
    api.ok(path, **{"page[size]": str(maximum)})
    for bad in (str(maximum + 1), "0", "abc"):
        assert api.error(path, **{"page[size]": bad})["source"] == {"parameter": "page[size]"}


def test_page_size_rejected_where_spec_has_none(api):
    assert api.error("/api/metrics", **{"page[size]": "5"})["source"]["parameter"] == "page[size]"


@pytest.mark.parametrize("sort", load_spec().operation("GET", "/api/profiles").sorts)
def test_profile_sorts(api, sort):
    body = api.ok("/api/profiles", sort=sort, **{"page[size]": "100"})
    field = sort.lstrip("-")
    if "." in field:
        return  # suppression timestamps: accepted, ordering over absent values is unspecified
    values = [p["id"] if field == "id" else p["attributes"][field] for p in body["data"]]
    key = [v or "" for v in values]
    assert key == sorted(key, reverse=sort.startswith("-"))


def test_invalid_sort_rejected(api):
    error = api.error("/api/events", sort="updated")
    assert error["source"] == {"parameter": "sort"} and error["code"] == "invalid"


def test_sparse_fields(api):
    body = api.ok("/api/profiles", **{"fields[profile]": "email,location.city", "page[size]": "5"})
    for item in body["data"]:
        assert set(item["attributes"]) <= {"email", "location"}
        assert set(item["attributes"].get("location", {})) <= {"city"}
    assert api.error("/api/profiles", **{"fields[profile]": "nope"})["source"]["parameter"] == "fields[profile]"
    events = api.ok("/api/events", **{"fields[event]": "datetime", "page[size]": "3"})["data"]
    assert all(set(e["attributes"]) == {"datetime"} for e in events)


def test_additional_fields_profile(api):
    plain = api.ok("/api/profiles", **{"page[size]": "3"})["data"]
    assert all("subscriptions" not in p["attributes"] for p in plain)
    rich = api.ok("/api/profiles", **{"page[size]": "3", "additional-fields[profile]": "subscriptions,predictive_analytics"})["data"]
    for p in rich:
        assert "marketing" in p["attributes"]["subscriptions"]["email"]
        assert "predictive_analytics" in p["attributes"]
    single = api.ok(f"/api/profiles/{plain[0]['id']}", **{"additional-fields[profile]": "subscriptions"})["data"]
    assert "subscriptions" in single["attributes"] and "predictive_analytics" not in single["attributes"]
    assert api.error("/api/profiles", **{"additional-fields[profile]": "bogus"})["code"] == "invalid"


def test_datetimes_are_klaviyo_formatted(api):
    event = api.ok("/api/events", **{"page[size]": "1"})["data"][0]
    value = event["attributes"]["datetime"]
    assert value.endswith("+00:00") and "." not in value
    assert dt.datetime.fromisoformat(value).timestamp() == event["attributes"]["timestamp"]


def test_accounts_are_isolated(sandbox, make_api):
    first, second = make_api(sandbox, 0), make_api(sandbox, 1)
    a = {p["id"] for p in first.all_pages("/api/profiles", **{"page[size]": "100"})}
    b = {p["id"] for p in second.all_pages("/api/profiles", **{"page[size]": "100"})}
    assert a and b and not (a & b)
    assert first.ok("/api/accounts")["data"][0]["id"] == sandbox.accounts[0].id
    assert second.ok("/api/accounts")["data"][0]["id"] == sandbox.accounts[1].id
    assert first.get(f"/api/profiles/{next(iter(b))}").status_code == 404


def test_additional_fields_profile_count_and_flow_definition(api, sandbox):
    for collection, type_, link in (("lists", "list", "list_members"), ("segments", "segment", "segment_members")):
        for group in api.ok(f"/api/{collection}")["data"]:
            plain = api.ok(f"/api/{collection}/{group['id']}")["data"]["attributes"]
            assert "profile_count" not in plain
            counted = api.ok(f"/api/{collection}/{group['id']}", **{f"additional-fields[{type_}]": "profile_count"})
            assert counted["data"]["attributes"]["profile_count"] == len(sandbox.store.members(api.account, type_, group["id"]))
    for flow in api.ok("/api/flows")["data"]:
        assert "definition" not in flow["attributes"]
        body = api.ok(f"/api/flows/{flow['id']}", **{"additional-fields[flow]": "definition"})
        definition = body["data"]["attributes"]["definition"]
        action_ids = [a["id"] for a in api.ok(f"/api/flows/{flow['id']}/flow-actions")["data"]]
        assert [a["id"] for a in definition["actions"]] == action_ids
        assert definition["entry_action_id"] == action_ids[0] and len(definition["triggers"]) == 1


@pytest.mark.parametrize("path,channel_filter", [("/api/flows", ""), ("/api/campaigns", "equals(messages.channel,'email')")])
def test_archived_records_are_listed_only_when_the_filter_asks(api, sandbox, path, channel_filter):
    # Klaviyo leaves archived campaigns and flows out unless the filter says equals(archived,...)
    type_ = _store_type(path.rsplit("/", 1)[1])
    base = [channel_filter] if channel_filter else []
    served = {r["id"]: r["attributes"]["archived"] for r in api.all_pages(path, **({"filter": ",".join(base)} if base else {}))}
    archived = {r["id"] for r in api.all_pages(path, filter=",".join(base + ["equals(archived,true)"]))}
    live = {r["id"] for r in api.all_pages(path, filter=",".join(base + ["equals(archived,false)"]))}
    assert archived and not any(served.values())
    assert set(served) == live and not live & archived
    truth = {r.id for r in sandbox.store.all(api.account, type_)}
    if not channel_filter:
        assert live | archived == truth
    # the single-record endpoint still serves an archived record
    one = next(iter(archived))
    assert api.ok(f"{path}/{one}")["data"]["attributes"]["archived"] is True
