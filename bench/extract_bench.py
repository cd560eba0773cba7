"""Extraction benchmark: the Klaviyo source against a sandbox served by a SEPARATE process.

    .venv/bin/python bench/extract_bench.py --mode cpu    --profiles 400000 --events 1000000
    .venv/bin/python bench/extract_bench.py --mode limits --profiles 200000 --events 1000000

``cpu``: sandbox rate limits off; each resource is loaded on its own (fresh pipeline, DuckDB,
parquet loader) so the CPU seconds of this process (user+sys, all threads: HTTP, parsing,
arrow, dlt normalize and the DuckDB load) belong to that resource, from first request to rows
in DuckDB.  ``limits``: Klaviyo's real limits on; profiles and events load in ONE run (in
parallel) and the wall time is compared with the least time the limits allow
(``RateTier.min_seconds`` of the requests each endpoint needed; the slowest endpoint bounds).

Prints a table (resource, rows, requests, 429s, wall s, CPU s, rows/s, limit-bound s) and
writes the JSON to ``bench/results/``.  The sandbox store is cached in ``$TMPDIR/klaviyo-dlt-bench`` (``KLAVIYO_BENCH_CACHE``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dlt  # noqa: E402

from klaviyo_source import klaviyo_source  # noqa: E402
from klaviyo_source.pacing import PACERS  # noqa: E402

from sandbox_process import cpu_seconds, start_sandbox, stop_sandbox  # noqa: E402  (bench/ is on sys.path)


def sandbox_for(args: argparse.Namespace, rate_limits: bool) -> tuple[subprocess.Popen, str, str]:
    """The sandbox server in its own process, its store cached in ``$TMPDIR/klaviyo-dlt-bench``."""
    cache = Path(os.environ.get("KLAVIYO_BENCH_CACHE", Path(tempfile.gettempdir()) / "klaviyo-dlt-bench"))
    cache.mkdir(parents=True, exist_ok=True)
    store = cache / f"sandbox-s{args.seed}-p{args.profiles}-e{args.events}.duckdb"
    return start_sandbox(seed=args.seed, profiles=args.profiles, events=args.events, rate_limits=rate_limits,
                         scale=args.rate_limit_scale, store_path=store)


def run(base_url: str, api_key: str, resources: list[str], workdir: Path, scale: float, pacing: bool) -> dict:
    PACERS.clear()
    pipeline = dlt.pipeline(pipeline_name="bench_" + "_".join(resources), pipelines_dir=str(workdir / "pipelines"),
                            destination=dlt.destinations.duckdb(str(workdir / "bench.duckdb")), dataset_name="bench_data")
    # cpu mode: the sandbox's limits are off, so the client does not pace either (pacing waits cost
    # wall time, not CPU); limits mode paces to the sandbox's (scaled) windows
    source = klaviyo_source(api_key=api_key, base_url=base_url, resources=resources, rate_limit_scale=scale,
                            pacing=pacing)
    client = next(iter(source.resources.values())).reader.client
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    pipeline.run(source, loader_file_format="parquet")
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    with pipeline.sql_client() as sql:
        rows = {r: sql.execute_sql(f"SELECT count(*) FROM {r}")[0][0] for r in resources}
    tiers = client.tiers()
    by_bucket = dict(client.stats.by_bucket)
    bound = {name: tiers[name].min_seconds(count, scale) for name, count in by_bucket.items()}
    return {"resources": resources, "rows": rows, "requests": by_bucket, "status_429": client.stats.status_429,
            "wall_s": wall, "cpu_s": cpu, "limit_bound_s": bound}


def table(results: list[dict]) -> str:
    header = f"{'resource':<18}{'rows':>10}{'requests':>10}{'429s':>6}{'wall s':>9}{'CPU s':>8}{'rows/s':>10}{'limit-bound s':>15}"
    lines = [header, "-" * len(header)]
    for r in results:
        rows = sum(r["rows"].values())
        requests = sum(r["requests"].values())
        bound = max(r["limit_bound_s"].values() or [0.0])
        lines.append(f"{'+'.join(r['resources']):<18}{rows:>10}{requests:>10}{r['status_429']:>6}{r['wall_s']:>9.1f}"
                     f"{r['cpu_s']:>8.1f}{rows / r['wall_s']:>10.0f}{bound:>15.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["cpu", "limits"], default="cpu")
    parser.add_argument("--profiles", type=int, default=400_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate-limit-scale", type=float, default=1.0, help="limits mode: sandbox window scale")
    parser.add_argument("--resources", default="profiles,events", help="cpu mode: resources to time, in order")
    args = parser.parse_args(argv)

    proc, base_url, api_key = sandbox_for(args, rate_limits=args.mode == "limits")
    workdir = Path(tempfile.mkdtemp(prefix="klaviyo-bench-"))
    results = []
    try:
        scale = args.rate_limit_scale if args.mode == "limits" else 1.0
        chosen = [r.strip() for r in args.resources.split(",") if r.strip()]
        groups = [[r] for r in chosen] if args.mode == "cpu" else [chosen]
        for group in groups:
            results.append(run(base_url, api_key, group, workdir / "_".join(group), scale, args.mode == "limits"))
    finally:
        stop_sandbox(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"mode={args.mode} profiles={args.profiles} events={args.events} cpus={os.cpu_count()}")
    print(table(results))
    for r in results:
        if args.mode == "cpu":
            rows = sum(r["rows"].values())
            unit = 1_000_000 if r["resources"] == ["events"] else 400_000
            r["cpu_s_per_unit"] = r["cpu_s"] * unit / max(rows, 1)
            print(f"{r['resources'][0]}: {r['cpu_s_per_unit']:.1f} CPU s per {unit:,} rows")
        else:
            bound = max(r["limit_bound_s"].values())
            r["over_limit_bound"] = r["wall_s"] / bound - 1 if bound else None
            print(f"wall {r['wall_s']:.1f} s vs limit-bound {bound:.1f} s: {100 * (r['wall_s'] / bound - 1):+.1f}%")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"extract_{args.mode}_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
