"""Values no destination can store, cleaned out of page bodies before they are decoded.

JSON may carry ``\\u0000`` (NUL) and unpaired UTF-16 surrogate escapes (``\\ud800`` alone).
PostgreSQL rejects NUL in ``text`` and both in ``jsonb``; Python/Arrow cannot even encode a lone
surrogate as UTF-8.  One such value in one record used to fail every PostgreSQL load.  So, on
every destination alike, the page body is rewritten before decoding:

* ``\\u0000`` is removed (``"Ann\\u0000e"`` loads as ``Anne``);
* a lone surrogate escape becomes ``\\ufffd`` (U+FFFD, the Unicode replacement character);
  surrogate pairs (emoji written as escapes) are kept.

Raw control characters cannot occur in valid JSON strings, so the escapes are the only way these
values arrive.  The check is a few byte searches over the body; pages without a match (nearly
all) are decoded as they came, and only a page that holds a marker is rewritten escape by escape.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# every backslash escape, so that an escaped backslash (\\) followed by "u0000" is not read as NUL
_ESCAPE = re.compile(
    rb"\\(?:(?P<nul>u0000)"
    rb"|(?P<high>u[dD][89abAB][0-9a-fA-F]{2})(?P<low>\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    rb"|(?P<lone>u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|.)",
    re.S,
)
_REPLACEMENT = b"\\ufffd"


def _fix(match: re.Match[bytes]) -> bytes:
    if match.group("nul"):
        return b""
    if match.group("high"):
        return match.group(0) if match.group("low") else _REPLACEMENT
    if match.group("lone"):
        return _REPLACEMENT
    return match.group(0)


def needs_cleaning(body: bytes) -> bool:
    """Whether a JSON body may hold a NUL or a lone surrogate escape (cheap byte searches)."""
    return b"\\u0000" in body or b"\\ud" in body or b"\\uD" in body


def clean_json(body: bytes) -> bytes:
    """The JSON body with NUL escapes removed and lone surrogate escapes replaced by U+FFFD.

    Args:
        body: a JSON document as received.

    Returns:
        The same bytes object when there is nothing to clean, else the rewritten document.
    """
    if not needs_cleaning(body):
        return body
    return _ESCAPE.sub(_fix, body)


class CleaningDecoder:
    """Wraps a decoder (``msgspec.json.Decoder`` or ``orjson``) so every body is cleaned first."""

    def __init__(self, inner: Any):
        self.inner = inner

    def decode(self, body: bytes) -> Any:
        """Decode ``body`` after :func:`clean_json`."""
        return self.inner.decode(clean_json(body))


class _Orjson:
    @staticmethod
    def decode(body: bytes) -> Any:
        return orjson.loads(body) if body else {}


# for readers that convert orjson dicts (child endpoints)
CLEAN_ORJSON = CleaningDecoder(_Orjson())
