"""The filter language per endpoint, table-driven from the spec: allowed fields/operators pass, others are 400."""

from __future__ import annotations

import datetime as dt

import pytest

from klaviyo_sandbox.errors import ApiError
from klaviyo_sandbox.filters import Condition, parse_filter, validate
from klaviyo_sandbox.spec import load_spec


SPEC = load_spec()
PAST = "2025-01-01T00:00:00+00:00"
ENDPOINTS = ["/api/profiles", "/api/events", "/api/metrics", "/api/lists", "/api/segments", "/api/flows",
             "/api/templates", "/api/tags", "/api/catalog-items", "/api/catalog-variants", "/api/catalog-categories",
             "/api/campaigns", "/api/coupon-codes"]
REQUIRED_PREFIX = {"/api/campaigns": "equals(messages.channel,'email')", "/api/coupon-codes": "equals(coupon.id,'COUPON0')"}
BOOLEAN_FIELDS = {"archived", "published", "is_active", "is_starred"}
DATETIME_FIELDS = {"datetime", "timestamp", "created", "updated", "created_at", "updated_at", "scheduled_at",
                   "expires_at", "joined_group_at"}


def _literal(field: str, operator: str) -> str:
    leaf = field.split(".")[-1]
    if operator == "has":
        return f"has({field})"
    if leaf in DATETIME_FIELDS:
        return f"{operator}({field},{PAST})"
    if field in BOOLEAN_FIELDS:
        return f"{operator}({field},[true,false])" if operator == "any" else f"{operator}({field},true)"
    if operator == "any":
        return f"any({field},['a','b'])"
    return f"{operator}({field},'x')"


def _cases():
    for path in ENDPOINTS:
        op = SPEC.operation("GET", path)
        for field, operators in op.filters.items():
            for operator in operators:
                yield pytest.param(path, field, operator, id=f"{path}:{operator}:{field}")


@pytest.mark.parametrize("path,field,operator", list(_cases()))
def test_every_allowed_filter_is_accepted(api, path, field, operator):
    expression = _literal(field, operator)
    if path in REQUIRED_PREFIX and field not in REQUIRED_PREFIX[path]:
        expression = f"{REQUIRED_PREFIX[path]},{expression}"
    api.ok(path, filter=expression)


def _rejections():
    all_ops = ["equals", "any", "contains", "starts-with", "ends-with", "greater-than", "greater-or-equal",
               "less-than", "less-or-equal"]
    for path in ENDPOINTS:
        op = SPEC.operation("GET", path)
        for field, operators in op.filters.items():
            for operator in all_ops:
                if operator not in operators:
                    yield pytest.param(path, field, operator, id=f"{path}:{operator}:{field}")
                    break


