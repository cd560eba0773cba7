"""Exit codes and the one-line error messages of the ``klaviyo-dlt`` command line.

Every failure is classified into an exit code and one line that says what to fix; secrets are
scrubbed from the line (``redact``).  Exit codes (documented in ``klaviyo-dlt --help``):

* 0 ok
* 1 the run failed while talking to Klaviyo or the destination: API errors, network failures,
  a server that cannot be reached, a DuckDB file that cannot be opened or written -- even when
  the cause is a wrong host or path (rerunning may help once the cause is gone)
* 2 usage or configuration error found before connecting: missing key or credential field,
  unknown resource/destination, malformed date, invalid reverse-sync mapping, wrong table/query
* 3 authentication/authorization failed (Klaviyo or Maton answered 401/403)
* 4 partial failure: some accounts of a multi-account sync failed, the others loaded
"""

from __future__ import annotations

from typing import Iterable

from klaviyo_source.db_errors import describe as describe_database_error
from klaviyo_source.db_errors import exception_chain, is_unavailable, root_cause

EXIT_OK = 0
EXIT_SYNC_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_PARTIAL = 4

EXIT_CODES_HELP = (
    "exit codes: 0 ok | 1 run failed (Klaviyo, network or destination error, incl. unreachable hosts and "
    "files that cannot be opened) | 2 usage/config error found before connecting | 3 auth failed (401/403) | "
    "4 partial failure (some accounts failed)"
)


class CliError(Exception):
    """An error with its exit code and a one-line message meant for the user."""

    exit_code = EXIT_SYNC_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    exit_code = EXIT_USAGE


class AuthError(CliError):
    exit_code = EXIT_AUTH


class SyncFailed(CliError):
    exit_code = EXIT_SYNC_FAILED


def register_secret(value: str | None) -> None:
    """Remember a secret so ``redact`` removes it (in any printed form) from anything printed or logged."""
    from klaviyo_source.masking import SECRETS

    SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret masked."""
    from klaviyo_source.masking import SECRETS

    return SECRETS(text)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of the first HTTP error in the chain, if any."""
    for item in exception_chain(exc):
        response = getattr(item, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        status = getattr(item, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    return None


def classify(exc: BaseException) -> CliError:
    """Turn any exception from a sync into a ``CliError`` with the right exit code and one line."""
    from klaviyo_source.errors import KlaviyoConfigError, KlaviyoSourceError, find_source_error
    from klaviyo_source.maton import MatonAuthError, MatonError

    source_error = find_source_error(exc)
    if isinstance(source_error, KlaviyoConfigError):
        return UsageError(redact(str(source_error)))
    if isinstance(source_error, KlaviyoSourceError):
        status = getattr(source_error, "status_code", None)
        return (AuthError if status in (401, 403) else SyncFailed)(redact(str(source_error)))
    from klaviyo_source.reverse_sync.mapping import ConfigError as ReverseSyncConfigError
    from klaviyo_source.reverse_sync.source_rows import SourceError as ReverseSyncSourceError
    from klaviyo_source.reverse_sync.source_rows import WarehouseUnavailable

    for item in exception_chain(exc):
        if isinstance(item, WarehouseUnavailable):
            return SyncFailed(redact(_first_line(str(item))))
        if isinstance(item, (ReverseSyncConfigError, ReverseSyncSourceError)):
            return UsageError(redact(_first_line(str(item))))
        if isinstance(item, CliError):
            return type(item)(redact(str(item)), item.exit_code)
        if isinstance(item, MatonAuthError):
            return AuthError(redact(str(item)))
        if isinstance(item, MatonError):
            return (UsageError if item.status == 404 else SyncFailed)(redact(str(item)))
    missing = _missing_config(exc)
    if missing:
        return UsageError(missing)
    status = http_status(exc)
    root = root_cause(exc)
    detail = _first_line(str(root)) or type(root).__name__
    if status in (401, 403):
        return AuthError(redact(
            f"Klaviyo rejected the credentials (HTTP {status}): check the API key / Maton connection "
            f"and its scopes ({detail})"
        ))
    step = getattr(exc, "step", None)
    if is_unavailable(exc):  # the database's own cause, not dlt's "check if you configured the credentials"
        where = f" ({step} step)" if step else ""
        return SyncFailed(redact(f"destination unavailable{where}: {describe_database_error(exc)}"))
    where = f"{step} step failed" if step else "sync failed"
    return SyncFailed(redact(f"{where}: {detail}"))


def _missing_config(exc: BaseException) -> str | None:
    from dlt.common.configuration.exceptions import ConfigFieldMissingException, ValueNotSecretException

    for item in exception_chain(exc):
        if isinstance(item, ValueNotSecretException):
            return (f"{item.key} is set in {item.provider_name}, which dlt does not read secrets from: "
                    "move it to .dlt/secrets.toml or the environment")
        if isinstance(item, ConfigFieldMissingException):
            fields = list(getattr(item, "fields", []) or [])
            spec = getattr(item, "spec_name", "") or ""
            if any("api_key" in f for f in fields) and "estination" not in spec:
                return ("Klaviyo API key missing: set KLAVIYO_API_KEY (or sources.klaviyo.api_key in "
                        ".dlt/secrets.toml), or use --auth maton with MATON_API_KEY")
            missing = missing_fields(item.traces)
            what = "destination credentials" if "estination" in spec or "credentials" in fields else "configuration"
            if not missing:
                return f"{what} missing: {', '.join(fields) or spec}; set it in .dlt/secrets.toml or the environment"
            hints = [f"{env} or `{name.rsplit('.', 1)[-1]}` under [{section}] in .dlt/secrets.toml" if env
                     else f"`{name}` in .dlt/secrets.toml or the environment" for name, env, section in missing]
            return f"{what} missing: {', '.join(n for n, _, _ in missing)}; set {'; '.join(hints)}"
    return None


def missing_fields(traces: dict, prefix: str = "") -> list[tuple[str, str | None, str | None]]:
    """Every field dlt could not resolve, nested configurations (``credentials.password``) included.

    Args:
        traces: ``ConfigFieldMissingException.traces``: field -> lookups tried, or a nested ``LookupTraces``.
        prefix: the dotted path of the configuration holding these fields.

    Returns:
        (dotted field, environment variable, TOML section) per missing leaf field; the variable
        and section are the most specific ones dlt looked at without a pipeline-name prefix.
    """
    found: list[tuple[str, str | None, str | None]] = []
    for field_name, lookups in traces.items():
        nested = [t for t in lookups if hasattr(t, "traces")]
        if nested:
            found += missing_fields(nested[0].traces, f"{prefix}{field_name}.")
            continue
        plain = [t for t in lookups
                 if getattr(t, "key", None) == "__".join([*getattr(t, "sections", []), field_name]).upper()]
        if plain:
            found.append((f"{prefix}{field_name}", plain[0].key, ".".join(plain[0].sections)))
        else:
            found.append((f"{prefix}{field_name}", None, None))
    return found


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def first_lines(items: Iterable[str]) -> str:
    return "; ".join(_first_line(i) for i in items if i)
