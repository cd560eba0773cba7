"""Loaded data files leave the pipeline's working folder (the data lives in the warehouse), unless the
user keeps them with dlt's own setting."""

from __future__ import annotations

from pathlib import Path

import dlt

from klaviyo_source.loaded_files import drop_loaded_files


def _data_files(pipeline) -> list[Path]:
    loaded = Path(pipeline.working_dir) / "load" / "loaded"
    return [p for p in loaded.rglob("*") if p.is_file() and p.parent.name == "completed_jobs"]


def _run(tmp_path, name: str):
    pipeline = drop_loaded_files(dlt.pipeline(name, destination=dlt.destinations.duckdb(str(tmp_path / f"{name}.duckdb")),
                                              dataset_name=f"{name}_data", pipelines_dir=str(tmp_path / "pipelines")))
    pipeline.run([{"email": "kept.nowhere@example.org"}], table_name="people")
    with pipeline.sql_client() as client:
        assert client.execute_sql("SELECT email FROM people") == [("kept.nowhere@example.org",)]
    return pipeline


def test_loaded_files_are_deleted(tmp_path, unique_name):
    assert _data_files(_run(tmp_path, f"lf_{unique_name}")) == []


def test_the_users_setting_wins(tmp_path, unique_name, monkeypatch):
    monkeypatch.setenv("LOAD__DELETE_COMPLETED_JOBS", "false")
    assert _data_files(_run(tmp_path, f"lf_kept_{unique_name}"))
