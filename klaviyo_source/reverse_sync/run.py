"""One reverse-sync run: read the audience, diff it against state, push what changed, advance state.

Order of work (each step advances state only for what Klaviyo accepted, batch by batch,
so a killed run resumes where it stopped and a rerun of an unchanged audience sends nothing):

1. local validation — bad rows go to the rejects table, never to Klaviyo;
2. bulk-import jobs for new/changed profiles (and list members, via the job's list relationship);
3. profile-import with nulls for fields whose column became NULL;
4. explicit consent through subscription jobs;
5. ``mirror`` mode: removal of departed members by Klaviyo profile id.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from klaviyo_source.keys import clean_key

from .diff import Plan, plan
from .mapping import IDENTIFIERS, ReverseSyncConfig, build_clear
from .report import ReverseSyncReport
from .source_rows import Warehouse, read_audience
from .state import BackgroundCommits, SyncState
from .writer import KlaviyoWriter, ReverseSyncError, batches, make_client

SAMPLE_SIZE = 5
FINAL_JOB_HOLD = 5.0  # seconds state loads wait while the last bulk job is awaited
STATE_FIELDS = ("identity_key", "profile_hash", "present_fields", "profile_id", "list_id", "list_name", "in_list",
                "consent_hash", "job_id")


def load_config(config: ReverseSyncConfig | dict[str, Any] | str | Path) -> ReverseSyncConfig:
    """A config object from itself, a dict, or a TOML/YAML file path."""
    if isinstance(config, ReverseSyncConfig):
        return config
    if isinstance(config, dict):
        return ReverseSyncConfig.from_dict(config)
    return ReverseSyncConfig.from_file(config)


def reverse_sync(
    config: ReverseSyncConfig | dict[str, Any] | str | Path,
    *,
    destination: Any,
    dataset_name: str,
    credentials: Any = None,
    api_key: str | None = None,
    base_url: str | None = None,
    auth: str = "klaviyo-api-key",
    maton_connection: str | None = None,
    dry_run: bool = False,
    rate_limit_scale: float = 1.0,
    pipelines_dir: str | None = None,
    client: Any = None,
    run_id: str | None = None,
    on_batch: Callable[[int, ReverseSyncReport], None] | None = None,
) -> ReverseSyncReport:
    """Push the audience into Klaviyo, sending only what changed since the last accepted run.

    ``destination``/``dataset_name``/``credentials`` name the warehouse the extraction loads
    into (``"duckdb"`` + file path, ``"postgres"`` + DSN, a ``.duckdb`` path, a DSN, or a dlt
    destination). ``api_key``/``base_url``/``auth``/``maton_connection`` reach Klaviyo (or a
    ``client`` from ``make_client``). ``dry_run`` reports counts and samples and sends nothing.
    Raises ``ConfigError``/``SourceError`` for bad input and ``ReverseSyncError`` for run failures.
    """
    started = time.monotonic()
    config = load_config(config)
    report = ReverseSyncReport(sync_name=config.name, run_id=run_id or uuid.uuid4().hex[:12], dry_run=dry_run)
    warehouse = Warehouse(destination, dataset_name, credentials=credentials, pipelines_dir=pipelines_dir)
    rows = read_audience(warehouse, config.table, config.query, config.source_columns)
    state = SyncState(warehouse, config.name)
    prior = state.load()

    list_id = config.list.id if config.list else None
    work = plan(config, rows, prior, list_id)
    report.read = work.read
    report.unchanged = work.unchanged
    report.rejected_local = work.rejected.num_rows
    if dry_run:
        report.list_id = list_id
        _describe(work, report)
    else:
        local = [("local", *r) for r in _local_rejects(work.rejected)]
        if _over_threshold(config, report, len(local)):
            state.commit([], local, report.run_id)
            _check_threshold(config, report, len(local))  # raises: nothing is sent
        if client is None:
            api_key = clean_key(api_key) or _configured_api_key()
            if not api_key:
                raise ReverseSyncError("no Klaviyo API key: pass api_key, or set SOURCES__KLAVIYO__API_KEY "
                                       "or KLAVIYO_API_KEY")
            if not base_url:
                from klaviyo_source import settings

                base_url = settings.MATON_GATEWAY_URL if auth == "maton" else settings.KLAVIYO_BASE_URL
            client = make_client(api_key, base_url, auth=auth, maton_connection=maton_connection,
                                 rate_limit_scale=rate_limit_scale)
        writer = KlaviyoWriter(client)
        if config.list and config.list.name:
            list_id = writer.find_list(config.list.name)
            if list_id is None:
                if not config.list.create:
                    raise ReverseSyncError(f"no Klaviyo list named {config.list.name!r}; "
                                           "create it or set [list] create = true")
                list_id = writer.create_list(config.list.name)
                report.list_created = True
            if _other_list_ids(prior, config.list.name, list_id):
                # state holds members of an earlier list of that name: compare by the resolved id
                work = plan(config, rows, prior, list_id)
                report.unchanged = work.unchanged
        report.list_id = list_id
        _Pusher(config, work, state, writer, warehouse, list_id, report, on_batch, local).run()
        report.requests = writer.requests
    report.rejected = report.rejected_local + report.rejected_remote
    report.seconds = time.monotonic() - started
    if not dry_run:
        _check_threshold(config, report, report.rejected)
    return report


def _other_list_ids(prior: pa.Table, name: str, list_id: str) -> bool:
    """Whether state rows for list ``name`` were recorded under a list id other than ``list_id``."""
    if prior.num_rows == 0:
        return False

    same_name = pc.equal(prior.column("list_name"), name)
    other_id = pc.invert(pc.fill_null(pc.equal(prior.column("list_id"), list_id), False))
    return bool(pc.any(pc.and_(same_name, other_id)).as_py())


def _count(*masks: Any) -> int:
    """How many rows every boolean mask holds true for (nulls count as false)."""
    combined = masks[0]
    for mask in masks[1:]:
        combined = pc.and_kleene(combined, mask)
    return int(pc.sum(pc.fill_null(combined, False)).as_py() or 0)


def _configured_api_key() -> str | None:
    """The key from dlt's secrets (``sources.klaviyo.api_key``) or ``KLAVIYO_API_KEY``."""
    import os

    import dlt

    try:
        key = clean_key(dlt.secrets.get("sources.klaviyo.api_key"))
    except Exception:  # noqa: BLE001 - no secrets provider configured
        key = None
    return key or clean_key(os.environ.get("KLAVIYO_API_KEY"))


