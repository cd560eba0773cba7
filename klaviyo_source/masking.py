"""Masking of secrets in text and in plain data, in every form a secret takes when printed.

A key reaches text raw (``Klaviyo-API-Key pk_...``), escaped inside a ``repr`` of bytes or a
string (``b'... pk_...\\n'``), JSON-escaped inside a JSON log line, or URL-quoted.  A ``Masker``
knows each registered secret by the key itself, without surrounding whitespace, and by each of
those representations (once and twice escaped), and replaces any of them by ``***``.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


def representations(secret: str) -> set[str]:
    """The forms ``secret`` takes in printed text: itself, repr/bytes-repr/JSON/URL escaped, and
    each escaped form escaped once more (a repr inside a JSON line)."""
    once = {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret.encode("utf-8"))[2:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }
    twice = {form for one in once for form in (repr(one)[1:-1], json.dumps(one)[1:-1])}
    return {form for form in once | twice if form}


class Masker:
    """Replaces every registered secret (in any of its ``representations``) by ``***``.

    Args:
        secrets: secrets to register at once; ``None`` and blank values are ignored.
    """

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: Any) -> None:
        """Register a secret; surrounding whitespace is not part of it."""
        if secret is None:
            return
        core = str(secret).strip()
        if len(core) < MIN_SECRET_LENGTH:
            return
        forms = representations(core)
        with self._lock:
            if forms <= self._forms:
                return
            self._forms |= forms
            # longest first, so a form containing another one is masked whole
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``***``."""
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds a registered secret in any representation."""
        pattern = self._pattern
        return pattern is not None and bool(text) and pattern.search(text) is not None

    def deep(self, value: Any) -> Any:
        """``value`` with secrets masked in every string it holds (through lists, tuples including
        named tuples, sets and dicts); the same object when there was nothing to mask."""
        if self._pattern is None:
            return value
        return _deep(self, value, depth=0)


def _deep(mask: Masker, value: Any, depth: int) -> Any:
    if isinstance(value, str):
        masked = mask(value)
        return value if masked == value else masked
    if isinstance(value, bytes):
        text = value.decode("utf-8", "surrogateescape")
        masked = mask(text)
        return value if masked == text else masked.encode("utf-8", "surrogateescape")
    if depth > 50:
        return value
    if isinstance(value, dict):
        pairs, changed = [], False
        for key, item in value.items():
            masked_key, masked_item = _deep(mask, key, depth + 1), _deep(mask, item, depth + 1)
            changed = changed or masked_key is not key or masked_item is not item
            pairs.append((masked_key, masked_item))
        return _rebuilt(value, pairs, dict) if changed else value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_deep(mask, item, depth + 1) for item in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        if isinstance(value, tuple) and hasattr(value, "_make"):  # a named tuple keeps its type
            return value._make(items)
        return _rebuilt(value, items, list if isinstance(value, list) else tuple)
    return value


def _rebuilt(value: Any, items: Any, plain: type) -> Any:
    try:
        return type(value)(items)
    except Exception:  # noqa: BLE001 - a subclass with another constructor: a plain container will do
        return plain(items)


# Every secret this process was configured with; errors, logs and dlt's trace pass through it.
SECRETS = Masker()


_QUERY = re.compile(r"((?:https?://[^\s'\"?]+)?/[\w\-./{}%]*)\?[^\s'\"]*")


def without_query(text: str) -> str:
    """``text`` with the query string of every URL or path cut (filters may hold emails)."""
    return _QUERY.sub(r"\1?…", text)
