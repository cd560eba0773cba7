"""``klaviyo-dlt sandbox``: a busy port is named as such, and the global ``--log-format`` applies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import requests

from klaviyo_source.cli_errors import EXIT_USAGE

SMALL = ("--profiles", "5", "--events", "5", "--no-rate-limits")


@pytest.fixture
def busy_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        yield held.getsockname()[1]


def test_busy_port_says_the_port_is_in_use(cli, busy_port):
    run = cli("sandbox", "--port", str(busy_port), *SMALL)
    assert run.code == EXIT_USAGE
    (line,) = run.err_lines
    assert f"port {busy_port}" in line and "in use" in line and "--port" in line, line
    assert "Errno" not in line and "sync failed" not in line


@pytest.mark.parametrize("where", ["global", "local"])
def test_busy_port_error_is_json_under_log_format_json(cli, busy_port, where):
    argv = (["--log-format", "json", "sandbox"] if where == "global" else ["sandbox", "--log-format", "json"])
    run = cli(*argv, "--port", str(busy_port), *SMALL)
    assert run.code == EXIT_USAGE
    (line,) = run.err_lines
    record = json.loads(line)
    assert {"time", "level", "logger", "message"} <= set(record)
    assert record["level"] == "error" and f"port {busy_port}" in record["message"]


def test_ready_banner_is_one_json_line_under_log_format_json(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "klaviyo-dlt")
    process = subprocess.Popen([script, "--log-format", "json", "sandbox", "--port", "0", *SMALL],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = process.stdout.readline()
        assert line, process.stderr.read()
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record)
        assert record["base_url"].startswith("http://127.0.0.1:")
        account = record["accounts"][0]
        answer = requests.get(f"{record['base_url']}/api/accounts", timeout=30,
                              headers={"Authorization": f"Klaviyo-API-Key {account['api_key']}",
                                       "revision": record["revision"]})
        assert answer.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert all(json.loads(extra) for extra in process.stdout.read().splitlines() if extra.strip())
