"""Values no destination can store, cleaned out of page bodies before they are decoded.

JSON may carry ``\\u0000`` (NUL) and unpaired UTF-16 surrogate escapes (``\\ud800`` alone).
PostgreSQL rejects NUL in ``text`` and both in ``jsonb``; Python/Arrow cannot even encode a lone
surrogate as UTF-8.  One such value in one record used to fail every PostgreSQL load.  So, on
every destination alike, the page body is rewritten before decoding:

* ``\\u0000`` is removed (``"Ann\\u0000e"`` loads as ``Anne``);
* a lone surrogate escape becomes ``\\ufffd`` (U+FFFD, the Unicode replacement character);
  surrogate pairs (emoji written as escapes) are kept.

Raw control characters cannot occur in valid JSON strings, so the escapes are the only way these
values arrive.  This is the hot path, so the happy path costs one ``memchr`` over the body:

* a body without a backslash (the common case) has no escape at all and is decoded as it came;
* NUL decodes fine, so a body with a backslash is searched for ``\\u0000`` and rewritten if found;
* a lone surrogate makes both decoders (msgspec, orjson) fail, so such a body is rewritten only
  after a failed decode, and decoded again.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
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
    """Whether a JSON body holds a NUL escape (a lone surrogate shows up as a decode error instead)."""
    first = body.find(b"\\")  # memchr: bodies without any escape are the common case
    return first >= 0 and body.find(b"\\u0000", first) >= 0


def clean_json(body: bytes) -> bytes:
    """The JSON body with NUL escapes removed and lone surrogate escapes replaced by U+FFFD.

    Args:
        body: a JSON document as received.

    Returns:
        The same bytes object when it holds no escape at all, else the rewritten document.
    """
    if body.find(b"\\") < 0:
        return body
    return _ESCAPE.sub(_fix, body)


_DECODE_ERRORS = (msgspec.DecodeError, orjson.JSONDecodeError)


class CleaningDecoder:
    """Wraps a decoder (``msgspec.json.Decoder`` or ``orjson``) so values no destination can store
    are cleaned out of every body it decodes."""

    def __init__(self, inner: Any):
        self.inner = inner

    def decode(self, body: bytes) -> Any:
        """Decode ``body``, cleaned by :func:`clean_json` when it holds a NUL or a lone surrogate.

        Args:
            body: a JSON document as received.

        Returns:
            What the wrapped decoder makes of the (cleaned) body; its own error when the body is
            broken for another reason (e.g. truncated).
        """
        if needs_cleaning(body):
            return self.inner.decode(clean_json(body))
        try:
            return self.inner.decode(body)
        except _DECODE_ERRORS:
            cleaned = clean_json(body)
            if cleaned == body:
                raise
            return self.inner.decode(cleaned)


class _Orjson:
    @staticmethod
    def decode(body: bytes) -> Any:
        return orjson.loads(body) if body else {}


# for readers that convert orjson dicts (child endpoints)
CLEAN_ORJSON = CleaningDecoder(_Orjson())
