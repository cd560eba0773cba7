"""``klaviyo-dlt``: sync Klaviyo into a warehouse, reverse-sync audiences back, run the local
sandbox or the demo, manage Maton connections, and show pipeline status.

Every failure prints one line naming what to fix (a traceback only with ``--debug``) and exits
with a documented code (see ``klaviyo_source.cli_errors``).  Keys are read from the environment
or ``.dlt/secrets.toml`` — never from the command line — and never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Sequence

from klaviyo_source.cli_errors import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    UsageError,
    classify,
)
from klaviyo_source.cli_output import Output, error_line, setup_logging

PROG = "klaviyo-dlt"
DELEGATED = ("sandbox",)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--log-format", choices=("text", "json"), default="text" if top else default,
                        help="text (default) or json lines for schedulers")
    parser.add_argument("--debug", action="store_true", default=False if top else default,
                        help="show tracebacks on errors")


def _add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--destination", default=None,
                        help="duckdb, postgres, or any dlt destination configured in .dlt / env "
                             "(default: destination_type from .dlt/config.toml, else duckdb)")
    parser.add_argument("--duckdb-path", help="DuckDB file (default: DESTINATION__DUCKDB__CREDENTIALS or "
                                              "[destination.duckdb] credentials in .dlt/secrets.toml, else "
                                              "./klaviyo.duckdb; printed as an absolute path)")
    parser.add_argument("--dataset-name", default=None,
                        help="dataset (schema) to load into (default: dataset_name from .dlt/config.toml, "
                             "else klaviyo_data)")
    parser.add_argument("--pipeline-name", default=None, help="dlt pipeline name, keys the incremental state (default klaviyo)")
    parser.add_argument("--pipelines-dir", help="where dlt keeps pipeline working folders (default ~/.dlt/pipelines)")


def version_line() -> str:
    """``klaviyo-dlt 0.1.0 (dlt 1.31.0)``: this package's and dlt's installed versions."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("klaviyo-dlt")
    except PackageNotFoundError:  # running from a source tree that was never installed
        ours = "unknown"
    try:
        theirs = version("dlt")
    except PackageNotFoundError:
        theirs = "not installed"
    return f"{PROG} {ours} (dlt {theirs})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Klaviyo ELT with dlt: sync, reverse sync, sandbox, demo.",
                     epilog=EXIT_CODES_HELP)
    _add_common(parser, top=True)
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print the versions of klaviyo-dlt and dlt and exit")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    sync = sub.add_parser("sync", help="extract Klaviyo into a destination", epilog=EXIT_CODES_HELP)
    _add_common(sync, top=False)
    sync.add_argument("resources", nargs="*", help="resources to sync (default: all); see --list-resources")
    sync.add_argument("--list-resources", action="store_true", help="print the available resources and exit")
    sync.add_argument("--start-date", help="extract from this date (YYYY-MM-DD or ISO 8601, UTC)")
    sync.add_argument("--end-date", help="extract up to this date (exclusive)")
    _add_pipeline_args(sync)
    sync.add_argument("--full-refresh", action="append", default=[], metavar="RESOURCE",
                      help="drop this resource's tables and state and reload it (repeatable)")
    sync.add_argument("--base-url", help="Klaviyo API base URL (default https://a.klaviyo.com; Maton gateway for --auth maton)")
    sync.add_argument("--auth", choices=("klaviyo-api-key", "bearer", "maton"),
                      help="klaviyo-api-key (KLAVIYO_API_KEY), bearer (OAuth token in KLAVIYO_API_KEY) or maton (MATON_API_KEY)")
    sync.add_argument("--maton-connection", help="Maton connection id (Maton-Connection header)")
    sync.add_argument("--revision", help="Klaviyo API revision header (default 2026-07-15)")
    sync.add_argument("--all-connections", action="store_true",
                      help="sync every Maton klaviyo connection, each into <dataset>_<connection>")
    sync.add_argument("--all-accounts", action="store_true",
                      help="sync every private key in sources.klaviyo.accounts, each into <dataset>_<name>")
    sync.add_argument("--ctrl-url", help="Maton connection API (default https://ctrl.maton.ai or MATON_CTRL_URL)")
    sync.add_argument("--parallel", type=int, default=4, help="accounts synced at once (default 4)")
    sync.add_argument("--progress", choices=("auto", "rich", "text", "json", "off"), default="auto",
                      help="progress display on stderr (auto: live table on a terminal)")

    status = sub.add_parser("status", help="per resource: watermark, rows of the last run, when, failures")
    _add_common(status, top=False)
    _add_pipeline_args(status)

    demo = sub.add_parser("demo", help="sandbox → DuckDB → SQL → reverse sync, in under a minute")
    _add_common(demo, top=False)
    demo.add_argument("--profiles", type=int, default=2000, help="profiles the sandbox generates (default 2000)")
    demo.add_argument("--events", type=int, default=50000, help="events the sandbox generates (default 50000)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the generated data (default 7)")
    demo.add_argument("--duckdb-path", default="klaviyo_demo.duckdb",
                      help="DuckDB file the demo writes, replaced on every run (default ./klaviyo_demo.duckdb)")
    demo.add_argument("--no-reverse-sync", action="store_true", help="stop after the analyst query")

    conns = sub.add_parser("connections", help="manage Maton connections (MATON_API_KEY)")
    _add_common(conns, top=False)
    conns.add_argument("--ctrl-url", help="Maton connection API (default https://ctrl.maton.ai or MATON_CTRL_URL)")
    csub = conns.add_subparsers(dest="action", metavar="action", parser_class=_Parser, required=True)
    c_list = csub.add_parser("list", help="list connections")
    c_list.add_argument("--app", default="klaviyo", help="Maton app of the connections (default klaviyo)")
    c_list.add_argument("--status", choices=("ACTIVE", "PENDING", "FAILED"),
                        help="only connections in this state (default: all)")
    c_create = csub.add_parser("create", help="create a connection; prints the URL to open for OAuth")
    c_create.add_argument("--app", default="klaviyo", help="Maton app to connect (default klaviyo)")
    csub.add_parser("get", help="show one connection").add_argument(
        "connection_id", help="the connection's id (see connections list)")
    csub.add_parser("delete", help="delete a connection").add_argument(
        "connection_id", help="the connection's id (see connections list)")

    rsync = sub.add_parser("reverse-sync", help="push a warehouse audience (table or SQL) into Klaviyo profiles/a list",
                           epilog=EXIT_CODES_HELP)
    _add_common(rsync, top=False)
    _add_pipeline_args(rsync)
    rsync.add_argument("--config", dest="config_path", help="reverse-sync config file (TOML/YAML); flags override it")
    rsync.add_argument("--name", help="key of this sync in its state table (default: the list name)")
    what = rsync.add_mutually_exclusive_group()
    what.add_argument("--table", help="audience table in the dataset")
    what.add_argument("--query", help="audience SQL over the dataset")
    rsync.add_argument("--email", help="column holding the email identifier")
    rsync.add_argument("--phone-number", help="column holding the phone number (E.164)")
    rsync.add_argument("--external-id", help="column holding the external id")
    rsync.add_argument("--attribute", dest="attributes", action="append", default=[], metavar="FIELD=COLUMN",
                       help="profile attribute from a column, e.g. first_name=fname (repeatable)")
    rsync.add_argument("--property", dest="properties", action="append", default=[], metavar="NAME=COLUMN",
                       help="custom profile property from a column (repeatable)")
    rsync.add_argument("--properties-json", help="column with a JSON object of custom properties")
    rsync.add_argument("--list-id", help="Klaviyo list to fill")
    rsync.add_argument("--list-name", help="Klaviyo list to fill, by name")
    rsync.add_argument("--create-list", action="store_true", default=None, help="create the list if missing")
    rsync.add_argument("--list-mode", choices=("add", "mirror"), help="add members only, or mirror the audience")
    rsync.add_argument("--consent", action="append", default=[], metavar="CHANNEL=COLUMN[@AT]",
                       help="explicit consent, e.g. email=opted_in@opted_in_at (repeatable)")
    rsync.add_argument("--max-rejected-fraction", type=float, metavar="FRACTION",
                       help="fail the run when more than this fraction (0..1) of the rows is rejected, "
                            "before sending anything if the local checks already exceed it "
                            "(default: never fail on rejected rows)")
    rsync.add_argument("--batch-size", type=int, metavar="N",
                       help="profiles per bulk-import job, 1..10000 (default 10000, Klaviyo's limit)")
    rsync.add_argument("--dry-run", action="store_true", help="show what would be sent; send nothing")
    rsync.add_argument("--base-url", help="Klaviyo API base URL (default https://a.klaviyo.com)")
    rsync.add_argument("--auth", choices=("klaviyo-api-key", "bearer", "maton"), default="klaviyo-api-key",
                       help="klaviyo-api-key (KLAVIYO_API_KEY, default), bearer (OAuth token in KLAVIYO_API_KEY) "
                            "or maton (MATON_API_KEY)")
    rsync.add_argument("--maton-connection", help="Maton connection id")

    sub.add_parser("sandbox", help="run the local Klaviyo API sandbox (see klaviyo-dlt sandbox --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``klaviyo-dlt`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    as_json = any(a == "--log-format=json" or (a == "--log-format" and argv[i + 1:i + 2] == ["json"])
                  for i, a in enumerate(argv))
    try:
        delegated = _delegated(argv)
        if delegated is not None:
            return delegated
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return EXIT_USAGE
        log = setup_logging(args.log_format, args.debug)
        out = Output(args.log_format)
        handler = {"sync": cmd_sync, "status": cmd_status, "demo": cmd_demo, "connections": cmd_connections,
                   "reverse-sync": cmd_reverse_sync}
        return handler[args.command](args, out, log)
    except KeyboardInterrupt:
        error_line("interrupted", as_json=as_json, exit_code=130)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line + exit code
        error = exc if isinstance(exc, CliError) else classify(exc)
        trace = "".join(traceback.format_exception(exc)) if debug else None
        error_line(str(error), as_json=as_json, exit_code=error.exit_code, trace=trace)
        return error.exit_code


