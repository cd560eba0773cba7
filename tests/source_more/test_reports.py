"""Aggregates and reports re-read their window: late events and attribution changes update rows in place."""

from __future__ import annotations

import datetime as dt

from .conftest import truth

REPORTS = ["metric_aggregates", "campaign_values_reports", "flow_series_reports"]
KEYS = {"metric_aggregates": "metric_id, date",
        "campaign_values_reports": "campaign_id, campaign_message_id, send_channel",
        "flow_series_reports": "flow_id, flow_message_id, send_channel, date"}


def test_reports_reread_their_window_without_duplicate_rows(runner):
    sb = runner.sb
    now = dt.datetime.now(dt.timezone.utc)
    # a campaign sent five days ago, so the values report's re-read window covers it
    campaign = next(c for c in truth(sb, "campaign") if c.attributes.get("_channel", "email") == "email"
                    and any(m.relationships["campaign"] == c.id for m in truth(sb, "campaign-message")))
    message = next(m for m in truth(sb, "campaign-message") if m.relationships["campaign"] == campaign.id)
    sb.control.update("campaign", campaign.id, {"send_time": (now - dt.timedelta(days=5)).isoformat(),
                                                "status": "Sent"})
    flow_message = truth(sb, "flow-message")[0]
    profile = truth(sb, "profile")[0].id

    runner.run(REPORTS)
    keys = {t: set(runner.rows(f"SELECT {k} FROM {t}")) for t, k in KEYS.items()}
    assert all(keys.values())
    ordered = next(r.id for r in truth(sb, "metric") if r.attributes["name"] == "Placed Order")
    late_day = (now - dt.timedelta(days=2)).date()
    (before,) = runner.rows(f"SELECT count FROM metric_aggregates WHERE metric_id = '{ordered}' "
                            f"AND date = '{late_day.isoformat()}'")[0]
    opens_before = runner.rows(f"SELECT opens FROM campaign_values_reports WHERE campaign_message_id = '{message.id}'")
    opens_before = opens_before[0][0] if opens_before else 0
    recipients_before = runner.rows(
        f"SELECT coalesce(sum(recipients), 0) FROM flow_series_reports WHERE flow_message_id = '{flow_message.id}' "
        f"AND date = '{late_day.isoformat()}'")[0][0]

    # late (backdated) events inside every re-read window
    late = now - dt.timedelta(days=2)
    sb.control.insert_event(profile, "Placed Order", datetime=late, properties={"$value": 12.5})
    sb.control.insert_event(profile, "Opened Email", datetime=now - dt.timedelta(days=1),
                            properties={"$message": message.id})
    sb.control.insert_event(profile, "Received Email", datetime=late, properties={"$message": flow_message.id})

    runner.run(REPORTS)
    for table, key in KEYS.items():
        assert runner.rows(f"SELECT count(*) - count(DISTINCT ({key})) FROM {table}") == [(0,)], table
        after = set(runner.rows(f"SELECT {key} FROM {table}"))
        assert after >= keys[table], table  # rows updated in place, none lost
    # re-read days of a flow message without sends in the first window come back as zero rows
    assert {k for k in set(runner.rows(f"SELECT {KEYS['flow_series_reports']} FROM flow_series_reports"))
            - keys["flow_series_reports"]} <= {k for k in runner.rows(
                f"SELECT {KEYS['flow_series_reports']} FROM flow_series_reports WHERE date >= "
                f"'{(now - dt.timedelta(days=8)).date().isoformat()}'")}
    assert runner.count("metric_aggregates") == len(keys["metric_aggregates"])
    assert runner.rows(f"SELECT count FROM metric_aggregates WHERE metric_id = '{ordered}' "
                       f"AND date = '{late_day.isoformat()}'") == [(before + 1,)]
    assert runner.rows(f"SELECT opens FROM campaign_values_reports "
                       f"WHERE campaign_message_id = '{message.id}'") == [(opens_before + 1,)]
    assert runner.rows(
        f"SELECT sum(recipients) FROM flow_series_reports WHERE flow_message_id = '{flow_message.id}' "
        f"AND date = '{late_day.isoformat()}'") == [(recipients_before + 1,)]


def test_metric_aggregates_days_are_cut_in_the_configured_timezone(runner):
    from zoneinfo import ZoneInfo

    sb = runner.sb
    zone = ZoneInfo("Asia/Tokyo")
    runner.run(["metric_aggregates"], report_timezone="Asia/Tokyo")
    opened = next(r.id for r in truth(sb, "metric") if r.attributes["name"] == "Opened Email")
    per_day: dict = {}
    for (stamp,) in sb.store.execute("SELECT datetime FROM events WHERE account = ? AND rel_metric = ?",
                                     [sb.account.id, opened]).fetchall():
        day = stamp.replace(tzinfo=dt.timezone.utc).astimezone(zone).date()
        per_day[day] = per_day.get(day, 0) + 1
    loaded = dict(runner.rows(f"SELECT date, count FROM metric_aggregates WHERE metric_id = '{opened}'"))
    assert runner.rows("SELECT DISTINCT timezone FROM metric_aggregates") == [("Asia/Tokyo",)]
    assert {d: c for d, c in loaded.items() if c} == {d: c for d, c in per_day.items() if d >= min(loaded)}
