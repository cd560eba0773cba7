"""Many Klaviyo accounts: one sync per account, each into its own dataset with its own pipeline
(hence its own incremental state), in parallel; a failing account never stops the others.

Accounts come from Maton (every klaviyo connection of the Maton key: ACTIVE ones are synced
through the gateway with ``Maton-Connection``; FAILED ones — revoked or expired — are reported
as failures without a request; PENDING ones, never authorised, are skipped) or from config
(``sources.klaviyo.accounts = {name = "pk_..."}`` in ``.dlt/secrets.toml``, or the env var
``SOURCES__KLAVIYO__ACCOUNTS='{"shop_a": "pk_..."}'``).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from klaviyo_source.cli_errors import EXIT_OK, EXIT_PARTIAL, EXIT_SYNC_FAILED, UsageError
from klaviyo_source.keys import clean_key
from klaviyo_source.maton import DEFAULT_GATEWAY_URL, MatonClient
from klaviyo_source.pipeline_runner import SyncOptions, SyncResult, run_sync


@dataclass(frozen=True)
class AccountTarget:
    """One account to sync: its name, how to authenticate, and why it is not syncable (if so)."""

    name: str
    api_key: str | None = None
    auth: str | None = None
    base_url: str | None = None
    maton_connection: str | None = None
    problem: str | None = None  # set: report as failed without syncing

    def __repr__(self) -> str:  # never show the key
        return f"AccountTarget(name={self.name!r}, auth={self.auth!r}, maton_connection={self.maton_connection!r})"


def slug(name: str) -> str:
    """A lower-case identifier usable in pipeline and dataset names."""
    cleaned = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return cleaned or "account"


def connection_targets(maton: MatonClient, gateway_url: str | None = None) -> list[AccountTarget]:
    """Every klaviyo connection of the Maton key: ACTIVE → synced via the gateway, FAILED → reported."""
    gateway = (gateway_url or DEFAULT_GATEWAY_URL).rstrip("/")
    if not gateway.endswith("/klaviyo"):
        gateway += "/klaviyo"
    targets = []
    for conn in sorted(maton.list(app="klaviyo"), key=lambda c: (c.creation_time or "", c.connection_id)):
        if conn.status == "PENDING":
            continue
        problem = None if conn.status == "ACTIVE" else (
            f"connection {conn.connection_id} is {conn.status}; re-authorise it "
            f"(klaviyo-dlt connections create) and delete the old one")
        targets.append(AccountTarget(name=conn.connection_id, auth="maton", base_url=gateway,
                                     maton_connection=conn.connection_id, problem=problem))
    return targets


def config_targets(accounts: dict[str, str] | None = None, base_url: str | None = None) -> list[AccountTarget]:
    """Accounts from ``sources.klaviyo.accounts`` (name → private API key)."""
    if accounts is None:
        import dlt

        accounts = dlt.secrets.get("sources.klaviyo.accounts", dict)
    if not accounts:
        raise UsageError("no accounts configured: set sources.klaviyo.accounts in .dlt/secrets.toml "
                         "(name = \"pk_...\") or SOURCES__KLAVIYO__ACCOUNTS, or use --all-connections with MATON_API_KEY")
    if isinstance(accounts, str):
        import json

        try:
            accounts = json.loads(accounts)
        except ValueError:
            accounts = None
    if not isinstance(accounts, dict):
        raise UsageError("sources.klaviyo.accounts must map account names to private API keys")
    targets = []
    for name, value in accounts.items():
        key = clean_key(value)
        if key is None:
            raise UsageError(f"sources.klaviyo.accounts: the key of account {name!r} is empty")
        targets.append(AccountTarget(name=str(name), api_key=key, base_url=base_url))
    return targets


def options_for(base: SyncOptions, target: AccountTarget) -> SyncOptions:
    """``base`` specialised to one account: its own pipeline name, dataset and credentials."""
    account = slug(target.name)
    return replace(
        base,
        pipeline_name=f"{base.pipeline_name}_{account}",
        dataset_name=f"{base.dataset_name}_{account}",
        api_key=target.api_key or base.api_key,
        auth=target.auth or base.auth,
        base_url=target.base_url or base.base_url,
        maton_connection=target.maton_connection,
    )


def sync_account(base: SyncOptions, target: AccountTarget, progress: Any = None) -> SyncResult:
    """Sync one account; never raises — the error is in the result."""
    opts = options_for(base, target)
    if target.problem:
        return SyncResult(opts.pipeline_name, opts.dataset_name, base.destination, error=target.problem,
                          exit_code=EXIT_SYNC_FAILED, label=target.name)
    result = run_sync(opts, progress=progress, raise_errors=False)
    result.label = target.name
    return result


def sync_accounts(base: SyncOptions, targets: Sequence[AccountTarget], parallel: int = 4,
                  progress_factory: Callable[[AccountTarget], Any] | None = None) -> list[SyncResult]:
    """Sync every account, ``parallel`` at a time (each account has its own Klaviyo rate limits)."""
    if not targets:
        return []
    workers = max(1, min(parallel, len(targets)))

    def one(target: AccountTarget) -> SyncResult:
        return sync_account(base, target, progress_factory(target) if progress_factory else None)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="klaviyo-account") as pool:
        return list(pool.map(one, targets))


def overall_exit_code(results: Sequence[SyncResult]) -> int:
    """0 all ok, 4 some failed, the failure's own code when every account failed."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return EXIT_OK
    if len(failed) < len(results):
        return EXIT_PARTIAL
    codes = {r.exit_code for r in failed}
    return codes.pop() if len(codes) == 1 else EXIT_SYNC_FAILED
