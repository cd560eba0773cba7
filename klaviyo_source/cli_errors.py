"""Exit codes and the one-line error messages of the ``klaviyo-dlt`` command line.

Every failure is classified into an exit code and one line that says what to fix; secrets are
scrubbed from the line (``redact``).  Exit codes (documented in ``klaviyo-dlt --help``):

* 0 ok
* 1 sync failed (extraction, normalization or load error)
* 2 usage or configuration error (missing key, unknown resource/destination, bad date)
* 3 authentication/authorization failed (Klaviyo or Maton answered 401/403)
* 4 partial failure: some accounts of a multi-account sync failed, the others loaded
"""

from __future__ import annotations

from typing import Iterable, Iterator

EXIT_OK = 0
EXIT_SYNC_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_PARTIAL = 4

EXIT_CODES_HELP = (
    "exit codes: 0 ok | 1 sync failed | 2 usage/config error | 3 auth failed (401/403) | "
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


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (``__cause__``, ``__context__``, dlt's ``.exception``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (getattr(current, "exception", None), current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


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

    for item in exception_chain(exc):
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
    root = _innermost(exc)
    detail = _first_line(str(root)) or type(root).__name__
    if status in (401, 403):
        return AuthError(redact(
            f"Klaviyo rejected the credentials (HTTP {status}): check the API key / Maton connection "
            f"and its scopes ({detail})"
        ))
    step = getattr(exc, "step", None)
    where = f"{step} step failed" if step else "sync failed"
    return SyncFailed(redact(f"{where}: {detail}"))


def _missing_config(exc: BaseException) -> str | None:
    from dlt.common.configuration.exceptions import ConfigFieldMissingException

    for item in exception_chain(exc):
        if isinstance(item, ConfigFieldMissingException):
            fields = list(getattr(item, "fields", []) or [])
            spec = getattr(item, "spec_name", "") or ""
            if any("api_key" in f for f in fields) and "estination" not in spec:
                return ("Klaviyo API key missing: set KLAVIYO_API_KEY (or sources.klaviyo.api_key in "
                        ".dlt/secrets.toml), or use --auth maton with MATON_API_KEY")
            if "credentials" in fields or "estination" in spec:
                return (f"destination credentials missing ({spec or 'destination'}): set them in "
                        ".dlt/secrets.toml or as DESTINATION__<NAME>__CREDENTIALS")
            return f"configuration missing: {', '.join(fields) or spec}; set it in .dlt/config.toml or the environment"
    return None


def _innermost(exc: BaseException) -> BaseException:
    chain: list[BaseException] = list(exception_chain(exc))
    # prefer the deepest non-dlt-wrapper exception (the HTTP error, the database error, ...)
    for item in reversed(chain):
        if type(item).__module__.split(".")[0] not in ("dlt",):
            return item
    return chain[-1]


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def first_lines(items: Iterable[str]) -> str:
    return "; ".join(_first_line(i) for i in items if i)
