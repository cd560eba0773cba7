"""The ``sandbox`` command line: --help documents every knob; a started server answers and prints its keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from klaviyo_sandbox import DEFAULT_API_KEY, REVISION
from klaviyo_sandbox.server import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_help_documents_every_knob():
    text = build_parser().format_help()
    for flag in ("--host", "--port", "--seed", "--accounts", "--profiles", "--events", "--api-key", "--rate-limits",
                 "--no-rate-limits", "--rate-limit-scale", "--faults", "--store-path"):
        assert flag in text
    assert DEFAULT_API_KEY in text


def test_cli_serves_and_prints_keys(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    store = tmp_path / "sandbox.duckdb"
    args = [sys.executable, "-c", "import sys; from klaviyo_sandbox.server import main; sys.exit(main(sys.argv[1:]))",
            "--port", "0", "--profiles", "40", "--events", "200", "--accounts", "2", "--no-rate-limits",
            "--store-path", str(store), "--api-key", "pk_cli_test_key"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        lines = []
        while len(lines) < 6:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines.append(line)
        output = "".join(lines)
        assert "pk_cli_test_key" in output and "maton" in output.lower()
        base_url = output.split(" at ", 1)[1].split()[0]
        response = requests.get(f"{base_url}/api/accounts", timeout=10,
                                headers={"Authorization": "Klaviyo-API-Key pk_cli_test_key", "revision": REVISION})
        assert response.status_code == 200 and len(response.json()["data"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert store.exists()


def test_bad_faults_argument_is_one_clear_line(tmp_path):
    from klaviyo_sandbox.server import main

    code = main(["--port", "0", "--profiles", "5", "--events", "5", "--faults", "/no/such/faults.json"])
    assert code == 2
