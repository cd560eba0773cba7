"""``klaviyo-dlt reverse-sync``: flags → H4's reverse sync; a SQL audience lands in a Klaviyo list."""

from __future__ import annotations

import duckdb

from klaviyo_source.cli_errors import EXIT_OK, EXIT_USAGE

AUDIENCE = "select email, first_name from profiles where email is not null order by email limit 7"


def test_reverse_sync_a_sql_audience_into_a_new_list(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    db = str(tmp_path / "r.duckdb")
    assert cli("sync", "profiles", "--base-url", sandbox.base_url, "--duckdb-path", db, "--progress", "off").code == 0
    common = ["--base-url", sandbox.base_url, "--duckdb-path", db, "--query", AUDIENCE, "--email", "email",
              "--attribute", "first_name=first_name", "--list-name", "CLI audience", "--create-list"]

    dry = cli("reverse-sync", "--dry-run", *common)
    assert dry.code == EXIT_OK, dry.err
    assert "dry run" in dry.out
    assert "CLI audience" not in {r.attributes["name"] for r in sandbox.store.all(sandbox.account.id, "list")}

    run = cli("reverse-sync", *common)
    assert run.code == EXIT_OK, run.err
    with duckdb.connect(db, read_only=True) as con:
        wanted = {r[0] for r in con.execute(AUDIENCE.replace("from profiles", "from klaviyo_data.profiles")).fetchall()}
    lists = {r.attributes["name"]: r.id for r in sandbox.store.all(sandbox.account.id, "list")}
    members = {pid for pid, _ in sandbox.store.members(sandbox.account.id, "list", lists["CLI audience"])}
    emails = {p.attributes["email"] for p in sandbox.store.all(sandbox.account.id, "profile") if p.id in members}
    assert emails == wanted and len(wanted) == 7
    assert sandbox.api_key not in run.out + run.err


def test_reverse_sync_bad_flags_are_usage_errors(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    run = cli("reverse-sync", "--duckdb-path", str(tmp_path / "x.duckdb"), "--table", "profiles", "--email", "email",
              "--attribute", "first_name", "--list-name", "X")
    assert run.code == EXIT_USAGE
    assert len(run.err_lines) == 1 and "--attribute" in run.err_lines[0] and "FIELD=COLUMN" in run.err_lines[0]