COMMANDS = ("sync", "status", "demo", "connections", "reverse-sync", "sandbox")


def _delegated(argv: list[str]) -> int | None:
    """``sandbox`` keeps its own argument parser (``klaviyo_sandbox.server.main``)."""
    first = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if first is None or argv[first] not in DELEGATED:
        return None
    from klaviyo_sandbox.server import main as sandbox_main

    rest = argv[first + 1:]
    global_options = argv[:first]
    for i, option in enumerate(global_options):  # the global --log-format applies to the sandbox too
        if option.startswith("--log-format") and not any(a.startswith("--log-format") for a in rest):
            rest += [option] if "=" in option else [option, *global_options[i + 1:i + 2]]
    return int(sandbox_main(rest, prog=f"{PROG} sandbox") or 0)


# --- sync ----------------------------------------------------------------------------------------
def _sync_options(args: argparse.Namespace) -> Any:
    from klaviyo_source.pipeline_runner import (
        DEFAULT_PIPELINE_NAME,
        SyncOptions,
        configured_dataset_name,
        configured_destination,
        parse_date,
    )

    return SyncOptions(
        resources=list(getattr(args, "resources", None) or []) or None,
        start_date=parse_date(getattr(args, "start_date", None), "--start-date"),
        end_date=parse_date(getattr(args, "end_date", None), "--end-date"),
        destination=args.destination or configured_destination(),
        duckdb_path=args.duckdb_path,
        dataset_name=args.dataset_name or configured_dataset_name(),
        pipeline_name=args.pipeline_name or DEFAULT_PIPELINE_NAME,
        full_refresh=list(getattr(args, "full_refresh", None) or []),
        base_url=getattr(args, "base_url", None),
        auth=getattr(args, "auth", None),
        maton_connection=getattr(args, "maton_connection", None),
        revision=getattr(args, "revision", None),
        pipelines_dir=args.pipelines_dir,
    )


