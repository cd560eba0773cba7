"""``klaviyo-dlt connections`` against the sandbox's Maton connection API (``/connections``)."""

from __future__ import annotations

import json

from klaviyo_source.cli_errors import EXIT_AUTH, EXIT_OK, EXIT_USAGE


def _connections(cli, sb, *extra):
    run = cli("--log-format", "json", "connections", "--ctrl-url", sb.base_url, "list", *extra)
    assert run.code == EXIT_OK, run.err
    return json.loads(run.out)["connections"]


def test_list_create_get_delete(cli, sandbox, monkeypatch):
    monkeypatch.setenv("MATON_API_KEY", sandbox.maton_api_key)
    listed = _connections(cli, sandbox)
    assert {c["connection_id"] for c in listed} == {a.maton_connection_id for a in sandbox.accounts}
    assert {c["status"] for c in listed} == {"ACTIVE"}

    created = cli("connections", "--ctrl-url", sandbox.base_url, "create")
    assert created.code == EXIT_OK, created.err
    lines = created.out.splitlines()
    new_id = lines[0].split()[2]
    assert "PENDING" in lines[0]
    assert lines[1].startswith("open this URL in a browser to authorise it: http")
    assert {c["connection_id"] for c in _connections(cli, sandbox, "--status", "PENDING")} == {new_id}
    assert new_id not in {c["connection_id"] for c in _connections(cli, sandbox, "--status", "ACTIVE")}

    shown = cli("--log-format", "json", "connections", "--ctrl-url", sandbox.base_url, "get", new_id)
    assert json.loads(shown.out)["connection"]["status"] == "PENDING"
    text = cli("connections", "--ctrl-url", sandbox.base_url, "get", new_id)
    assert new_id in text.out and "PENDING" in text.out

    deleted = cli("connections", "--ctrl-url", sandbox.base_url, "delete", new_id)
    assert deleted.code == EXIT_OK and new_id in deleted.out
    assert new_id not in {c["connection_id"] for c in _connections(cli, sandbox)}
    missing = cli("connections", "--ctrl-url", sandbox.base_url, "get", new_id)
    assert missing.code == EXIT_USAGE and "not found" in missing.err_lines[-1]


def test_revoked_connection_shows_failed_and_wrong_key_exits_3(cli, sandbox, monkeypatch):
    monkeypatch.setenv("MATON_API_KEY", sandbox.maton_api_key)
    revoked = sandbox.accounts[0].maton_connection_id
    sandbox.control.revoke_connection(revoked)
    assert {c["connection_id"] for c in _connections(cli, sandbox, "--status", "FAILED")} == {revoked}

    monkeypatch.setenv("MATON_API_KEY", "maton_wrong_key_123456789")
    run = cli("connections", "--ctrl-url", sandbox.base_url, "list")
    assert run.code == EXIT_AUTH
    assert len(run.err_lines) == 1 and "rejected the API key" in run.err_lines[0]
    assert "maton_wrong_key_123456789" not in run.err + run.out
