"""Many accounts: one dataset and one pipeline (incremental state) per account, in parallel; a failing
account is reported at the end (exit code 4) and never stops the others."""

from __future__ import annotations

import json

import dlt
import duckdb
import pytest

from klaviyo_source.accounts import slug
from klaviyo_source.cli_errors import EXIT_PARTIAL


def _ids(db, dataset: str, table: str) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute(f"SELECT id FROM {dataset}.{table}").fetchall()}


def _results(out: str) -> dict[str, dict]:
    return {r["account"]: r for r in map(json.loads, out.splitlines()) if r.get("event") == "sync_result"}


def test_all_connections_three_accounts_one_revoked(cli, sandbox3, tmp_path, monkeypatch):
    monkeypatch.setenv("MATON_API_KEY", sandbox3.maton_api_key)
    good, revoked = sandbox3.accounts[:2], sandbox3.accounts[2]
    sandbox3.control.revoke_connection(revoked.maton_connection_id)
    db = tmp_path / "accounts.duckdb"
    argv = ["--log-format", "json", "sync", "profiles", "events", "--all-connections", "--ctrl-url", sandbox3.base_url,
            "--base-url", sandbox3.base_url, "--duckdb-path", str(db), "--parallel", "3"]
    run = cli(*argv)
    assert run.code == EXIT_PARTIAL, run.err
    results = _results(run.out)
    assert set(results) == {a.maton_connection_id for a in sandbox3.accounts}
    failed = results[revoked.maton_connection_id]
    assert not failed["ok"] and "FAILED" in failed["error"]
    assert any(revoked.maton_connection_id in line and "failed" in line for line in run.err.splitlines())

    store = sandbox3.store
    datasets = []
    for account in good:
        result = results[account.maton_connection_id]
        assert result["ok"], result
        dataset = f"klaviyo_data_{slug(account.maton_connection_id)}"
        assert result["dataset"] == dataset
        datasets.append(dataset)
        # each dataset holds exactly its own account's records (isolation)
        assert _ids(db, dataset, "profiles") == set(store.ids(account.id, "profile"))
        assert _ids(db, dataset, "events") == set(store.ids(account.id, "event"))
    assert not _ids(db, datasets[0], "profiles") & _ids(db, datasets[1], "profiles")

    # separate pipelines → separate incremental state: a change in account 1 is the only thing loaded next run
    changed = store.ids(good[1].id, "profile")[3]
    sandbox3.control.for_account(good[1].api_key).update_profile(changed, {"first_name": "OnlyHere"})
    run = cli(*argv)
    assert run.code == EXIT_PARTIAL
    again = _results(run.out)
    first_rows = again[good[0].maton_connection_id]["rows"].get("profiles", 0)
    second_rows = again[good[1].maton_connection_id]["rows"].get("profiles", 0)
    assert second_rows >= 1 and second_rows > first_rows - 1 and second_rows < len(store.ids(good[1].id, "profile"))
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(f"SELECT first_name FROM {datasets[1]}.profiles WHERE id = ?", [changed]).fetchall() == [
            ("OnlyHere",)]
    states = {}
    for account in good:
        pipeline = dlt.attach(f"klaviyo_{slug(account.maton_connection_id)}", pipelines_dir=str(tmp_path / "pipelines"))
        states[account.id] = pipeline.state["sources"]["klaviyo"]["resources"]["profiles"]["incremental"]["updated"]
    assert len({str(s["last_value"]) for s in states.values()}) == 2  # each account keeps its own watermark


def test_private_keys_from_config_one_bad_key(cli, sandbox3, tmp_path, monkeypatch):
    keys = {"shop_a": sandbox3.accounts[0].api_key, "shop_b": sandbox3.accounts[1].api_key,
            "shop_bad": "pk_revoked_0000000000000000000000"}
    monkeypatch.setenv("SOURCES__KLAVIYO__ACCOUNTS", json.dumps(keys))
    db = tmp_path / "keys.duckdb"
    run = cli("--log-format", "json", "sync", "profiles", "--all-accounts", "--base-url", sandbox3.base_url,
              "--duckdb-path", str(db))
    assert run.code == EXIT_PARTIAL, run.err
    results = _results(run.out)
    assert not results["shop_bad"]["ok"] and "401" in results["shop_bad"]["error"]
    assert results["shop_bad"]["exit_code"] == 3
    for name, index in (("shop_a", 0), ("shop_b", 1)):
        assert results[name]["ok"]
        assert _ids(db, f"klaviyo_data_{name}", "profiles") == set(sandbox3.store.ids(sandbox3.accounts[index].id, "profile"))
    for key in keys.values():
        assert key not in run.out + run.err


@pytest.mark.postgres
def test_all_connections_into_postgres(cli, sandbox3, postgres_dsn, unique_name, monkeypatch):
    import psycopg2

    monkeypatch.setenv("MATON_API_KEY", sandbox3.maton_api_key)
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", postgres_dsn)
    prefix = f"ops_multi_{unique_name}"
    run = cli("--log-format", "json", "sync", "profiles", "--all-connections", "--ctrl-url", sandbox3.base_url,
              "--base-url", sandbox3.base_url, "--destination", "postgres", "--dataset-name", prefix,
              "--pipeline-name", prefix)
    try:
        assert run.code == 0, run.err
        with psycopg2.connect(postgres_dsn) as con, con.cursor() as cur:
            for account in sandbox3.accounts:
                cur.execute(f"SELECT id FROM {prefix}_{slug(account.maton_connection_id)}.profiles")
                assert {r[0] for r in cur.fetchall()} == set(sandbox3.store.ids(account.id, "profile"))
    finally:
        with psycopg2.connect(postgres_dsn) as con, con.cursor() as cur:
            for account in sandbox3.accounts:
                cur.execute(f"DROP SCHEMA IF EXISTS {prefix}_{slug(account.maton_connection_id)} CASCADE")
                cur.execute(f"DROP SCHEMA IF EXISTS {prefix}_{slug(account.maton_connection_id)}_staging CASCADE")
