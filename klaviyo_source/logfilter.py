"""Silences dlt's per-page warning about JSON hints on arrow text columns.

JSON columns travel as Arrow ``string`` (serialised with orjson) and carry a ``json``
column hint; dlt warns on every page that the hint differs from the arrow type, although
the destination loads them as JSON exactly as intended (tested on DuckDB and PostgreSQL).
"""

from __future__ import annotations

import logging

_MESSAGE = "when merging arrow schema with dlt schema, several column hints were different"
_installed = False


class _JsonHintFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _MESSAGE not in record.getMessage()


def install() -> None:
    global _installed
    if not _installed:
        logging.getLogger("dlt").addFilter(_JsonHintFilter())
        _installed = True
