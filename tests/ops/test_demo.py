"""The Quick-start demo end to end (small sizes): sandbox → DuckDB → SQL → reverse sync → list members."""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from klaviyo_source.cli_output import Output
from klaviyo_source.demo import DEMO_DATASET, DEMO_LIST, run_demo


@pytest.fixture
def demo_sandbox():
    from klaviyo_sandbox import Sandbox

    with Sandbox(seed=5, accounts=1, profiles=200, events=4000, rate_limits=False) as sb:
        yield sb


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_demo_end_to_end(demo_sandbox, tmp_path, capsys):
    sb, account = demo_sandbox, demo_sandbox.account.id
    lists_before = sb.store.count(account, "list")
    placed_order = {m.id for m in sb.store.all(account, "metric") if m.attributes["name"] == "Placed Order"}
    orders = [e for e in sb.store.all(account, "event") if e.relationships["metric"] in placed_order]

    result = run_demo(duckdb_path=str(tmp_path / "demo.duckdb"), sandbox=sb, out=Output("text"), progress="off")

    assert os.path.isabs(result.duckdb_path) and os.path.exists(result.duckdb_path)
    printed = capsys.readouterr().out
    assert result.duckdb_path in printed and "Revenue per day" in printed

    # rows per table == the sandbox's ground truth, and they really are in the file
    expected = {"profiles": sb.store.count(account, "profile"), "events": sb.store.count(account, "event"),
                "metrics": sb.store.count(account, "metric"), "lists": lists_before}
    assert {t: result.table_rows[t] for t in expected} == expected
    with duckdb.connect(result.duckdb_path, read_only=True) as con:
        for table, count in expected.items():
            assert con.execute(f"SELECT count(*) FROM {DEMO_DATASET}.{table}").fetchone()[0] == count

    # the analyst query equals revenue per day computed from the sandbox's events
    today = datetime.now(timezone.utc).date()
    per_day: dict = defaultdict(lambda: [0, 0.0])
    for event in orders:
        day = _ts(event.attributes["datetime"]).astimezone(timezone.utc).date()
        if day >= today - timedelta(days=13):
            per_day[day][0] += 1
            per_day[day][1] += float(event.attributes["event_properties"].get("$value") or 0)
    assert per_day, "the generated account should have recent orders"
    assert [(d, n, round(v, 2)) for d, (n, v) in sorted(per_day.items())] == [
        (day, orders_, pytest.approx(revenue, abs=0.011)) for day, orders_, revenue in result.revenue_per_day]

    # the SQL audience (top customers by 90-day revenue) is now exactly the Klaviyo list's membership
    since = datetime.now(timezone.utc) - timedelta(days=90)
    emails = {p.id: p.attributes.get("email") for p in sb.store.all(account, "profile")}
    revenue: dict = defaultdict(float)
    for event in orders:
        if _ts(event.attributes["datetime"]) >= since and emails.get(event.relationships["profile"]):
            revenue[emails[event.relationships["profile"]]] += float(event.attributes["event_properties"].get("$value") or 0)
    top = sorted(revenue.items(), key=lambda kv: (-round(kv[1], 2), kv[0]))[:25]
    assert result.list_id and result.reverse_sync_report.list_created
    lists = {r.id: r.attributes["name"] for r in sb.store.all(account, "list")}
    assert lists[result.list_id] == DEMO_LIST
    members = {pid for pid, _ in sb.store.members(account, "list", result.list_id)}
    member_emails = {p.attributes.get("email") for p in sb.store.all(account, "profile") if p.id in members}
    assert member_emails == {email for email, _ in top}
    assert {m["email"] for m in result.list_members} == member_emails  # what the demo read back from the API


def test_demo_with_its_own_sandbox_leaves_no_daemon_thread_running(tmp_path, capsys):
    """What `make demo` runs: when run_demo returns, every thread it started that the interpreter would
    not wait for has ended (one still inside DuckDB at exit aborts the process after "Done")."""
    import threading

    before = set(threading.enumerate())
    result = run_demo(profiles=120, events=1500, duckdb_path=str(tmp_path / "demo.duckdb"), out=Output("text"),
                      progress="off")
    assert result.list_members
    left = [t.name for t in threading.enumerate() if t not in before and t.daemon and t.is_alive()]
    assert left == []
    assert "Done in" in capsys.readouterr().out


def _readme_demo_lines() -> list[str]:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- demo output: checked against a real run by tests/ops/test_demo.py -->", 1)[1]
    return block.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def _pattern(line: str):
    """A README line as a regex: numbers, ``<...>`` and the example path match whatever a run prints."""
    import re

    parts = re.split(r"(<[^>]+>|/home/you/klaviyo_demo\.duckdb|\d[\d,.]*)", line)
    regex = "".join(".+?" if p.startswith(("<", "/home/you")) else r"[\d,.]+" if p[:1].isdigit() else re.escape(p)
                    for p in parts if p)
    return re.compile(regex)


@pytest.mark.slow
def test_demo_prints_what_the_readme_says(tmp_path):
    """``klaviyo-dlt demo`` as the README runs it: every line the README shows, in that order."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "klaviyo-dlt")
    done = subprocess.run([script, "demo", "--profiles", "300", "--events", "3000"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.splitlines()
    position = 0
    for line in _readme_demo_lines():
        pattern = _pattern(line)
        found = next((i for i in range(position, len(printed)) if pattern.fullmatch(printed[i].rstrip())), None)
        assert found is not None, f"the README says the demo prints {line!r}; it printed:\n{done.stdout}"
        position = found + 1
    assert str(tmp_path / "klaviyo_demo.duckdb") in done.stdout
