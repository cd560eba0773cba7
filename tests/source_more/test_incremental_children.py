"""Flow actions and flow messages are read incrementally on `updated` (the spec allows it per parent)."""

from __future__ import annotations

from .conftest import truth


def _extracted_rows(pipeline, table: str) -> int:
    return pipeline.last_trace.last_normalize_info.row_counts.get(table, 0)


def test_second_run_reads_only_changed_flow_actions_and_messages(runner):
    sb = runner.sb
    pipeline, _ = runner.run(["flow_actions", "flow_messages"])
    actions = truth(sb, "flow-action")
    assert _extracted_rows(pipeline, "flow_actions") == len(actions) > 1
    assert _extracted_rows(pipeline, "flow_messages") == len(truth(sb, "flow-message")) > 0
    # the watermark's own second is read again (greater-or-equal), the merge dedupes it
    watermark = max(a.attributes["updated"] for a in actions)
    at_watermark = sum(1 for a in actions if a.attributes["updated"] == watermark)
    messages_at_watermark = runner.count(
        "flow_messages", "updated = (SELECT max(updated) FROM flow_messages)")

    sb.control.set_clock(advance_seconds=5)  # the change lands after the first run's watermark second
    changed = next(a.id for a in actions if a.attributes["updated"] != watermark)
    before = runner.rows(f"SELECT updated FROM flow_actions WHERE id = '{changed}'")[0][0]
    sb.control.update("flow-action", changed, {})  # bumps `updated`
    pipeline, _ = runner.run(["flow_actions", "flow_messages"])

    assert _extracted_rows(pipeline, "flow_actions") == 1 + at_watermark < len(actions)
    assert _extracted_rows(pipeline, "flow_messages") == messages_at_watermark
    after = runner.rows(f"SELECT updated FROM flow_actions WHERE id = '{changed}'")[0][0]
    assert after > before
    assert runner.count("flow_actions") == len(actions)
