"""Reverse-sync benchmark (not a test): push N profiles into a list with the sandbox's real rate
limits, and time the diff of M source rows.

    .venv/bin/python bench/reverse_sync_bench.py                       # 100,000 push, 1,000,000 diff
    .venv/bin/python bench/reverse_sync_bench.py --push 20000 --diff 200000

Prints the measured figures next to the least time the rate limits allow for the requests made.
The sandbox runs in its own process (as Klaviyo is a remote server).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PROVIDERS__ENABLE_AIRFLOW_SECRETS", "false")  # no Airflow Variable lookups

import dlt  # noqa: E402
import pyarrow as pa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from klaviyo_sandbox.control_client import ControlClient  # noqa: E402
from klaviyo_source.reverse_sync import ReverseSyncConfig, make_client, reverse_sync  # noqa: E402
from klaviyo_source.reverse_sync.diff import STATE_COLUMNS, plan  # noqa: E402

from sandbox_process import cpu_seconds, start_sandbox, stop_sandbox  # noqa: E402  (bench/ is on sys.path)


def audience(n: int, offset: int = 0) -> pa.Table:
    ids = pa.array(range(offset, offset + n), pa.int64())
    return pa.table({
        "email": pa.array([f"bench{i}@audience.test" for i in ids.to_pylist()]),
        "first_name": pa.array([f"First{i}" for i in ids.to_pylist()]),
        "city": pa.array(["Paris", "Lyon", "Nice", None] * (n // 4) + ["Paris"] * (n % 4)),
        "ltv": pa.array([float(i % 1000) for i in ids.to_pylist()]),
        "tier": pa.array(["gold" if i % 3 == 0 else "silver" for i in ids.to_pylist()]),
    })


CONFIG = {
    "name": "bench",
    "table": "audience",
    "identifiers": {"email": "email"},
    "attributes": {"first_name": "first_name", "location.city": "city"},
    "properties": {"ltv": "ltv", "tier": "tier"},
    "list": {"name": "Bench audience", "create": True, "mode": "add"},
}


def bench_push(n: int, workdir: Path, scale: float, batch_size: int) -> None:
    destination = dlt.destinations.duckdb(str(workdir / "bench.duckdb"))
    loader = dlt.pipeline("bench_loader", destination=destination, dataset_name="bench_data",
                          pipelines_dir=str(workdir / "loader"))
    loader.run(audience(n), table_name="audience", loader_file_format="parquet").raise_on_failed_jobs()
    # the sandbox runs in its own process, as Klaviyo is a remote server
    proc, base_url, api_key = start_sandbox(seed=3, profiles=10, events=0, rate_limits=True, scale=scale)
    try:
        client = make_client(api_key, base_url, rate_limit_scale=scale)
        started = time.monotonic()
        cpu_before, sandbox_before = cpu_seconds(), cpu_seconds(proc.pid)
        report = reverse_sync({**CONFIG, "batch_size": batch_size}, destination=destination, dataset_name="bench_data", client=client,
                              pipelines_dir=str(workdir / "rs"), on_batch=_progress(started))
        elapsed = time.monotonic() - started
        client_cpu, sandbox_cpu = cpu_seconds() - cpu_before, cpu_seconds(proc.pid)
        members = len(ControlClient(base_url, api_key).members("list", report.list_id))
        by_bucket = dict(client.stats.by_bucket)
        tiers = client.tiers()
        floor = sum(tiers[name].min_seconds(count, scale) for name, count in by_bucket.items())
        print(f"push {n} profiles into a list (rate limits on, scale {scale}): {elapsed:.1f}s "
              f"({n / elapsed:,.0f} profiles/s); {report.jobs} bulk jobs, {client.stats.requests} requests; "
              f"rate-limit floor for those requests {floor:.1f}s")
        print(f"  report: sent {report.sent}, added {report.added_to_list}, rejected {report.rejected}; "
              f"list members in the sandbox: {members}")
        if sandbox_cpu is not None:
            print(f"  CPU during the push: reverse sync {client_cpu:.1f} s (state commits included), "
                  f"sandbox {sandbox_cpu - sandbox_before:.1f} s (accepting and processing the jobs)")
        # pacing buckets are per path (e.g. GET and POST /api/lists share one)
        paths = sorted((name.split(" ", 1)[1], count) for name, count in by_bucket.items())
        print("  requests per path: " + ", ".join(f"{path} x{count}" for path, count in paths))
        started = time.monotonic()
        again = reverse_sync({**CONFIG, "batch_size": batch_size}, destination=destination, dataset_name="bench_data", client=client,
                             pipelines_dir=str(workdir / "rs"))
        print(f"  unchanged rerun: {time.monotonic() - started:.1f}s, sent {again.sent}")
    finally:
        stop_sandbox(proc)


def _progress(started: float):
    def show(number: int, report) -> None:
        print(f"  job {number + 1} done: {report.sent} sent after {time.monotonic() - started:.0f}s", flush=True)
    return show


def bench_diff(m: int) -> None:
    config = ReverseSyncConfig.from_dict({**CONFIG, "table": "audience"})
    rows = audience(m)
    started = time.monotonic()
    first = plan(config, rows, pa.table({k: pa.array([], t) for k, t in STATE_COLUMNS.items()}))
    first_seconds = time.monotonic() - started
    upserts = first.upserts
    state = pa.table({
        "sync_name": pa.array(["bench"] * upserts.num_rows), "identity_key": upserts.column("__identity"),
        "profile_hash": upserts.column("__hash"), "present_fields": upserts.column("__present"),
        "profile_id": pa.nulls(upserts.num_rows, pa.string()), "list_id": pa.nulls(upserts.num_rows, pa.string()),
        "list_name": pa.array(["Bench audience"] * upserts.num_rows), "in_list": pa.array([True] * upserts.num_rows),
        "consent_hash": pa.nulls(upserts.num_rows, pa.string()), "job_id": pa.nulls(upserts.num_rows, pa.string()),
        "synced_at": pa.nulls(upserts.num_rows, pa.timestamp("us", tz="UTC")),
    })
    changed = rows.set_column(1, "first_name", pa.array(
        [f"Changed{i}" if i % 100 == 0 else f"First{i}" for i in range(m)]))
    started = time.monotonic()
    second = plan(config, changed, state)
    second_seconds = time.monotonic() - started
    print(f"diff {m:,} rows: {first_seconds:.1f}s against empty state ({first.upserts.num_rows:,} to send); "
          f"{second_seconds:.1f}s against {state.num_rows:,} state rows ({second.upserts.num_rows:,} changed, "
          f"{second.unchanged:,} unchanged)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--push", type=int, default=100_000, help="profiles pushed into a list (0: skip)")
    parser.add_argument("--diff", type=int, default=1_000_000, help="source rows diffed (0: skip)")
    parser.add_argument("--batch-size", type=int, default=10_000,
                        help="profiles per bulk-import job (Klaviyo's maximum is 10,000)")
    parser.add_argument("--rate-limit-scale", type=float, default=1.0, help="sandbox rate-limit window scale")
    args = parser.parse_args(argv)
    if args.diff:
        bench_diff(args.diff)
    if args.push:
        with tempfile.TemporaryDirectory() as tmp:
            bench_push(args.push, Path(tmp), args.rate_limit_scale, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
