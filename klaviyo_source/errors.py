"""One-line errors: each names what to fix, never a secret."""

from __future__ import annotations

import requests

from klaviyo_source.masking import SECRETS, Masker

__all__ = ["KlaviyoSourceError", "KlaviyoConfigError", "KlaviyoAPIError", "Masker", "SECRETS", "api_error",
           "one_line", "find_source_error", "describe"]


class KlaviyoSourceError(Exception):
    """Base class: ``str(error)`` is one line telling the user what to fix."""


class KlaviyoConfigError(KlaviyoSourceError, ValueError):
    """Bad source configuration (missing key, unknown resource, malformed date ...)."""


class KlaviyoAPIError(KlaviyoSourceError, requests.HTTPError):
    """Klaviyo answered with an error status; carries the response so retry logic can inspect it."""

    def __init__(self, message: str, response: requests.Response | None = None):
        KlaviyoSourceError.__init__(self, message)
        self.response = response
        self.request = response.request if response is not None else None
        self.status_code = response.status_code if response is not None else None

    def __str__(self) -> str:  # HTTPError.__str__ would otherwise be used
        return self.args[0]


_HINTS = {
    400: "fix the request parameters",
    401: "check api_key and the auth scheme",
    403: "the key lacks a scope this resource needs",
    404: "unknown endpoint: check base_url and the resource name",
    429: "rate limited: retries exhausted",
}


def one_line(text: str) -> str:
    """Collapse whitespace so a message fits on one line."""
    return " ".join(str(text).split())


def api_error(response: requests.Response, endpoint: str, mask: Masker) -> KlaviyoAPIError:
    """The one-line error for a failed response: endpoint, status, Klaviyo's error detail, a hint."""
    detail = ""
    try:
        errors = response.json().get("errors") or []
        if errors:
            first = errors[0]
            source = first.get("source") or {}
            title, text = first.get("title") or "", first.get("detail") or ""
            # Klaviyo often repeats the title as the detail ("Incorrect authentication credentials.")
            parts = [text] if title.strip() in text else [title, text]
            where = source.get("parameter") or source.get("pointer")
            if where:
                parts.append(f"(at {where})")
            detail = " ".join(p for p in parts if p)
    except Exception:  # noqa: BLE001 - body is not JSON:API; fall back to text
        detail = (response.text or "")[:200]
    message = f"Klaviyo {endpoint} -> {response.status_code} {response.reason or ''}: {detail or 'no detail'}"
    hint = _HINTS.get(response.status_code)
    if hint:
        message += f" [{hint}]"
    return KlaviyoAPIError(SECRETS(mask(one_line(message))), response)


def find_source_error(exc: BaseException) -> KlaviyoSourceError | None:
    """Walk an exception chain (dlt wraps resource errors) to the KlaviyoSourceError inside."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KlaviyoSourceError):
            return current
        stack.extend([current.__cause__, current.__context__])
        inner = getattr(current, "exception", None)  # dlt's PipelineStepFailed keeps it here
        if isinstance(inner, BaseException):
            stack.append(inner)
    return None


def describe(exc: BaseException) -> str:
    """One line for any exception raised by a pipeline run of this source (secrets masked)."""
    found = find_source_error(exc)
    if found is not None:
        return SECRETS(str(found))
    return SECRETS(one_line(f"{type(exc).__name__}: {exc}"))[:500]
