"""JSON:API error bodies exactly as Klaviyo returns them (``errors[]`` with id/status/code/title/detail/source)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson


class ApiError(Exception):
    """Raise from any handler to answer with Klaviyo's error envelope."""

    def __init__(self, status: int, code: str, title: str, detail: str, parameter: str | None = None,
                 pointer: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.parameter = parameter
        self.pointer = pointer
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        source: dict[str, str] = {}
        if self.parameter is not None:
            source["parameter"] = self.parameter
        elif self.pointer is not None:
            source["pointer"] = self.pointer
        error: dict[str, Any] = {"id": str(uuid.uuid4()), "status": self.status, "code": self.code,
                                 "title": self.title, "detail": self.detail, "source": source, "links": {}, "meta": {}}
        return {"errors": [error]}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body())


def invalid(detail: str, parameter: str | None = None, pointer: str | None = None) -> ApiError:
    return ApiError(400, "invalid", "Invalid input.", detail, parameter=parameter, pointer=pointer)


def not_found(detail: str = "Not found.") -> ApiError:
    return ApiError(404, "not_found", "Not found.", detail)


def not_authenticated() -> ApiError:
    return ApiError(401, "not_authenticated", "Authentication credentials were not provided.",
                    "Missing or invalid private key.", pointer="/data/")


def authentication_failed() -> ApiError:
    return ApiError(401, "authentication_failed", "Incorrect authentication credentials.",
                    "Incorrect authentication credentials.", pointer="/data/")


def throttled(retry_after: int) -> ApiError:
    return ApiError(429, "throttled", "Request was throttled.",
                    f"Request was throttled. Expected available in {retry_after} second{'s' if retry_after != 1 else ''}.",
                    headers={"Retry-After": str(retry_after)})


def server_error(status: int = 500) -> ApiError:
    titles = {500: "A server error occurred.", 502: "Bad gateway.", 503: "Service unavailable.", 504: "Gateway timeout."}
    return ApiError(status, "error", titles.get(status, "A server error occurred."),
                    "An unexpected error occurred; please retry.")