@pytest.mark.parametrize("path,field,operator", list(_rejections()))
def test_disallowed_operator_is_400(api, path, field, operator):
    expression = _literal(field, operator)
    if path in REQUIRED_PREFIX:
        expression = f"{REQUIRED_PREFIX[path]},{expression}"
    error = api.error(path, filter=expression)
    assert error["code"] == "invalid" and error["source"] == {"parameter": "filter"}
    assert operator in error["detail"] and field in error["detail"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_unknown_field_is_400(api, path):
    expression = "equals(not_a_field,'x')"
    if path in REQUIRED_PREFIX:
        expression = f"{REQUIRED_PREFIX[path]},{expression}"
    error = api.error(path, filter=expression)
    assert "not_a_field" in error["detail"]


def test_profiles_updated_only_greater_or_less_than(api):
    api.ok("/api/profiles", filter=f"greater-than(updated,{PAST})")
    api.ok("/api/profiles", filter=f"less-than(updated,{PAST})")
    assert api.error("/api/profiles", filter=f"greater-or-equal(updated,{PAST})")["code"] == "invalid"


def test_lists_only_greater_than_created(api):
    api.ok("/api/lists", filter=f"greater-than(created,{PAST})")
    api.error("/api/lists", filter=f"less-than(created,{PAST})")


def test_future_datetime_is_400(api, sandbox_now):
    future = (sandbox_now + dt.timedelta(days=2)).isoformat()
    error = api.error("/api/events", filter=f"greater-than(datetime,{future})")
    assert "future" in error["detail"]
    api.error("/api/profiles", filter=f"greater-than(updated,{future})")


def test_quoted_datetime_is_400(api):
    error = api.error("/api/events", filter=f"greater-than(datetime,'{PAST}')")
    assert "unquoted" in error["detail"]


def test_events_datetime_filter_matches_store(api, sandbox):
    cut = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    got = api.all_pages("/api/events", filter=f"greater-or-equal(datetime,{cut.isoformat()})", **{"page[size]": "1000"})
    truth = [r.id for r in sandbox.store.all(api.account, "event")
             if dt.datetime.fromisoformat(r.attributes["datetime"]) >= cut]
    assert sorted(e["id"] for e in got) == sorted(truth) and truth


def test_and_and_comma_forms_agree(api, sandbox):
    metric = api.ok("/api/metrics")["data"][0]["id"]
    a = api.all_pages("/api/events", filter=f"and(equals(metric_id,'{metric}'),greater-than(datetime,{PAST}))")
    b = api.all_pages("/api/events", filter=f"equals(metric_id,\"{metric}\"),greater-than(datetime,{PAST})")
    assert [e["id"] for e in a] == [e["id"] for e in b] and a
    assert all(e["relationships"]["metric"]["data"]["id"] == metric for e in a)


def test_any_and_equals_on_profiles(api, sandbox):
    profiles = [r for r in sandbox.store.all(api.account, "profile") if r.attributes.get("email")][:3]
    emails = [p.attributes["email"] for p in profiles]
    got = api.ok("/api/profiles", filter="any(email,[" + ",".join(f"'{e}'" for e in emails) + "])")["data"]
    assert sorted(p["attributes"]["email"] for p in got) == sorted(emails)
    one = api.ok("/api/profiles", filter=f"equals(email,'{emails[0]}')")["data"]
    assert [p["id"] for p in one] == [profiles[0].id]


def test_name_contains_and_flow_starts_with(api):
    got = api.ok("/api/campaigns", filter="equals(messages.channel,'email'),contains(name,'campaign 1')")["data"]
    assert got and all("campaign 1" in c["attributes"]["name"] for c in got)
    flows = api.ok("/api/flows", filter="starts-with(name,'Welcome')")["data"]
    assert [f["attributes"]["name"] for f in flows] == ["Welcome Series"]


def test_metrics_integration_filter(api):
    got = api.ok("/api/metrics", filter="equals(integration.name,'Shopify')")["data"]
    assert got and all(m["attributes"]["integration"]["name"] == "Shopify" for m in got)


@pytest.mark.parametrize("bad", ["equals(email", "equals(email,'x'", "frobnicate(email,'x')", "equals(email,x y)",
                                 "or(equals(email,'a'),equals(email,'b'))", "", "equals(email,'x'))"])
def test_malformed_filters_are_400(api, bad):
    error = api.error("/api/profiles", filter=bad)
    assert error["source"] == {"parameter": "filter"}


def test_parser_values():
    conds = parse_filter("and(equals(a,'x'),any(b,[\"p\",'q']),greater-than(c,2024-01-02T03:04:05Z)),equals(d,true),has(e)")
    assert conds[0] == Condition("a", "equals", "x")
    assert conds[1] == Condition("b", "any", ["p", "q"])
    assert conds[2].value == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert conds[3] == Condition("d", "equals", True)
    assert conds[4] == Condition("e", "has", None)
    assert parse_filter("equals(n,3)")[0].value == 3


def test_validate_rejects_future(sandbox_now):
    with pytest.raises(ApiError):
        validate(parse_filter("greater-than(datetime,2030-01-01T00:00:00+00:00)"), {"datetime": ("greater-than",)},
                 sandbox_now)
