"""Clean exits under load: `klaviyo-dlt demo` and `klaviyo-dlt sync` run N times in a row while busy
loops keep every core occupied; every exit code is recorded (134 = the abort at interpreter exit).

    .venv/bin/python bench/clean_exit_bench.py                   # 30 demos + 30 syncs, one busy loop per core
    .venv/bin/python bench/clean_exit_bench.py --runs 10 --busy 4 --profiles 500 --events 5000

The demo starts its own sandbox in each process (as `make demo` does); the syncs read a sandbox
served by this process into a fresh DuckDB file and pipeline folder each time.  The busy loops are
child processes started here and stopped by PID at the end.  Prints a table and writes the JSON
to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from klaviyo_sandbox import Sandbox  # noqa: E402

CLI = [sys.executable, "-m", "klaviyo_source.cli"]


def busy_loops(count: int) -> list[subprocess.Popen]:
    """``count`` processes spinning on one core each (the parallel CPU load)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def run(argv: list[str], workdir: Path, env: dict[str, str]) -> dict:
    started = time.monotonic()
    done = subprocess.run(CLI + argv, cwd=workdir, env=env, capture_output=True, text=True)
    tail = (done.stderr.strip().splitlines() or [""])[-1]
    return {"exit": done.returncode, "seconds": round(time.monotonic() - started, 1),
            "last_stderr_line": tail[-200:] if done.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (default 30)")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes (default: cores)")
    parser.add_argument("--profiles", type=int, default=2000, help="demo sandbox size (default: make demo's)")
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--only", choices=("demo", "sync"), help="run one of the two commands")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLAVIYO_", "SOURCES__", "RUNTIME__"))}
    env["PROVIDERS__ENABLE_AIRFLOW_SECRETS"] = "false"
    results: dict[str, list[dict]] = {"demo": [], "sync": []}
    load = busy_loops(args.busy)
    try:
        with tempfile.TemporaryDirectory(prefix="klaviyo_exit_bench_") as tmp, \
                Sandbox(seed=7, accounts=1, profiles=args.profiles, events=args.events, rate_limits=False) as sb:
            for i in range(args.runs):
                if args.only != "sync":
                    work = Path(tmp) / f"demo{i}"
                    work.mkdir()
                    results["demo"].append(run(["demo", "--profiles", str(args.profiles), "--events",
                                                str(args.events), "--duckdb-path", "demo.duckdb"], work, env))
                if args.only != "demo":
                    work = Path(tmp) / f"sync{i}"
                    work.mkdir()
                    results["sync"].append(run(
                        ["sync", "profiles", "events", "metrics", "lists", "--base-url", sb.base_url,
                         "--duckdb-path", "k.duckdb", "--pipelines-dir", "pipelines", "--progress", "off"],
                        work, {**env, "KLAVIYO_API_KEY": sb.api_key}))
                done = {name: rows[-1]["exit"] for name, rows in results.items() if rows}
                print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} exit {v}" for k, v in done.items()), flush=True)
    finally:
        stop(load)

    print(f"\n{'command':8} {'runs':>5} {'exit 0':>7} {'exit 134':>9} {'other':>6} {'median s':>9}  (busy loops: {args.busy})")
    summary = {}
    for name, rows in results.items():
        if not rows:
            continue
        codes = Counter(r["exit"] for r in rows)
        seconds = sorted(r["seconds"] for r in rows)[len(rows) // 2]
        other = len(rows) - codes[0] - codes[134]
        summary[name] = {"runs": len(rows), "exit_codes": dict(codes), "median_seconds": seconds}
        print(f"{name:8} {len(rows):>5} {codes[0]:>7} {codes[134]:>9} {other:>6} {seconds:>9}")
        for r in rows:
            if r["exit"]:
                print(f"  {name} exit {r['exit']}: {r['last_stderr_line']}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"clean_exit_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "summary": summary, "runs": results}, indent=2))
    print(f"\nwrote {path}")
    return 0 if all(r["exit"] == 0 for rows in results.values() for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
