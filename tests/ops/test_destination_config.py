"""The CLI honours dlt's own configuration: ``DESTINATION__DUCKDB__CREDENTIALS`` and ``.dlt/secrets.toml``
choose the DuckDB file, ``.dlt/config.toml`` the destination and dataset; command-line flags win."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pytest

from klaviyo_source.cli_errors import EXIT_OK, EXIT_USAGE

SCRIPT = os.path.join(os.path.dirname(sys.executable), "klaviyo-dlt")


def _tables(path, dataset="klaviyo_data") -> set[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [dataset]).fetchall()}


def _run(argv, cwd, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DESTINATION__", "DATASET_NAME"))}
    environment.update(env)
    return subprocess.run([SCRIPT, *argv], env=environment, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_duckdb_file_from_the_environment(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "warehouse" / "configured.duckdb"
    target.parent.mkdir()
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(target))
    run = cli("sync", "metrics", "--base-url", sandbox.base_url, "--progress", "off")
    assert run.code == EXIT_OK, run.err
    assert "metrics" in _tables(target)
    assert not (tmp_path / "klaviyo.duckdb").exists()
    assert str(target) in run.out + run.err  # the summary names the file it wrote

    status = cli("status")  # status reads the same configured file
    assert status.code == EXIT_OK and "metrics" in status.out, status.out + status.err


def test_duckdb_path_flag_wins_over_the_configuration(cli, sandbox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KLAVIYO_API_KEY", sandbox.api_key)
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "configured.duckdb"))
    run = cli("sync", "metrics", "--base-url", sandbox.base_url, "--progress", "off",
              "--duckdb-path", str(tmp_path / "flag.duckdb"))
    assert run.code == EXIT_OK, run.err
    assert "metrics" in _tables(tmp_path / "flag.duckdb")
    assert not (tmp_path / "configured.duckdb").exists()


def test_dot_dlt_folder_chooses_file_and_dataset(sandbox, tmp_path):
    (tmp_path / ".dlt").mkdir()
    (tmp_path / ".dlt" / "secrets.toml").write_text('[destination.duckdb]\ncredentials = "from_secrets.duckdb"\n')
    (tmp_path / ".dlt" / "config.toml").write_text('dataset_name = "from_config"\n')
    done = _run(["sync", "metrics", "--base-url", sandbox.base_url, "--progress", "off",
                 "--pipelines-dir", str(tmp_path / "p")], tmp_path, KLAVIYO_API_KEY=sandbox.api_key)
    assert done.returncode == EXIT_OK, done.stderr
    assert "metrics" in _tables(tmp_path / "from_secrets.duckdb", "from_config")
    assert not (tmp_path / "klaviyo.duckdb").exists()


def test_duckdb_credentials_in_config_toml_is_one_line_naming_secrets_toml(tmp_path):
    (tmp_path / ".dlt").mkdir()
    (tmp_path / ".dlt" / "config.toml").write_text('[destination.duckdb]\ncredentials = "x.duckdb"\n')
    done = _run(["sync", "metrics", "--progress", "off"], tmp_path, KLAVIYO_API_KEY="pk_unused_0123456789")
    assert done.returncode == EXIT_USAGE
    (line,) = done.stderr.strip().splitlines()
    assert "secrets.toml" in line and "destination.duckdb.credentials" in line, line


@pytest.mark.postgres
def test_destination_from_config_toml(sandbox, tmp_path, postgres_dsn, unique_name):
    import psycopg2

    dataset = f"cfg_{unique_name}"
    (tmp_path / ".dlt").mkdir()
    (tmp_path / ".dlt" / "config.toml").write_text(f'destination_type = "postgres"\ndataset_name = "{dataset}"\n')
    (tmp_path / ".dlt" / "secrets.toml").write_text(f'[destination.postgres]\ncredentials = "{postgres_dsn}"\n')
    try:
        done = _run(["sync", "metrics", "--base-url", sandbox.base_url, "--progress", "off",
                     "--pipelines-dir", str(tmp_path / "p"), "--pipeline-name", f"p_{unique_name}"],
                    tmp_path, KLAVIYO_API_KEY=sandbox.api_key)
        assert done.returncode == EXIT_OK, done.stderr
        with psycopg2.connect(postgres_dsn) as con, con.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {dataset}.metrics")
            assert cur.fetchone()[0] == len(sandbox.store.all(sandbox.accounts[0].id, "metric"))
        assert not (tmp_path / "klaviyo.duckdb").exists()
    finally:
        with psycopg2.connect(postgres_dsn) as con, con.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {dataset} CASCADE")
            cur.execute(f"DROP SCHEMA IF EXISTS {dataset}_staging CASCADE")