def resolve_api_key(auth: str | None) -> str:
    """The key for ``auth`` from the environment or ``.dlt/secrets.toml``; a one-line error if absent."""
    import dlt

    from klaviyo_source.keys import clean_key

    # whitespace around a key (a secrets file's trailing newline) is not part of it
    if auth == "maton":
        key = clean_key(os.environ.get("MATON_API_KEY")) or clean_key(dlt.secrets.get("sources.klaviyo.maton_api_key"))
        hint = "Maton API key missing: set MATON_API_KEY (or sources.klaviyo.maton_api_key in .dlt/secrets.toml)"
    else:
        key = clean_key(os.environ.get("KLAVIYO_API_KEY")) or clean_key(dlt.secrets.get("sources.klaviyo.api_key"))
        hint = ("Klaviyo API key missing: set KLAVIYO_API_KEY (or sources.klaviyo.api_key in .dlt/secrets.toml), "
                "or use --auth maton with MATON_API_KEY")
    if not key:
        raise UsageError(hint)
    return key


def _progress_mode(requested: str, log_format: str, many: bool) -> str:
    if log_format == "json" and requested in ("auto", "rich", "text"):
        return "json"
    if requested == "auto":
        return "text" if many or not sys.stderr.isatty() else "rich"
    return requested


def cmd_sync(args: argparse.Namespace, out: Output, log: Any) -> int:
    from klaviyo_source.progress import SyncProgress

    if args.list_resources:
        from klaviyo_source.pipeline_runner import resource_names

        names = resource_names()
        out.emit({"resources": names}, f"{len(names)} resources") if out.json else out.line("\n".join(names))
        return EXIT_OK
    opts = _sync_options(args)
    if args.all_connections or args.all_accounts:
        return _sync_many(args, opts, out, log)
    from klaviyo_source.pipeline_runner import describe_destination, run_sync, validate

    opts.api_key = resolve_api_key(opts.auth)
    validate(opts)
    mode = _progress_mode(args.progress, args.log_format, many=False)
    log.info(f"syncing {', '.join(opts.resources or ['all resources'])} into {describe_destination(opts)} "
             f"dataset {opts.dataset_name}")
    result = run_sync(opts, progress=SyncProgress(mode=mode))
    _print_results(out, [result])
    return EXIT_OK


