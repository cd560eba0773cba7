"""Klaviyo's OpenAPI spec (revision 2026-07-15), indexed for the sandbox.

Everything the sandbox enforces per operation (rate limits, filter fields and
operators, sorts, page sizes, required parameters, response schemas) is read
from the spec here rather than retyped.  The spec ships gzipped inside the
package (MIT licence, see ``openapi/LICENSE``) so the sandbox works offline
after ``pip install``.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).with_name("openapi") / "stable.json.gz"
HTTP_METHODS = ("get", "post", "patch", "put", "delete")

_LIMIT_BLOCK = re.compile(r"Burst: `(\d+)/s`<br>Steady: `(\d+)/m`")
_EXTRA_LIMIT = re.compile(
    r"Rate limits when using the `([^`=]+)=([^`]+)` parameter in your API request:"
    r"<br>Burst: `(\d+)/s`<br>Steady: `(\d+)/m`"
)
_DAILY = re.compile(r"Daily: `(\d+)/d`")
_FILTER_LINE = re.compile(r"`([^`]+)`: ((?:`[a-z-]+`(?:, )?)+)")
_PAGE_SIZE = re.compile(r"Default: (\d+)\. Min: (\d+)\. Max: (\d+)\.")


@dataclass(frozen=True)
class RateLimit:
    """A fixed-window limit pair: requests per second (burst) and per minute (steady)."""

    burst_per_second: int
    steady_per_minute: int
    daily: int | None = None


@dataclass(frozen=True)
class PageSize:
    default: int
    minimum: int
    maximum: int


@dataclass
class Operation:
    """One spec operation with the rules the sandbox enforces for it."""

    operation_id: str
    method: str
    path: str
    rate_limit: RateLimit | None
    # e.g. {("additional-fields[profile]", "predictive_analytics"): RateLimit(10, 150)}
    extra_rate_limits: dict[tuple[str, str], RateLimit]
    filters: dict[str, tuple[str, ...]]  # field -> allowed operators
    filter_required: bool
    sorts: tuple[str, ...]
    page_size: PageSize | None
    parameters: dict[str, dict[str, Any]]
    response_schemas: dict[str, dict[str, Any]]  # status -> JSON schema (may hold $ref)
    request_schema: dict[str, Any] | None
    scopes: tuple[str, ...] = field(default=())

    @property
    def path_regex(self) -> re.Pattern[str]:
        return _path_regex(self.path)

    def enum(self, parameter: str) -> tuple[str, ...]:
        """Allowed values of an array/enum query parameter such as ``fields[profile]``."""
        schema = self.parameters.get(parameter, {}).get("schema", {})
        values = schema.get("enum") or schema.get("items", {}).get("enum") or ()
        return tuple(values)


@functools.lru_cache(maxsize=None)
def _path_regex(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")


def parse_rate_limits(description: str) -> tuple[RateLimit | None, dict[tuple[str, str], RateLimit]]:
    """Read ``Burst: `N/s` / Steady: `N/m``` (and per-parameter buckets) from a description."""
    extra: dict[tuple[str, str], RateLimit] = {}
    for param, value, burst, steady in _EXTRA_LIMIT.findall(description):
        extra[(param, value)] = RateLimit(int(burst), int(steady))
    main = None
    head = description.split("Rate limits when using", 1)[0]
    match = _LIMIT_BLOCK.search(head)
    if match:
        daily = _DAILY.search(head)
        main = RateLimit(int(match.group(1)), int(match.group(2)), int(daily.group(1)) if daily else None)
    return main, extra


def parse_filter_description(description: str) -> dict[str, tuple[str, ...]]:
    """Read the ``Allowed field(s)/operator(s)`` list of a ``filter`` parameter."""
    if "Allowed field(s)/operator(s)" not in description:
        return {}
    allowed = description.split("Allowed field(s)/operator(s):", 1)[1]
    result: dict[str, tuple[str, ...]] = {}
    for line in allowed.split("<br>"):
        match = _FILTER_LINE.match(line.strip())
        if match:
            result[match.group(1)] = tuple(re.findall(r"`([a-z-]+)`", match.group(2)))
    return result


class Spec:
    """Index over the OpenAPI document: operations by (method, path) and schema resolution."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        self.revision: str = document["info"]["version"]
        self.operations: dict[tuple[str, str], Operation] = {}
        for path, item in document["paths"].items():
            for method in HTTP_METHODS:
                if method in item:
                    self.operations[(method.upper(), path)] = self._operation(method, path, item[method])

    @staticmethod
    def _operation(method: str, path: str, raw: dict[str, Any]) -> Operation:
        description = raw.get("description", "")
        rate_limit, extra = parse_rate_limits(description)
        parameters = {p["name"]: p for p in raw.get("parameters", [])}
        filter_param = parameters.get("filter", {})
        page = None
        if "page[size]" in parameters:
            match = _PAGE_SIZE.search(parameters["page[size]"].get("description", ""))
            schema = parameters["page[size]"].get("schema", {})
            if match:
                page = PageSize(*(int(g) for g in match.groups()))
            elif "default" in schema:
                page = PageSize(schema["default"], schema.get("minimum", 1), schema.get("maximum", schema["default"]))
        responses = {}
        for status, response in raw.get("responses", {}).items():
            content = response.get("content", {})
            media = content.get("application/vnd.api+json") or content.get("application/json")
            if media and "schema" in media:
                responses[status] = media["schema"]
        body = raw.get("requestBody", {}).get("content", {})
        body_media = body.get("application/vnd.api+json") or body.get("application/json")
        scopes = tuple(re.findall(r"`([a-z-]+:[a-z]+)`", description.split("**Scopes:**", 1)[-1])) if "**Scopes:**" in description else ()
        return Operation(
            operation_id=raw.get("operationId", f"{method}_{path}"),
            method=method.upper(),
            path=path,
            rate_limit=rate_limit,
            extra_rate_limits=extra,
            filters=parse_filter_description(filter_param.get("description", "")),
            filter_required=bool(filter_param.get("required")),
            sorts=tuple(parameters.get("sort", {}).get("schema", {}).get("enum", ())),
            page_size=page,
            parameters=parameters,
            response_schemas=responses,
            request_schema=body_media.get("schema") if body_media else None,
            scopes=scopes,
        )

    def operation(self, method: str, path: str) -> Operation:
        """The operation for an exact spec path template, e.g. ``("GET", "/api/profiles")``."""
        return self.operations[(method.upper(), path)]

    def match(self, method: str, url_path: str) -> tuple[Operation, dict[str, str]] | None:
        """Find the operation serving a concrete URL path; returns it with the path parameters."""
        method = method.upper()
        literal = self.operations.get((method, url_path))
        if literal:
            return literal, {}
        for (op_method, _), op in self.operations.items():
            if op_method == method and "{" in op.path:
                found = op.path_regex.match(url_path)
                if found:
                    return op, found.groupdict()
        return None

    def schema(self, ref_or_schema: dict[str, Any]) -> dict[str, Any]:
        """Resolve a ``$ref`` into ``components``."""
        ref = ref_or_schema.get("$ref")
        if not ref:
            return ref_or_schema
        node: Any = self.document
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return node


@functools.lru_cache(maxsize=1)
def load_spec(path: str | None = None) -> Spec:
    """Load and index the bundled spec (cached: the document is ~3 MB)."""
    source = Path(path) if path else SPEC_PATH
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as handle:
        return Spec(json.loads(handle.read()))