def _local_rejects(rejected: pa.Table) -> list[tuple[str | None, str, str | None]]:
    return [(r["identity_key"], r["reason"], r["row_json"]) for r in rejected.to_pylist()]


def _over_threshold(config: ReverseSyncConfig, report: ReverseSyncReport, rejected: int) -> bool:
    limit = config.max_rejected_fraction
    return limit is not None and report.read > 0 and rejected / report.read > limit


def _check_threshold(config: ReverseSyncConfig, report: ReverseSyncReport, rejected: int) -> None:
    limit = config.max_rejected_fraction
    if _over_threshold(config, report, rejected):
        raise ReverseSyncError(
            f"{rejected} of {report.read} rows rejected (more than max_rejected_fraction={limit}); "
            f"reasons in _klaviyo_reverse_sync_rejects (run_id {report.run_id})")


def _describe(work: Plan, report: ReverseSyncReport) -> None:
    """Dry run: counts and a few sample rows per action (vectorised: fine for a million rows)."""
    upserts = work.upserts
    shown = ["__identity", *work.fields]

    def pick(table: pa.Table, mask: Any, columns: list[str]) -> tuple[int, list[dict[str, Any]]]:
        chosen = table.filter(mask) if mask is not None else table
        rows = chosen.select(columns).slice(0, SAMPLE_SIZE).to_pylist()
        names = {"__identity": "identity", "identity_key": "identity", "__cleared": "fields"}
        return chosen.num_rows, [{names.get(k, k): v for k, v in r.items() if v is not None} for r in rows]

    is_new = upserts.column("__is_new")
    changed = upserts.column("__changed")
    groups = {
        "create": pick(upserts, is_new, shown),
        "update": pick(upserts, pc.and_(pc.invert(is_new), changed), shown),
        "clear": pick(upserts, pc.greater(pc.list_value_length(upserts.column("__cleared")), 0),
                      ["__identity", "__cleared"]),
        "add": pick(upserts, upserts.column("__needs_list"), ["__identity"]),
        "remove": pick(work.departed, None, ["identity_key"]),
        "subscribe": pick(work.consents, None, ["__identity"]),
        "reject": pick(work.rejected, None, ["identity_key", "reason"]),
    }
    report.would = {k: count for k, (count, _) in groups.items()}
    report.samples = {k: rows for k, (count, rows) in groups.items() if rows}


