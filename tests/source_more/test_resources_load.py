"""Every issue #4 resource loads from the sandbox into DuckDB and PostgreSQL, equal to ground truth."""

from __future__ import annotations

import pytest

from klaviyo_source import klaviyo_source
from klaviyo_source.streams import ALL_STREAMS

from .conftest import truth, truth_links

MORE = ["lists", "segments", "flows", "flow_actions", "flow_messages", "campaign_messages", "templates", "tags",
        "tag_links", "coupons", "coupon_codes", "webhooks", "webhook_topics", "accounts", "list_members",
        "segment_members", "metric_aggregates", "campaign_values_reports", "flow_series_reports"]
COSTLY = {"list_members", "segment_members"}


def test_default_selection_leaves_out_only_the_membership_passes():
    source = klaviyo_source(api_key="pk_test", base_url="http://127.0.0.1:9")
    selected = set(source.selected_resources)
    assert set(source.resources) == {s.name for s in ALL_STREAMS}
    assert set(source.resources) - selected == COSTLY
    named = klaviyo_source(api_key="pk_test", base_url="http://127.0.0.1:9", resources=["list_members"])
    assert set(named.selected_resources) == {"list_members"}
    assert set(source.with_resources("segment_members", "lists").selected_resources) == {"segment_members", "lists"}


def test_every_resource_loads_equal_to_ground_truth(runner):
    sb = runner.sb
    runner.run(MORE)
    for table, type_ in [("lists", "list"), ("segments", "segment"), ("flows", "flow"), ("flow_actions", "flow-action"),
                         ("flow_messages", "flow-message"), ("campaign_messages", "campaign-message"),
                         ("templates", "template"), ("tags", "tag"), ("coupons", "coupon"),
                         ("coupon_codes", "coupon-code"), ("webhooks", "webhook"), ("webhook_topics", "webhook-topic"),
                         ("accounts", "account")]:
        expected = {r.id for r in truth(sb, type_)}
        assert expected, type_
        assert {r[0] for r in runner.rows(f"SELECT id FROM {table}")} == expected, table

    # parents are linked, templates keep their HTML, codes point at their coupon and profile
    actions = {r.id: r.relationships["flow"] for r in truth(sb, "flow-action")}
    assert dict(runner.rows("SELECT id, flow_id FROM flow_actions")) == actions
    messages = {r.id: r.relationships["campaign"] for r in truth(sb, "campaign-message")}
    assert dict(runner.rows("SELECT id, campaign_id FROM campaign_messages")) == messages
    html = {r.id: r.attributes.get("html") for r in truth(sb, "template")}
    assert dict(runner.rows("SELECT id, html FROM templates")) == html and any(html.values())
    codes = {r.id: (r.relationships["coupon"], r.relationships["profile"]) for r in truth(sb, "coupon-code")}
    assert {r[0]: (r[1], r[2]) for r in runner.rows("SELECT id, coupon_id, profile_id FROM coupon_codes")} == codes

    # memberships and tag links: one row per pair, joined_group_at as stored
    for table, link, key in [("list_members", "list_members", "list_id"),
                             ("segment_members", "segment_members", "segment_id")]:
        loaded = set(runner.rows(f"SELECT {key}, profile_id FROM {table}"))
        assert loaded == truth_links(sb, link) and loaded, table
        assert runner.count(table, "removed_at IS NOT NULL") == 0
    some_list = truth(sb, "list")[0].id
    stored = {p: j.replace(microsecond=0) for p, j in sb.store.members(sb.account.id, "list", some_list)}
    loaded = {p: j.replace(microsecond=0, tzinfo=stored[p].tzinfo) if j.tzinfo is None else j
              for p, j in runner.rows(f"SELECT profile_id, joined_group_at FROM list_members WHERE list_id = '{some_list}'")}
    assert loaded == stored
    tags = set()
    for kind in ("campaign", "flow", "list", "segment"):
        tags |= {(a, kind, b) for a, b in truth_links(sb, f"tag:{kind}")}
    assert set(runner.rows("SELECT tag_id, resource_type, resource_id FROM tag_links")) == tags

    # aggregates: one row per metric and day; reports: rows keyed by message
    metrics = {r.id for r in truth(sb, "metric")}
    assert {r[0] for r in runner.rows("SELECT DISTINCT metric_id FROM metric_aggregates")} == metrics
    assert runner.rows("SELECT count(*) - count(DISTINCT (metric_id, date)) FROM metric_aggregates") == [(0,)]
    received = next(r.id for r in truth(sb, "metric") if r.attributes["name"] == "Received Email")
    (first_day,) = runner.rows(f"SELECT min(date) FROM metric_aggregates WHERE metric_id = '{received}'")[0]
    in_window = sb.store.execute(
        "SELECT count(*) FROM events WHERE account = ? AND rel_metric = ? AND datetime >= ?",
        [sb.account.id, received, first_day]).fetchone()[0]
    assert runner.rows(f"SELECT sum(count) FROM metric_aggregates WHERE metric_id = '{received}'")[0][0] == in_window
    campaign_messages = set(messages)
    assert {r[0] for r in runner.rows("SELECT campaign_message_id FROM campaign_values_reports")} <= campaign_messages
    flow_messages = {r.id for r in truth(sb, "flow-message")}
    loaded_flow = {r[0] for r in runner.rows("SELECT DISTINCT flow_message_id FROM flow_series_reports")}
    assert loaded_flow and loaded_flow <= flow_messages
    assert runner.rows("SELECT count(*) - count(DISTINCT (flow_message_id, date)) FROM flow_series_reports") == [(0,)]


@pytest.mark.parametrize("bad, fragment", [({"deletions": "maybe"}, "deletions"),
                                           ({"report_timezone": "Mars/Olympus"}, "report_timezone")])
def test_bad_options_fail_with_one_line(bad, fragment):
    from klaviyo_source.errors import KlaviyoConfigError

    with pytest.raises(KlaviyoConfigError) as caught:
        klaviyo_source(api_key="pk_test", base_url="http://127.0.0.1:9", **bad)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
