"""Klaviyo's ``filter`` query language: parsing and validation against one operation.

Syntax (https://developers.klaviyo.com/en/docs/filtering_)::

    equals(email,'a@b.com')                 strings single- or double-quoted
    any(id,['a','b'])                       lists in brackets
    greater-than(datetime,2024-01-01T00:00:00+00:00)   datetimes UNQUOTED (ISO 8601)
    equals(published,true)                  booleans, numbers, null
    has(profile)                            one-argument operators
    and(equals(a,'x'),less-than(b,3))       explicit and(...)
    equals(a,'x'),less-than(b,3)            comma at top level = and

Each endpoint allows only the fields/operators listed in its spec description
(``Operation.filters``); anything else is an :class:`~klaviyo_sandbox.errors.ApiError` 400.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError
from .store import UTC

OPERATORS = {"equals", "any", "contains", "contains-any", "contains-all", "starts-with", "ends-with", "has",
             "greater-than", "greater-or-equal", "less-than", "less-or-equal"}
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_FIELD = re.compile(r"^[A-Za-z_$][\w$.\-]*$")


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str
    value: Any = None


def filter_error(detail: str) -> ApiError:
    return ApiError(400, "invalid", "Invalid input.", detail, parameter="filter")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, what: str) -> ApiError:
        # Klaviyo's wording for syntax errors, plus where the parser stopped
        return filter_error(f"Invalid filter provided. Verify your parentheses match ({what} at position {self.pos}).")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t", "\n"):
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_ws()
        if self.peek() != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def parse(self) -> list[Condition]:
        conditions = self.call_list()
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.error("unexpected text")
        return conditions

    def call_list(self) -> list[Condition]:
        conditions = self.call()
        self.skip_ws()
        while self.peek() == ",":
            self.pos += 1
            conditions += self.call()
            self.skip_ws()
        return conditions

    def name(self) -> str:
        self.skip_ws()
        match = re.compile(r"[A-Za-z_$][\w$.\-]*").match(self.text, self.pos)
        if not match:
            raise self.error("expected an operator or field name")
        self.pos = match.end()
        return match.group(0)

    def call(self) -> list[Condition]:
        operator = self.name()
        self.expect("(")
        if operator == "and":
            inner = self.call_list()
            self.expect(")")
            return inner
        if operator in ("or", "not"):
            raise filter_error(f"Invalid filter provided: the '{operator}' operator is not supported by this endpoint.")
        if operator not in OPERATORS:
            raise filter_error(f"Invalid filter provided: unknown operator '{operator}'.")
        field = self.name()
        self.skip_ws()
        if operator == "has":
            self.expect(")")
            return [Condition(field, operator, None)]
        self.expect(",")
        value = self.value()
        self.expect(")")
        return [Condition(field, operator, value)]

    def value(self) -> Any:
        self.skip_ws()
        char = self.peek()
        if char in ("'", '"'):
            end = self.pos + 1
            out = []
            while end < len(self.text) and self.text[end] != char:
                if self.text[end] == "\\" and end + 1 < len(self.text):
                    end += 1
                out.append(self.text[end])
                end += 1
            if end >= len(self.text):
                raise self.error("unterminated string")
            self.pos = end + 1
            return "".join(out)
        if char == "[":
            self.pos += 1
            items: list[Any] = []
            self.skip_ws()
            if self.peek() == "]":
                self.pos += 1
                return items
            while True:
                items.append(self.value())
                self.skip_ws()
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.expect("]")
                return items
        # bare literal: up to the next ',' ')' or ']'
        match = re.compile(r"[^,)\]]+").match(self.text, self.pos)
        if not match:
            raise self.error("expected a value")
        self.pos = match.end()
        raw = match.group(0).strip()
        lowered = raw.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("null", "none"):
            return None
        if _DATETIME.match(raw) and "-" in raw[:5]:
            try:
                parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise self.error(f"invalid datetime {raw!r}") from None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        if _NUMBER.match(raw):
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        raise filter_error(
            f"Invalid filter provided: {raw!r} is not a valid value; quote strings ('text'), "
            "and write datetimes unquoted in ISO 8601 (2024-01-01T00:00:00+00:00)."
        )


def parse_filter(text: str) -> list[Condition]:
    """Parse a filter expression into AND-ed conditions (no validation against an endpoint)."""
    if not text or not text.strip():
        raise filter_error("Invalid filter provided: the filter is empty.")
    return _Parser(text).parse()


def validate(conditions: list[Condition], allowed: dict[str, tuple[str, ...]], now: dt.datetime) -> None:
    """Check fields/operators against the endpoint's allowed list and datetimes against ``now``."""
    for cond in conditions:
        if cond.field not in allowed:
            fields = ", ".join(f"'{f}'" for f in allowed) or "none"
            raise filter_error(f"'{cond.field}' is not an allowed filter field for this endpoint. Allowed fields: {fields}.")
        if cond.operator not in allowed[cond.field]:
            ops = ", ".join(f"'{o}'" for o in allowed[cond.field])
            raise filter_error(f"'{cond.operator}' is not an allowed operator for '{cond.field}'. Allowed: {ops}.")
        if cond.operator == "any" and not isinstance(cond.value, list):
            raise filter_error(f"Invalid filter provided: 'any' on '{cond.field}' needs a list, e.g. any({cond.field},['a','b']).")
        if cond.operator in ("equals",) and isinstance(cond.value, list) and "any" not in allowed[cond.field]:
            pass  # Klaviyo accepts equals(name,['x']) on some endpoints; treated as a one-of
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        for value in values:
            if isinstance(value, dt.datetime) and value > now + dt.timedelta(seconds=1):
                raise filter_error(
                    f"Invalid filter provided: '{cond.field}' datetime {value.isoformat()} is in the future."
                )
