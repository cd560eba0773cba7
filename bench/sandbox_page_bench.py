"""Benchmark: server time of a deep 1000-event page (datetime filter + sort) on a large sandbox.

    .venv/bin/python bench/sandbox_page_bench.py                 # 200k profiles, 1M events
    .venv/bin/python bench/sandbox_page_bench.py --events 100000 --profiles 20000 --pages 50

Prints the generation time, then ms per page (p50/p95/max) measured around the WSGI
app in-process (pure server time: query + JSON assembly; wall clock and CPU time of the
serving thread, DuckDB limited to ``--threads`` = 1 core by default), and the same pages
fetched over real HTTP with requests (adds the socket and the client's parsing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402
from werkzeug.test import Client  # noqa: E402

from klaviyo_sandbox import Sandbox  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return (f"min {ordered[0]:.1f} ms  p50 {statistics.median(ordered):.1f} ms  p95 {p95:.1f} ms  "
            f"max {ordered[-1]:.1f} ms  (n={len(ordered)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=60, help="pages to time (walking deep into the data)")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="DuckDB threads while timing (default 1: one core)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    sandbox = Sandbox(seed=args.seed, profiles=args.profiles, events=args.events, rate_limits=False)
    print(f"generated {args.profiles:,} profiles + {args.events:,} events in {time.perf_counter() - started:.1f} s")
    sandbox.store.db.execute(f"SET threads = {args.threads}")
    with sandbox:
        headers = sandbox.headers()
        # start half-way through the data set: filter on a datetime around the median event
        median = sandbox.store.execute(
            "SELECT quantile_disc(datetime, 0.5) FROM events WHERE account = ?", [sandbox.account.id]).fetchone()[0]
        query = {"filter": f"greater-or-equal(datetime,{median.isoformat()}+00:00)", "sort": "datetime",
                 "page[size]": str(args.page_size)}
        client = Client(sandbox.app)
        path = "/api/events"
        # walk a few pages first so the timed pages are deep (cursor far from the start of the filter)
        response = client.get(path, query_string=query, headers=headers)
        body = response.get_json()
        for _ in range(5):
            body = client.get(urlsplit(body["links"]["next"]).path, query_string=urlsplit(body["links"]["next"]).query,
                              headers=headers).get_json()
        server_ms, http_ms, cpu_ms = [], [], []
        next_url = body["links"]["next"]
        session = requests.Session()
        session.headers.update(headers)
        for _ in range(args.pages):
            parts = urlsplit(next_url)
            t0, c0 = time.perf_counter(), time.thread_time()
            response = client.get(parts.path, query_string=parts.query, headers=headers)
            data = response.get_data()
            server_ms.append((time.perf_counter() - t0) * 1000)
            cpu_ms.append((time.thread_time() - c0) * 1000)
            assert response.status_code == 200, data[:300]
            t0 = time.perf_counter()
            over_http = session.get(f"{sandbox.base_url}{parts.path}?{parts.query}", timeout=30)
            over_http.content
            http_ms.append((time.perf_counter() - t0) * 1000)
            assert over_http.status_code == 200
            body = response.get_json()
            assert len(body["data"]) == args.page_size
            if not body["links"].get("next"):
                break
            next_url = body["links"]["next"]
        print(f"GET {path}?page[size]={args.page_size}&filter=greater-or-equal(datetime,..)&sort=datetime, deep pages")
        print(f"  server (in-process WSGI), wall: {percentiles(server_ms)}")
        print(f"  server (in-process WSGI), CPU of the serving thread: {percentiles(cpu_ms)}")
        print(f"  over HTTP (requests):     {percentiles(http_ms)}")
        print(f"  page bytes: {len(data):,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
