"""Reverse sync: push an audience built in SQL in the warehouse into Klaviyo (issue #5).

    python pipelines/reverse_sync_pipeline.py audience.toml                # DuckDB file klaviyo.duckdb
    python pipelines/reverse_sync_pipeline.py audience.toml --dry-run
    KLAVIYO_DLT_DESTINATION=postgresql://user:pw@host/db python pipelines/reverse_sync_pipeline.py audience.toml

Environment: ``KLAVIYO_API_KEY`` (or dlt secret ``sources.klaviyo.api_key``), ``KLAVIYO_BASE_URL``
(default https://a.klaviyo.com), ``KLAVIYO_DLT_DESTINATION`` (a ``.duckdb`` path or a PostgreSQL
DSN; default ``klaviyo.duckdb``), ``KLAVIYO_DLT_DATASET`` (default ``klaviyo_data``).
Schedule it after the extraction (cron, Airflow: see ``pipelines/klaviyo_airflow_dag.py``);
each run sends only what changed since the last accepted one.
"""

from __future__ import annotations

import os
import sys

from klaviyo_source.reverse_sync import ReverseSyncError, reverse_sync


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        report = reverse_sync(
            argv[0],
            destination=os.environ.get("KLAVIYO_DLT_DESTINATION", "klaviyo.duckdb"),
            dataset_name=os.environ.get("KLAVIYO_DLT_DATASET", "klaviyo_data"),
            base_url=os.environ.get("KLAVIYO_BASE_URL", "https://a.klaviyo.com"),
            dry_run="--dry-run" in argv[1:],
        )
    except (ReverseSyncError, ValueError) as exc:
        print(f"reverse sync failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
