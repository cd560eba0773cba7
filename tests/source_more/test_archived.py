"""Archived campaigns and flows: Klaviyo lists them only when asked (``equals(archived,true)``).

They must load with their children, and archiving a record must never mark it deleted.
"""

from __future__ import annotations

from .conftest import truth


def test_archived_flows_and_campaigns_load_with_their_children(runner):
    sb = runner.sb
    runner.run(["flows", "flow_actions", "flow_messages", "campaigns", "campaign_messages"])
    for table, type_ in [("flows", "flow"), ("campaigns", "campaign")]:
        records = truth(sb, type_)
        archived = {r.id for r in records if r.attributes["archived"]}
        assert archived, type_
        assert set(runner.ids(table)) == {r.id for r in records}, table
        assert {r[0] for r in runner.rows(f"SELECT id FROM {table} WHERE archived")} == archived, table
        assert runner.count(table, "deleted_at IS NOT NULL") == 0, table

    archived_flows = {r.id for r in truth(sb, "flow") if r.attributes["archived"]}
    actions = {a.id for a in truth(sb, "flow-action") if a.relationships["flow"] in archived_flows}
    messages = {m.id for m in truth(sb, "flow-message") if m.relationships["flow-action"] in actions}
    assert actions and messages
    assert actions <= set(runner.ids("flow_actions"))
    assert messages <= set(runner.ids("flow_messages"))
    archived_campaigns = {r.id for r in truth(sb, "campaign") if r.attributes["archived"]}
    campaign_messages = {m.id for m in truth(sb, "campaign-message") if m.relationships["campaign"] in archived_campaigns}
    assert campaign_messages and campaign_messages <= set(runner.ids("campaign_messages"))


def test_archiving_a_record_never_marks_it_deleted(runner):
    sb = runner.sb
    runner.run(["flows", "campaigns"])
    flow = next(r for r in truth(sb, "flow") if not r.attributes["archived"])
    campaign = next(r for r in truth(sb, "campaign") if not r.attributes["archived"])
    sb.control.set_clock(advance_seconds=5)
    sb.control.update("flow", flow.id, {"archived": True})
    sb.control.update("campaign", campaign.id, {"archived": True})
    runner.run(["flows", "campaigns"])
    for table, record in [("flows", flow), ("campaigns", campaign)]:
        assert runner.count(table, "deleted_at IS NOT NULL") == 0, table
        assert runner.rows(f"SELECT archived FROM {table} WHERE id = '{record.id}'") == [(True,)], table

    # a deleted flow is still found missing, archived or not
    doomed = next(r for r in truth(sb, "flow") if r.attributes["archived"])
    assert sb.control.delete("flow", doomed.id)
    runner.run(["flows"])
    assert {r[0] for r in runner.rows("SELECT id FROM flows WHERE deleted_at IS NOT NULL")} == {doomed.id}
