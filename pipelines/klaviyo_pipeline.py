"""Load Klaviyo into DuckDB (or any dlt destination): ``python pipelines/klaviyo_pipeline.py``.

Configuration is read the dlt way: ``[sources.klaviyo]`` in ``.dlt/config.toml`` and the API key
in ``.dlt/secrets.toml`` / ``SOURCES__KLAVIYO__API_KEY`` (or ``KLAVIYO_API_KEY``).
"""

from __future__ import annotations

import argparse
import sys

import dlt

from klaviyo_source import describe, klaviyo_source


def load_klaviyo(
    destination: str = "duckdb",
    resources: list[str] | None = None,
    pipeline_name: str = "klaviyo",
    dataset_name: str = "klaviyo_data",  # must differ from pipeline_name on DuckDB
    **source_options,
) -> dlt.common.pipeline.LoadInfo:
    """Run one incremental load of the selected Klaviyo resources."""
    pipeline = dlt.pipeline(pipeline_name=pipeline_name, destination=destination, dataset_name=dataset_name)
    source = klaviyo_source(resources=resources, **source_options)
    file_format = "parquet" if destination == "duckdb" else None
    return pipeline.run(source, loader_file_format=file_format)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destination", default="duckdb")
    parser.add_argument("--resources", default=None, help="comma-separated, e.g. profiles,events")
    parser.add_argument("--start-date", default=None)
    args = parser.parse_args(argv)
    resources = args.resources.split(",") if args.resources else None
    options = {"start_date": args.start_date} if args.start_date else {}
    try:
        info = load_klaviyo(args.destination, resources, **options)
    except Exception as exc:  # noqa: BLE001 - one line for the user, no traceback
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1
    print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
