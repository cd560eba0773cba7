"""pipelines/klaviyo_pipeline.py runs the dlt way: config from env, DuckDB next to the caller."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_script_loads_into_duckdb(sandbox, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "SOURCES__KLAVIYO__API_KEY": sandbox.api_key,
        "SOURCES__KLAVIYO__BASE_URL": sandbox.base_url,
    }
    done = subprocess.run([sys.executable, str(REPO / "pipelines" / "klaviyo_pipeline.py"), "--resources", "profiles,metrics"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sandbox.api_key not in done.stdout + done.stderr
    with duckdb.connect(str(tmp_path / "klaviyo.duckdb")) as db:
        assert db.execute("SELECT count(*) FROM klaviyo_data.profiles").fetchone()[0] == len(sandbox.control.records("profile"))

