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
from typing import Any, Callable, Iterator

import orjson
import pyarrow as pa

from .diff import Plan, plan
from .mapping import IDENTIFIERS, ReverseSyncConfig, build_clear, build_profile
from .report import ReverseSyncReport
from .source_rows import Warehouse, read_audience
from .state import BackgroundCommits, SyncState
from .writer import KlaviyoWriter, ReverseSyncError, batches, make_client

SAMPLE_SIZE = 5
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
            api_key = api_key or _configured_api_key()
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
    import pyarrow.compute as pc

    same_name = pc.equal(prior.column("list_name"), name)
    other_id = pc.invert(pc.fill_null(pc.equal(prior.column("list_id"), list_id), False))
    return bool(pc.any(pc.and_(same_name, other_id)).as_py())


def _configured_api_key() -> str | None:
    """The key from dlt's secrets (``sources.klaviyo.api_key``) or ``KLAVIYO_API_KEY``."""
    import os

    import dlt

    try:
        key = dlt.secrets.get("sources.klaviyo.api_key")
    except Exception:  # noqa: BLE001 - no secrets provider configured
        key = None
    return key or os.environ.get("KLAVIYO_API_KEY")


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
    import pyarrow.compute as pc

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
    def _jobs(self) -> Iterator[list[tuple[dict[str, Any], dict[str, Any], bytes]]]:
        """The upserts as bulk-import jobs of (row, profile, serialised profile), built only as
        they are needed: the first job goes out while later ones are still rows."""
        def prepared() -> Iterator[tuple[dict[str, Any], dict[str, Any], bytes]]:
            for chunk in self.work.upserts.to_batches(max_chunksize=self.config.batch_size):
                for row in chunk.to_pylist():
                    properties = orjson.loads(row["__props_json"]) if row["__props_json"] else None
                    profile = build_profile(row, self.work.fields, properties)
                    yield row, profile, orjson.dumps(profile)

        return batches(prepared(), size=lambda item: len(item[2]), max_count=self.config.batch_size,
                       max_bytes=self.config.max_batch_bytes)

    def push_profiles(self) -> None:
        upserts = self.work.upserts
        if not upserts.num_rows:
            return
        import pyarrow.compute as pc

        # identities new to this sync but already extracted from Klaviyo are updates, and their ids are known
        known = self._ids_from_warehouse(pc.filter(upserts.column("__identity"), upserts.column("__is_new")).to_pylist())
        list_id = self.list_id if self.config.list else None
        # up to `jobs_in_flight` jobs are submitted ahead, so Klaviyo works on the next ones while
        # this run awaits the oldest and records it; state still advances job by job, in order, on
        # a background thread (a run killed with jobs in flight or state uncommitted sends their
        # rows again next time: imports are idempotent)
        jobs = self._jobs()
        in_flight: deque[tuple[int, list[tuple[dict[str, Any], dict[str, Any], bytes]], str, float]] = deque()
        commits = BackgroundCommits(self.state, self.report.run_id)
        try:
            submitted = 0
            while True:
                while len(in_flight) < self.config.jobs_in_flight:
                    job = next(jobs, None)
                    if job is None:
                        break
                    job_id = self.writer.submit_import([payload for _, _, payload in job], list_id)
                    in_flight.append((submitted, job, job_id, time.monotonic()))
                    submitted += 1
                if not in_flight:
                    break
                number, job, job_id, submitted_at = in_flight.popleft()
                failures = self.writer.wait_import(job_id, [profile for _, profile, _ in job], submitted_at)
                saved = self._record_job(job, job_id, failures, known)
                commits.put(saved, self.pending)
                self.pending = []
                if self.on_batch:
                    self.on_batch(number, self.report)
                if self.config.max_rejected_fraction is not None:
                    _check_threshold(self.config, self.report, self.report.rejected_local + self.report.rejected_remote)
        except BaseException:
            commits.close(raise_failure=False)  # what Klaviyo accepted so far is still recorded
            raise
        commits.close()

    def _record_job(self, job: list[tuple[dict[str, Any], dict[str, Any], bytes]], job_id: str,
                    failures: dict[int, Any], known: dict[str, str]) -> list[dict[str, Any]]:
        """Count a completed job, clear the fields it cannot, and return the state rows it advances."""
        list_target = self.config.list
        saved, rejects, conflicts, unclear = [], [], [], []
        for offset, (row, _, payload) in enumerate(job):
            failure = failures.get(offset)
            if failure is not None:
                stage_list = conflicts if failure.code == "duplicate_profile" else rejects
                stage_list.append((row["__identity"], failure.reason, payload.decode()))
                continue
            next_state = self._base(row)
            next_state.update(profile_hash=row["__hash"], present_fields=row["__present"], job_id=job_id)
            if not next_state.get("profile_id") and row["__identity"] in known:
                next_state["profile_id"] = known[row["__identity"]]
            if list_target:
                next_state.update(list_id=self.list_id, list_name=list_target.name, in_list=True)
                self.report.added_to_list += int(bool(row["__needs_list"]))
            if row["__cleared"]:
                body = build_clear(row, row["__cleared"])
                profile_id, problem = self.writer.profile_import(body)
                if problem is not None:
                    # keep the old hash: the next run retries the clear
                    next_state.update(profile_hash=row["__prev_hash"], present_fields=row["__prev_present"])
                    stage_list = conflicts if problem.code == "duplicate_profile" else unclear
                    stage_list.append((row["__identity"], problem.reason, orjson.dumps(body).decode()))
                    saved.append(next_state)
                    continue
                next_state["profile_id"] = profile_id
                self.report.cleared += 1
            saved.append(next_state)
            if row["__changed"]:
                if row["__is_new"] and row["__identity"] not in known:
                    self.report.created += 1
                else:
                    self.report.updated += 1
        self.report.jobs += 1
        self.report.sent += len(job)
        self._reject("import_error", rejects)
        self._reject("conflict", conflicts)
        self._reject("clear", unclear)
        self._remember(saved)
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
