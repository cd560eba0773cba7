"""Reading API keys: the one place a configured key is cleaned before use.

Keys often arrive with whitespace around them (``KEY="$(cat key.txt)"$'\\n'``, a padded line in a
secrets file); sent as is, the newline makes the ``Authorization`` header invalid and the
HTTP library prints the whole header in its error.  Every key read by the source, the reverse
sync, the Maton client or the CLI goes through :func:`clean_key`.
"""

from __future__ import annotations

from typing import Any

from klaviyo_source.masking import SECRETS


def clean_key(value: Any) -> str | None:
    """A configured key without the whitespace around it, registered for masking.

    Args:
        value: the key as configured (str, dlt secret value, or None).

    Returns:
        The stripped key, or None when ``value`` is None or only whitespace.
    """
    if value is None:
        return None
    key = str(value).strip()
    if not key:
        return None
    SECRETS.add(key)
    return key
