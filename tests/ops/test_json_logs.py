"""``--log-format json``: every line of stdout and stderr is one JSON object with one schema (dlt's
records, ours, progress and errors alike); text progress without a terminal stays short."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest

from klaviyo_source.cli_errors import EXIT_AUTH, EXIT_OK

SCHEMA = {"time", "level", "logger", "message"}
LEVELS = {"debug", "info", "warning", "error", "critical"}
SCRIPT = os.path.join(os.path.dirname(sys.executable), "klaviyo-dlt")


def _run(argv, env, cwd):
    return subprocess.run([SCRIPT, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _records(text: str, stream: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{stream} line {number} is not JSON: {line[:300]}") from None
        assert isinstance(record, dict), line
        missing = SCHEMA - set(record)
        assert not missing, f"{stream} line {number} lacks {missing}: {line[:300]}"
        assert record["level"] in LEVELS, line
        assert isinstance(record["message"], str) and record["message"], line
        datetime.fromisoformat(record["time"])  # an ISO 8601 timestamp with its offset
        assert datetime.fromisoformat(record["time"]).tzinfo is not None, line
        records.append(record)
    return records


def test_every_line_of_a_sync_is_one_json_schema(sandbox, tmp_path):
    # dlt logs at INFO here, so its own records must come through in the same schema
    env = {**os.environ, "KLAVIYO_API_KEY": sandbox.api_key, "RUNTIME__LOG_LEVEL": "INFO",
           "PYTHONWARNINGS": "always"}
    done = _run(["--log-format", "json", "sync", "metrics", "profiles", "--base-url", sandbox.base_url,
                 "--duckdb-path", str(tmp_path / "j.duckdb"), "--pipelines-dir", str(tmp_path / "p")], env, tmp_path)
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    out, err = _records(done.stdout, "stdout"), _records(done.stderr, "stderr")
    loggers = {r["logger"] for r in out + err}
    assert any(name == "dlt" or name.startswith("dlt.") for name in loggers), loggers
    assert any(name.startswith("klaviyo_dlt") for name in loggers), loggers
    progress = [r for r in err if r.get("event") == "progress"]
    assert {p["step"] for p in progress} >= {"extract", "normalize", "load"}
    assert all(p["message"] and len(p["message"]) <= 200 for p in progress)
    times = [datetime.fromisoformat(p["time"]) for p in progress]
    assert times == sorted(times)
    result = next(r for r in out if r.get("event") == "sync_result")
    assert result["ok"] and result["rows"]["profiles"] == len(sandbox.store.all(sandbox.accounts[0].id, "profile"))
    assert sandbox.api_key not in done.stdout + done.stderr


def test_a_failed_run_with_debug_stays_json(sandbox, tmp_path):
    env = {**os.environ, "KLAVIYO_API_KEY": "pk_wrong_0123456789abcdef0123456789"}
    done = _run(["--log-format", "json", "--debug", "sync", "metrics", "--base-url", sandbox.base_url,
                 "--duckdb-path", str(tmp_path / "j.duckdb"), "--pipelines-dir", str(tmp_path / "p")], env, tmp_path)
    assert done.returncode == EXIT_AUTH
    err = _records(done.stderr, "stderr")
    error = [r for r in err if r["level"] == "error"][-1]
    assert error["exit_code"] == EXIT_AUTH and "401" in error["message"]
    assert "Traceback" in error["traceback"]  # --debug: the traceback travels inside the record
    assert "pk_wrong_0123456789abcdef0123456789" not in done.stderr + done.stdout


def test_text_progress_without_a_terminal_is_short(sandbox, tmp_path):
    """Without a TTY progress lines are plain, short, and name the step, not dlt's load id."""
    env = {**os.environ, "KLAVIYO_API_KEY": sandbox.api_key}
    done = _run(["sync", "--base-url", sandbox.base_url, "--duckdb-path", str(tmp_path / "t.duckdb"),
                 "--pipelines-dir", str(tmp_path / "p")], env, tmp_path)
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    progress = [line for line in done.stderr.splitlines() if re.match(r"^(extract|normalize|load) ", line)]
    assert {line.split()[0] for line in progress} >= {"extract", "normalize", "load"}, done.stderr[:2000]
    too_long = [line for line in progress if len(line) > 160]
    assert not too_long, too_long[:2]
    assert not re.search(r"\d{10}\.\d+", done.stderr), "dlt's load id leaked into the progress labels"
    rows = max(int(m.group(1).replace(",", "")) for m in re.finditer(r"([\d,]+) rows", done.stderr))
    assert rows >= len(sandbox.store.all(sandbox.accounts[0].id, "profile"))


@pytest.mark.slow
def test_demo_under_log_format_json_prints_only_json_lines(tmp_path):
    done = _run(["--log-format", "json", "demo", "--profiles", "200", "--events", "2000"], dict(os.environ), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = _records(done.stdout, "stdout")
    _records(done.stderr, "stderr")
    tables = {r["message"].split(" in ")[0] for r in out if r.get("event") == "table"}
    assert "Rows per table" in tables and "Revenue per day" in tables
