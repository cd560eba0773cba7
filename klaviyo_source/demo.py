"""``klaviyo-dlt demo`` (``make demo``): the Quick start end to end on one machine.

1. start the local Klaviyo sandbox with a generated account;
2. sync profiles, events, metrics and lists into a local DuckDB file (absolute path printed);
3. print rows per table and one analyst query: revenue per day from Placed Order events, last 14 days;
4. build an audience in SQL (top customers by revenue, last 90 days), reverse-sync it into a
   sandbox list, and read the list's members back through the API.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from klaviyo_source.cli_output import Output
from klaviyo_source.pipeline_runner import SyncOptions, SyncResult, duckdb_file_path, make_pipeline, run_sync
from klaviyo_source.progress import SyncProgress

DEMO_RESOURCES = ("profiles", "events", "metrics", "lists")
DEMO_DATASET = "klaviyo"
DEMO_PIPELINE = "klaviyo_demo"
DEMO_LIST = "Top customers (quick start)"

REVENUE_PER_DAY_SQL = """
SELECT CAST(e.datetime AT TIME ZONE 'UTC' AS DATE) AS day,
       COUNT(*)                                   AS orders,
       ROUND(SUM(e.value), 2)                     AS revenue
FROM events AS e
JOIN metrics AS m ON m.id = e.metric_id
WHERE m.name = 'Placed Order'
  AND CAST(e.datetime AT TIME ZONE 'UTC' AS DATE) >= CAST(now() AT TIME ZONE 'UTC' AS DATE) - 13
GROUP BY 1
ORDER BY 1
""".strip()

TOP_CUSTOMERS_SQL = """
SELECT p.email, p.first_name, p.last_name, ROUND(SUM(e.value), 2) AS revenue_90d
FROM profiles AS p
JOIN events AS e ON e.profile_id = p.id
JOIN metrics AS m ON m.id = e.metric_id
WHERE m.name = 'Placed Order'
  AND e.datetime >= now() - INTERVAL 90 DAY
  AND p.email IS NOT NULL
GROUP BY p.email, p.first_name, p.last_name
ORDER BY revenue_90d DESC, p.email
LIMIT {limit}
""".strip()


@dataclass
class DemoResult:
    duckdb_path: str
    dataset_name: str
    sync: SyncResult
    table_rows: dict[str, int] = field(default_factory=dict)
    revenue_per_day: list[tuple[Any, ...]] = field(default_factory=list)
    list_id: str | None = None
    list_members: list[dict[str, Any]] = field(default_factory=list)
    reverse_sync_report: Any = None
    seconds: float = 0.0


def run_demo(profiles: int = 2000, events: int = 50000, seed: int = 7, duckdb_path: str = "klaviyo_demo.duckdb",
             reverse_sync: bool = True, audience_size: int = 25, out: Output | None = None,
             sandbox: Any = None, progress: str = "text") -> DemoResult:
    """Run the Quick start; pass ``sandbox`` to use a running one (tests), else one is started."""
    out = out or Output("text")
    started = time.monotonic()
    if sandbox is None:
        from klaviyo_sandbox import Sandbox

        out.line(f"Starting the Klaviyo sandbox: 1 account, {profiles:,} profiles, {events:,} events (seed {seed}) ...")
        with Sandbox(seed=seed, accounts=1, profiles=profiles, events=events, rate_limits=False) as sb:
            return _run(sb, duckdb_path, reverse_sync, audience_size, out, started, progress)
    return _run(sandbox, duckdb_path, reverse_sync, audience_size, out, started, progress)


def _run(sb: Any, duckdb_path: str, reverse_sync: bool, audience_size: int, out: Output, started: float,
         progress: str) -> DemoResult:
    path = duckdb_file_path(duckdb_path)
    out.line(f"Sandbox at {sb.base_url}")
    out.line(f"Syncing {', '.join(DEMO_RESOURCES)} into DuckDB {path} (dataset '{DEMO_DATASET}') ...")
    workdir = tempfile.mkdtemp(prefix="klaviyo_demo_")  # fresh dlt working folder: the demo always starts over
    try:
        opts = SyncOptions(resources=list(DEMO_RESOURCES), destination="duckdb", duckdb_path=path,
                           dataset_name=DEMO_DATASET, pipeline_name=DEMO_PIPELINE, api_key=sb.api_key,
                           base_url=sb.base_url, pipelines_dir=workdir, refresh="drop_sources",
                           source_options={"pacing": False})  # the sandbox runs without rate limits here
        result = run_sync(opts, progress=SyncProgress(mode=progress, period=5.0))
        demo = DemoResult(duckdb_path=path, dataset_name=DEMO_DATASET, sync=result)
        dataset = make_pipeline(opts).dataset()
        demo.table_rows = {name: count for name, count in dataset.row_counts().fetchall()}
        out.table(f"Rows per table in {path} (dataset {DEMO_DATASET}), synced in {result.seconds:.1f}s",
                  ["table", "rows"], sorted(demo.table_rows.items()))

        demo.revenue_per_day = [tuple(r) for r in dataset.query(REVENUE_PER_DAY_SQL).fetchall()]
        out.line("\nAnalyst query — revenue per day from Placed Order events, last 14 days:\n" + REVENUE_PER_DAY_SQL)
        out.table("Revenue per day", ["day", "orders", "revenue"], demo.revenue_per_day)

        if reverse_sync:
            _reverse_sync(sb, opts, demo, audience_size, workdir, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    demo.seconds = time.monotonic() - started
    out.line(f"\nDone in {demo.seconds:.0f}s. Explore the data:  duckdb {path}   "
             f"(e.g. SELECT * FROM {DEMO_DATASET}.profiles LIMIT 5)")
    return demo


def _reverse_sync(sb: Any, opts: SyncOptions, demo: DemoResult, audience_size: int, workdir: str,
                  out: Output) -> None:
    from klaviyo_source.reverse_sync.demo import list_members
    from klaviyo_source.reverse_sync.run import reverse_sync
    from klaviyo_source.reverse_sync.writer import make_client

    query = TOP_CUSTOMERS_SQL.format(limit=int(audience_size))
    out.line(f"\nReverse sync — audience built in SQL, pushed into the Klaviyo list '{DEMO_LIST}':\n{query}")
    config = {
        "name": "quick_start_top_customers",
        "query": query,
        "identifiers": {"email": "email"},
        "attributes": {"first_name": "first_name", "last_name": "last_name"},
        "properties": {"revenue_90d": "revenue_90d"},
        "list": {"name": DEMO_LIST, "create": True, "mode": "mirror"},
    }
    client = make_client(sb.api_key, sb.base_url)
    report = reverse_sync(config, destination=make_pipeline(opts).destination, dataset_name=opts.dataset_name,
                          client=client, pipelines_dir=workdir)
    demo.reverse_sync_report = report
    demo.list_id = report.list_id
    demo.list_members = list_members(client, report.list_id) if report.list_id else []
    out.line(report.summary())
    out.table(f"Members of list '{DEMO_LIST}' ({report.list_id}) read back from the API: {len(demo.list_members)}",
              ["profile id", "email", "first name", "last name"],
              [[m.get("id"), m.get("email"), m.get("first_name"), m.get("last_name")] for m in demo.list_members[:10]]
              + ([["...", f"{len(demo.list_members) - 10} more", None, None]] if len(demo.list_members) > 10 else []))
