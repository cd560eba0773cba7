"""Filters on the loggers of dlt and urllib3: no secret and no personal data in their records, and
no per-page noise.

* Secrets: every registered secret (``klaviyo_source.masking.SECRETS``) is masked in dlt's
  records, tracebacks included, whatever handler or format (text, JSON) prints them.
* Personal data: urllib3 logs each request's URL at DEBUG; query strings (``any(email,[...])``
  filters of the reverse sync's lookups) are cut.  Request bodies and queries never reach dlt's
  log either (``client._ParsingRESTClient._log_request``).
* Noise: dlt warns on every page that a JSON column's hint differs from its arrow type, although
  the destination loads them as JSON exactly as intended (tested on DuckDB and PostgreSQL).
"""

from __future__ import annotations

import logging
import threading
import traceback

from klaviyo_source.masking import SECRETS, without_query

_MESSAGE = "when merging arrow schema with dlt schema, several column hints were different"
_installed = False
_lock = threading.Lock()


class _JsonHintFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _MESSAGE not in record.getMessage()


class SecretMaskingFilter(logging.Filter):
    """Masks registered secrets in a record's message and traceback.

    A traceback holding a secret is formatted and masked here and travels as ``exc_text``
    (``exc_info`` cleared), so no formatter prints the unmasked one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not SECRETS:
            return True
        message = record.getMessage()
        masked = SECRETS(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            if SECRETS.found_in(text):
                record.exc_info, record.exc_text = None, SECRETS(text)
        elif record.exc_text:
            record.exc_text = SECRETS(record.exc_text)
        if record.stack_info:
            record.stack_info = SECRETS(record.stack_info)
        return True


class UrlQueryFilter(logging.Filter):
    """Cuts the query string of URLs in a record's arguments (urllib3 logs ``GET /path?query``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(without_query(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        elif isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = without_query(record.msg)
        return True


def install() -> None:
    """Add the filters to dlt's and urllib3's loggers (once per process)."""
    global _installed
    with _lock:
        if _installed:
            return
        dlt_logger = logging.getLogger("dlt")
        dlt_logger.addFilter(_JsonHintFilter())
        dlt_logger.addFilter(SecretMaskingFilter())
        logging.getLogger("urllib3.connectionpool").addFilter(UrlQueryFilter())
        _installed = True