def _sync_many(args: argparse.Namespace, opts: Any, out: Output, log: Any) -> int:
    from klaviyo_source.accounts import config_targets, connection_targets, overall_exit_code, sync_accounts
    from klaviyo_source.maton import MatonClient
    from klaviyo_source.pipeline_runner import validate
    from klaviyo_source.progress import SyncProgress

    if args.all_connections and args.all_accounts:
        raise UsageError("choose one of --all-connections and --all-accounts")
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    if args.all_connections:
        key = resolve_api_key("maton")
        opts.api_key = key
        targets = connection_targets(MatonClient(key, ctrl_url=args.ctrl_url), gateway_url=opts.base_url)
    else:
        targets = config_targets(base_url=opts.base_url)
    if not targets:
        raise UsageError("no accounts to sync (no ACTIVE or FAILED klaviyo connection)")
    validate(opts)
    mode = _progress_mode(args.progress, args.log_format, many=True)
    log.info(f"syncing {len(targets)} accounts, {min(args.parallel, len(targets))} at a time")
    results = sync_accounts(opts, targets, parallel=args.parallel,
                            progress_factory=lambda t: SyncProgress(mode=mode, label=t.name, period=5.0))
    _print_results(out, results)
    for failed in (r for r in results if not r.ok):
        log.error(f"account {failed.label} failed: {failed.error}")
    return overall_exit_code(results)


def _print_results(out: Output, results: Sequence[Any]) -> None:
    if out.json:
        for r in results:
            who = f"account {r.label}: " if r.label else ""
            message = (f"{who}loaded {sum(r.rows.values()):,} rows into {r.destination} dataset {r.dataset_name} "
                       f"in {r.seconds:.1f}s" if r.ok else f"{who}sync failed: {r.error}")
            out.emit({"event": "sync_result", "account": r.label, "pipeline": r.pipeline_name,
                      "dataset": r.dataset_name, "destination": r.destination, "ok": r.ok,
                      "exit_code": r.exit_code, "error": r.error, "rows": r.rows,
                      "load_ids": r.load_ids, "seconds": round(r.seconds, 2)},
                     message, level="info" if r.ok else "error")
        return
    many = len(results) > 1 or results[0].label is not None
    rows = []
    for r in results:
        if not r.ok:
            rows.append(([r.label] if many else []) + [r.dataset_name, "FAILED", None, r.error])
            continue
        for table, count in sorted(r.rows.items()) or [("(no new rows)", 0)]:
            rows.append(([r.label] if many else []) + [r.dataset_name, table, count, f"{r.seconds:.1f}s"])
    columns = (["account"] if many else []) + ["dataset", "table", "rows", "time / error"]
    out.table(f"Sync summary → {results[0].destination}", columns, rows)


# --- reverse sync --------------------------------------------------------------------------------
REVERSE_SYNC_FLAGS = ("config_path", "name", "table", "query", "email", "phone_number", "external_id", "attributes",
                      "properties", "properties_json", "list_id", "list_name", "create_list", "list_mode", "consent",
                      "max_rejected_fraction", "batch_size")