class _Pusher:
    """Sends a plan to Klaviyo and advances state as Klaviyo accepts it."""

    def __init__(self, config: ReverseSyncConfig, work: Plan, state: SyncState, writer: KlaviyoWriter,
                 warehouse: Warehouse, list_id: str | None, report: ReverseSyncReport,
                 on_batch: Callable[[int, ReverseSyncReport], None] | None,
                 pending: list[tuple[str, str | None, str, str | None]]):
        self.config, self.work, self.state, self.writer = config, work, state, writer
        self.pending = list(pending)  # rejects written with the next state commit
        self.warehouse, self.list_id, self.report, self.on_batch = warehouse, list_id, report, on_batch
        # identity -> latest state row written this run, kept for the identities a later stage
        # (consent) writes again
        self.current: dict[str, dict[str, Any]] = {}
        self.written_again = set(work.consents.column("__identity").to_pylist()) if work.consents.num_rows else set()
        self.failed: set[str] = set()  # identities Klaviyo rejected this run

    def run(self) -> None:
        try:
            self.push_profiles()
            self.push_consent()
            self.remove_departed()
        finally:
            if self.pending:  # local rejects of a run with nothing to send, or after a failure
                self.state.commit([], self.pending, self.report.run_id)
                self.pending = []

    # -- state rows -----------------------------------------------------------------------
    def _base(self, row: dict[str, Any]) -> dict[str, Any]:
        """The identity's state as it stands (written this run, else as read before the run)."""
        identity = row["__identity"]
        if identity in self.current:
            return dict(self.current[identity])
        return {"identity_key": identity, "profile_hash": row["__prev_hash"], "present_fields": row["__prev_present"],
                "profile_id": row["__profile_id"], "list_id": row["__prev_list_id"],
                "list_name": row["__prev_list_name"], "in_list": row["__prev_in_list"],
                "consent_hash": row["__prev_consent_hash"], "job_id": None}

    def _save(self, rows: list[dict[str, Any]]) -> None:
        """Advance state (and write pending rejects) in one load."""
        self.state.commit(rows, self.pending, self.report.run_id)
        self.pending = []
        self._remember(rows)

    def _remember(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["identity_key"] in self.written_again:
                self.current[row["identity_key"]] = row

    def _reject(self, stage: str, rejects: list[tuple[str, str, str | None]]) -> None:
        self.pending.extend((stage, *r) for r in rejects)
        self.report.rejected_remote += len(rejects)
        self.failed.update(r[0] for r in rejects)

    # -- 2 + 3: profiles, list members, clears ---------------------------------------------
    def push_profiles(self) -> None:
        upserts = self.work.upserts
        if not upserts.num_rows:
            return
        # identities new to this sync but already extracted from Klaviyo are updates, and their ids are known
        known = self._ids_from_warehouse(pc.filter(upserts.column("__identity"), upserts.column("__is_new")).to_pylist())
        list_id = self.list_id if self.config.list else None
        bodies = upserts.column("__body")  # each profile resource as JSON text, built by the plan
        sizes = pc.binary_length(bodies).to_pylist()
        spans = ((group[0], group[-1] + 1) for group in batches(
            range(upserts.num_rows), size=sizes.__getitem__, max_count=self.config.batch_size,
            max_bytes=self.config.max_batch_bytes))
        # up to `jobs_in_flight` jobs are submitted ahead, so Klaviyo works on the next ones while
        # this run awaits the oldest and records it; state still advances job by job, in order, on
        # a background thread (a run killed with jobs in flight or state uncommitted sends their
        # rows again next time: imports are idempotent)
        in_flight: deque[tuple[int, int, int, str, float]] = deque()
        commits = BackgroundCommits(self.state, self.report.run_id)
        try:
            submitted, all_submitted = 0, False
            while True:
                while not all_submitted and len(in_flight) < self.config.jobs_in_flight:
                    span = next(spans, None)
                    if span is None:
                        all_submitted = True
                        break
                    start, end = span
                    job_id = self.writer.submit_import(bodies.slice(start, end - start).to_pylist(), list_id)
                    in_flight.append((submitted, start, end, job_id, time.monotonic()))
                    submitted += 1
                if not in_flight:
                    break
                number, start, end, job_id, submitted_at = in_flight.popleft()
                if all_submitted and not in_flight:
                    commits.hold(FINAL_JOB_HOLD)  # the last job: its state goes out with what is pending
                attributes = self.writer.wait_import(job_id, submitted_at)
                job = upserts.slice(start, end - start)
                failures = self.writer.import_failures(job_id, attributes, job.column("__body").to_pylist())
                commits.put(self._record_job(job, job_id, failures, known), self.pending)
                self.pending = []
                if self.on_batch:
                    self.on_batch(number, self.report)
                if self.config.max_rejected_fraction is not None:
                    _check_threshold(self.config, self.report, self.report.rejected_local + self.report.rejected_remote)
        except BaseException:
            commits.close(raise_failure=False)  # what Klaviyo accepted so far is still recorded
            raise
        commits.close()

    def _record_job(self, job: pa.Table, job_id: str, failures: dict[int, Any], known: dict[str, str]) -> pa.Table:
        """Count a completed job, clear the fields bulk import cannot, and return the state rows
        it advances (column-wise: only failed rows and rows with cleared fields are visited)."""
        count = job.num_rows
        identity = job.column("__identity")
        ok = [True] * count
        rejects, conflicts, unclear = [], [], []
        for index, failure in failures.items():
            ok[index] = False
            stage_list = conflicts if failure.code == "duplicate_profile" else rejects
            stage_list.append((identity[index].as_py(), failure.reason, job.column("__body")[index].as_py()))
        profile_id = job.column("__profile_id")
        if known:
            keys, ids = pa.array(list(known), pa.string()), pa.array(list(known.values()), pa.string())
            profile_id = pc.coalesce(profile_id, pc.take(ids, pc.index_in(identity, value_set=keys)))
            new_unknown = pc.and_(job.column("__is_new"), pc.invert(pc.is_in(identity, value_set=keys)))
        else:
            new_unknown = job.column("__is_new")
        columns = {"profile_hash": job.column("__hash"), "present_fields": job.column("__present"),
                   "profile_id": profile_id}
        counted = list(ok)  # rows counted as created/updated: not those whose clear failed
        clearing = [i for i in pc.indices_nonzero(pc.greater(pc.list_value_length(job.column("__cleared")), 0)).to_pylist()
                    if ok[i]]
        if clearing:
            values = {name: column.to_pylist() for name, column in columns.items()}
            for index, row in zip(clearing, job.take(clearing).to_pylist()):
                body = build_clear(row, row["__cleared"])
                cleared_id, problem = self.writer.profile_import(body)
                if problem is not None:
                    # keep the old hash: the next run retries the clear
                    values["profile_hash"][index], values["present_fields"][index] = row["__prev_hash"], row["__prev_present"]
                    stage_list = conflicts if problem.code == "duplicate_profile" else unclear
                    stage_list.append((row["__identity"], problem.reason, orjson.dumps(body).decode()))
                    counted[index] = False
                    continue
                values["profile_id"][index] = cleared_id
                self.report.cleared += 1
            columns = {name: pa.array(column, pa.string()) for name, column in values.items()}
        list_target = self.config.list
        if list_target:
            membership = {"list_id": pa.array([self.list_id] * count, pa.string()),
                          "list_name": pa.array([list_target.name] * count, pa.string()),
                          "in_list": pa.array([True] * count, pa.bool_())}
            self.report.added_to_list += _count(pa.array(ok), job.column("__needs_list"))
        else:
            membership = {"list_id": job.column("__prev_list_id"), "list_name": job.column("__prev_list_name"),
                          "in_list": job.column("__prev_in_list")}
        counted_mask, changed = pa.array(counted), job.column("__changed")
        self.report.created += _count(counted_mask, changed, new_unknown)
        self.report.updated += _count(counted_mask, changed, pc.invert(new_unknown))
        self.report.jobs += 1
        self.report.sent += count
        self._reject("import_error", rejects)
        self._reject("conflict", conflicts)
        self._reject("clear", unclear)
        saved = pa.table({"identity_key": identity, **columns, **membership,
                          "consent_hash": job.column("__prev_consent_hash"),
                          "job_id": pa.array([job_id] * count, pa.string())}).filter(pa.array(ok))
        if self.written_again:
            self._remember(saved.filter(pc.is_in(saved.column("identity_key"), value_set=pa.array(
                list(self.written_again), pa.string()))).to_pylist())
        self.report.requests = self.writer.requests
        return saved

    # -- 4: consent -----------------------------------------------------------------------
    def push_consent(self) -> None:
        rows = [r for r in self.work.consents.to_pylist() if r["__identity"] not in self.failed]
        for start in range(0, len(rows), 1000):
            chunk = rows[start:start + 1000]
            payloads = [self._subscription(r) for r in chunk]
            self.writer.subscribe(payloads)
            saved = []
            for row in chunk:
                next_state = self._base(row)
                next_state["consent_hash"] = row["__consent_hash"]
                saved.append(next_state)
            self._save(saved)
            self.report.subscribed += len(chunk)

    def _subscription(self, row: dict[str, Any]) -> dict[str, Any]:
        attributes: dict[str, Any] = {k: row[k] for k in ("email", "phone_number") if row.get(k) is not None}
        subscriptions: dict[str, Any] = {}
        for consent in self.config.consent:
            if row.get(f"__consent_{consent.channel}"):
                marketing: dict[str, Any] = {"consent": "SUBSCRIBED"}
                at = row.get(f"__consent_{consent.channel}_at")
                if at is not None:
                    marketing["consented_at"] = at.isoformat()
                subscriptions[consent.channel] = {"marketing": marketing}
        attributes["subscriptions"] = subscriptions
        return {"type": "profile", "attributes": attributes}

    # -- 5: mirror removals ---------------------------------------------------------------
    def remove_departed(self) -> None:
        departed = self.work.departed.to_pylist()
        if not departed or not self.list_id:
            return
        ids = self._resolve_ids([d for d in departed if not d.get("profile_id")])
        for start in range(0, len(departed), 1000):
            chunk = departed[start:start + 1000]
            removable = []
            for row in chunk:
                row["profile_id"] = row.get("profile_id") or ids.get(row["identity_key"])
                if row["profile_id"]:
                    removable.append(row["profile_id"])
                else:
                    self.report.unresolved_removals += 1  # no such profile in Klaviyo: not a member either
            if removable:
                self.writer.remove_from_list(self.list_id, removable)
            self._save([{**{k: row.get(k) for k in STATE_FIELDS}, "in_list": False} for row in chunk])
            self.report.removed_from_list += len(removable)

    def _resolve_ids(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """identity key -> Klaviyo profile id: the extracted ``profiles`` table first, then the API."""
        found = self._ids_from_warehouse([row["identity_key"] for row in rows])
        wanted: dict[str, dict[str, str]] = {}
        for row in rows:
            if row["identity_key"] not in found:
                kind, _, value = row["identity_key"].partition(":")
                wanted.setdefault(kind, {})[value] = row["identity_key"]
        for kind, values in wanted.items():
            for value, pid in self.writer.lookup_profile_ids(kind, list(values)).items():
                if value in values:
                    found.setdefault(values[value], pid)
        return found

    def _ids_from_warehouse(self, identities: list[str]) -> dict[str, str]:
        """identity key -> profile id, from the ``profiles`` table the extraction loaded (if any)."""
        if not identities:
            return {}
        columns = self.warehouse.table_columns("profiles")
        wanted: dict[str, dict[str, str]] = {}
        for identity in identities:
            kind, _, value = identity.partition(":")
            wanted.setdefault(kind, {})[value] = identity
        found: dict[str, str] = {}
        for kind, values in wanted.items():
            if "id" not in columns or kind not in columns or kind not in IDENTIFIERS:
                continue
            table = self.warehouse.read_arrow(f'select id, "{kind}" from profiles where "{kind}" is not null')
            for pid, value in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
                identity = values.get(value.strip().lower() if kind == "email" else value)
                if identity is not None:
                    found.setdefault(identity, pid)
        return found
