"""Column names that are the same on every destination.

PostgreSQL cuts identifiers at 63 characters and dlt then shortens longer names with a hash of
its own, so a long name would differ between DuckDB and PostgreSQL (and from docs/tables.md).
The source therefore never hands dlt a name longer than ``MAX_IDENTIFIER_LENGTH``: a column path
(``subscriptions`` / ``sms`` / ``transactional`` / ``can_receive_sms_transactional``) is joined
with ``__`` and, only when that is too long, shortened by one fixed rule:

1. drop from the last segment the words (``_``-separated) the earlier segments already say:
   ``subscriptions__sms__transactional__can_receive_sms_transactional`` (64) becomes
   ``subscriptions__sms__transactional__can_receive``;
2. if that is still too long, empties the last segment, or names another column already:
   the first 54 characters (trailing ``_`` removed), ``_`` and the first 8 hex digits of the
   SHA-256 of the full name.

The rule depends on the name alone, so it gives the same name on every destination and run.
"""

from __future__ import annotations

import hashlib
from typing import Collection, Sequence

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL (NAMEDATALEN - 1): the shortest limit of the supported destinations
SEPARATOR = "__"
_HASH_DIGITS = 8


def hashed(name: str) -> str:
    """Rule 2: ``name`` cut to fit, with a stable hash of the whole name."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HASH_DIGITS]
    return f"{name[:MAX_IDENTIFIER_LENGTH - _HASH_DIGITS - 1].rstrip('_')}_{digest}"


def column_name(parts: Sequence[str], taken: Collection[str] = ()) -> str:
    """The column name of a path of (already normalised) segments, at most 63 characters.

    Args:
        parts: path segments, e.g. ``("location", "city")``.
        taken: names already used in the table (a shortened name never takes one of them).

    Returns:
        ``"__".join(parts)`` when it fits, else the name shortened by the module's rule.
    """
    name = SEPARATOR.join(parts)
    if len(name) <= MAX_IDENTIFIER_LENGTH:
        return name
    said = {word for part in parts[:-1] for word in part.split("_") if word}
    leaf = "_".join(word for word in parts[-1].split("_") if word and word not in said)
    if leaf:
        shorter = SEPARATOR.join([*parts[:-1], leaf])
        if len(shorter) <= MAX_IDENTIFIER_LENGTH and shorter not in taken:
            return shorter
    return hashed(name)