def cmd_reverse_sync(args: argparse.Namespace, out: Output, log: Any) -> int:
    from klaviyo_source.pipeline_runner import configured_dataset_name, configured_destination, make_destination
    from klaviyo_source.reverse_sync.flags import run_reverse_sync

    flags = {name: getattr(args, name) for name in REVERSE_SYNC_FLAGS}
    connection: dict[str, Any] = {"auth": args.auth, "maton_connection": args.maton_connection}
    if args.base_url:
        connection["base_url"] = args.base_url
    if not args.dry_run:
        connection["api_key"] = resolve_api_key(args.auth)
    report = run_reverse_sync(
        destination=make_destination(args.destination or configured_destination(), args.duckdb_path),
        dataset_name=args.dataset_name or configured_dataset_name(),
        dry_run=args.dry_run, pipelines_dir=args.pipelines_dir, **connection, **flags,
    )
    if out.json:
        out.emit({"event": "reverse_sync_result", **report.as_dict()}, report.summary().splitlines()[0])
    else:
        out.line(report.summary())
    return EXIT_OK


# --- status --------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace, out: Output, log: Any) -> int:
    from klaviyo_source.pipeline_status import pipeline_status

    opts = _sync_options(args)
    report = pipeline_status(opts)
    if out.json:
        out.emit({"event": "status", "pipeline": report.pipeline_name, "dataset": report.dataset_name,
                  "has_runs": report.has_runs, "last_run_at": report.last_run_at,
                  "last_run_failed": report.last_run_failed, "last_error": report.last_error,
                  "resources": [vars(r) for r in report.resources]},
                 f"pipeline {report.pipeline_name}: " + (
                     "no runs yet" if not report.has_runs else
                     "last run failed" if report.last_run_failed else "last run ok"))
        return EXIT_OK
    if not report.has_runs:
        out.line(f"pipeline {report.pipeline_name}: no runs yet into dataset {report.dataset_name}")
        return EXIT_OK
    state = "FAILED" if report.last_run_failed else "ok"
    out.line(f"pipeline {report.pipeline_name} → dataset {report.dataset_name}: last run "
             f"{report.last_run_at.isoformat(timespec='seconds') if report.last_run_at else '-'} {state}"
             + (f": {report.last_error}" if report.last_error else ""))
    out.table("Resources", ["resource", "watermark", "rows last run", "last loaded at", "total rows", "last run"],
              [[r.resource, r.watermark, r.rows_last_run, r.last_loaded_at, r.total_rows,
                "FAILED" if r.failed else "ok"] for r in report.resources])
    return EXIT_OK


# --- demo ----------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace, out: Output, log: Any) -> int:
    from klaviyo_source.demo import run_demo

    run_demo(profiles=args.profiles, events=args.events, seed=args.seed, duckdb_path=args.duckdb_path,
             reverse_sync=not args.no_reverse_sync, out=out, progress="json" if out.json else "text")
    return EXIT_OK


# --- connections ---------------------------------------------------------------------------------
def cmd_connections(args: argparse.Namespace, out: Output, log: Any) -> int:
    from klaviyo_source.maton import MatonClient

    client = MatonClient(resolve_api_key("maton"), ctrl_url=args.ctrl_url)
    if args.action == "list":
        found = client.list(app=args.app, status=args.status)
        if out.json:
            out.emit({"connections": [vars(c) for c in found]}, f"{len(found)} {args.app} connection(s)")
        else:
            out.table(f"Maton connections ({args.app}{', ' + args.status if args.status else ''})",
                      ["connection_id", "status", "created", "updated"],
                      [[c.connection_id, c.status, c.creation_time, c.last_updated_time] for c in found])
        return EXIT_OK
    if args.action == "create":
        conn = client.create(app=args.app)
        if out.json:
            out.emit({"connection": vars(conn)},
                     f"created connection {conn.connection_id}: open its url to authorise it")
        else:
            out.line(f"created connection {conn.connection_id} ({conn.status})")
            out.line(f"open this URL in a browser to authorise it: {conn.url}")
        return EXIT_OK
    if args.action == "get":
        conn = client.get(args.connection_id)
        if out.json:
            out.emit({"connection": vars(conn)}, f"connection {conn.connection_id} is {conn.status}")
        else:
            out.table(f"connection {conn.connection_id}", ["field", "value"],
                      [[k, v] for k, v in vars(conn).items()])
        return EXIT_OK
    client.delete(args.connection_id)
    done = f"deleted connection {args.connection_id}"
    out.emit({"deleted": args.connection_id}, done) if out.json else out.line(done)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
