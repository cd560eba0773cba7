"""The Airflow 3 DAGs, executed for real with ``dag.test()`` against the sandbox.

Airflow lives in ``.venv-airflow`` (``make install-airflow``; ``make test`` builds it): with Airflow
importable, dlt consults Airflow Variables on every config lookup, which would slow every other
test.  The sandbox runs in this process; the DAGs run in the Airflow venv and write an absolute
DuckDB path; the rows are then checked here against the sandbox's ground truth.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from klaviyo_source.accounts import slug

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = REPO / ".venv-airflow" / "bin"
IN_CI = os.environ.get("KLAVIYO_DLT_CI") == "1"


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    python = AIRFLOW_BIN / "python"
    if not (python.exists() and (AIRFLOW_BIN / "airflow").exists()):
        message = f"Airflow venv missing ({AIRFLOW_BIN}); run `make install-airflow`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return python


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _month(value: datetime) -> tuple[int, int]:
    return value.year, value.month


def _ids(db: Path, sql: str, *params) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute(sql, list(params)).fetchall()}


@pytest.mark.timeout(900)
def test_dags_run_for_a_data_interval(airflow_python, sandbox3, tmp_path):
    store, first = sandbox3.store, sandbox3.accounts[0]
    # a monthly schedule; the run for logical date L covers the previous calendar month [L - 1 month, L)
    profiles = store.all(first.id, "profile")
    this_month = _month(datetime.now(timezone.utc))
    busiest = Counter(_month(_ts(p.attributes["updated"])) for p in profiles
                      if _month(_ts(p.attributes["updated"])) != this_month).most_common(1)[0][0]
    start = datetime(busiest[0], busiest[1], 1, tzinfo=timezone.utc)
    end = datetime(busiest[0] + busiest[1] // 12, busiest[1] % 12 + 1, 1, tzinfo=timezone.utc)

    revoked = sandbox3.accounts[2]
    sandbox3.control.revoke_connection(revoked.maton_connection_id)
    audience = tmp_path / "audience.toml"
    audience.write_text(
        'name = "airflow_audience"\n'
        'query = "select email, first_name from profiles where email is not null"\n'
        '[identifiers]\nemail = "email"\n[attributes]\nfirst_name = "first_name"\n'
        '[list]\nname = "Airflow audience"\ncreate = true\nmode = "mirror"\n')
    db = tmp_path / "airflow.duckdb"
    results = tmp_path / "results.jsonl"
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(tmp_path / "airflow_home"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "pipelines"),
        # keys come from the environment here; skip dlt's per-lookup Airflow Variable queries (see docs)
        PROVIDERS__ENABLE_AIRFLOW_SECRETS="false",
        KLAVIYO_API_KEY=first.api_key,
        KLAVIYO_BASE_URL=sandbox3.base_url,
        KLAVIYO_DLT_DUCKDB_PATH=str(db),
        KLAVIYO_DLT_SCHEDULE="0 0 1 * *",
        KLAVIYO_DLT_RESOURCES="profiles,events",
        KLAVIYO_DLT_RETRIES="0",
        KLAVIYO_DLT_REVERSE_SYNC_CONFIG=str(audience),
        MATON_API_KEY=sandbox3.maton_api_key,
        MATON_CTRL_URL=sandbox3.base_url,
        KLAVIYO_DLT_GATEWAY_URL=sandbox3.base_url,
        KLAVIYO_DLT_TEST_RESULTS=str(results),
    )
    env.pop("DLT_DATA_DIR", None)
    migrate = subprocess.run([str(AIRFLOW_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    logical = end.isoformat()
    done = subprocess.run([str(airflow_python), str(Path(__file__).with_name("airflow_runner.py")),
                           f"klaviyo_dlt={logical}", f"klaviyo_dlt_all_connections={logical}"],
                          env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r["dag_id"]: r for r in map(json.loads, results.read_text().splitlines())}

    # --- one account, task per resource group, reverse sync downstream ------------------------
    single = runs["klaviyo_dlt"]
    assert single["state"] == "success", (single, done.stderr[-3000:])
    assert single["data_interval"] == [str(start).replace("T", " "), str(end).replace("T", " ")]
    assert single["tasks"] == {"klaviyo.klaviyo_profiles": "success", "klaviyo.klaviyo_events": "success",
                               "reverse_sync": "success"}
    in_window = lambda when: start <= _ts(when) < end  # noqa: E731
    expected_events = {e.id for e in store.all(first.id, "event") if in_window(e.attributes["datetime"])}
    expected_profiles = {p.id for p in profiles if in_window(p.attributes["updated"])}
    assert expected_profiles, "the busiest month has profile updates"
    assert _ids(db, "SELECT id FROM klaviyo_data.events") == expected_events
    assert _ids(db, "SELECT id FROM klaviyo_data.profiles") == expected_profiles
    # the reverse sync pushed the extracted audience into a Klaviyo list
    lists = {r.attributes["name"]: r.id for r in store.all(first.id, "list")}
    members = {pid for pid, _ in store.members(first.id, "list", lists["Airflow audience"])}
    with_email = _ids(db, "SELECT id FROM klaviyo_data.profiles WHERE email IS NOT NULL")
    assert members == with_email

    # --- every Maton connection, one mapped task each; the revoked one fails alone ------------
    fan_out = runs["klaviyo_dlt_all_connections"]
    assert fan_out["state"] == "failed"
    mapped = {k: v for k, v in fan_out["tasks"].items() if k.startswith("sync_connection[")}
    assert sorted(mapped.values()) == ["failed", "success", "success"]
    for account in sandbox3.accounts[:2]:
        dataset = f"klaviyo_data_{slug(account.maton_connection_id)}"
        window = {e.id for e in store.all(account.id, "event") if in_window(e.attributes["datetime"])}
        assert _ids(db, f"SELECT id FROM {dataset}.events") == window
    with duckdb.connect(str(db), read_only=True) as con:
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    assert f"klaviyo_data_{slug(revoked.maton_connection_id)}" not in schemas
