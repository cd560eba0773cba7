"""The slices a stream's list endpoint is read in: its declared partitions, split by ``archived``.

Klaviyo leaves archived records out of a listing unless the filter names ``archived``
(``get_campaigns``, ``get_flows``).  Every endpoint whose spec offers an ``archived`` filter is
therefore read twice, ``equals(archived,false)`` and ``equals(archived,true)``, by the resource,
by the deletion sweep's id listing and by child reads listing their parents, so archived
records load, keep their children, and are never taken for deleted ones.
"""

from __future__ import annotations

import functools
from typing import Any

from klaviyo_source.columns import filter_operators
from klaviyo_source.filters import condition

ARCHIVED = "archived"


@functools.lru_cache(maxsize=None)
def _splits_archived(stream: Any) -> bool:
    return "equals" in filter_operators(stream).get(ARCHIVED, ())


def read_partitions(stream: Any) -> list[list[str]]:
    """Filter conditions of every slice to read (``[[]]``: one unfiltered read).

    Args:
        stream: a ``Stream`` row (its ``partitions`` and its spec operation).

    Returns:
        One list of filter conditions per slice; together the slices cover every record.
    """
    declared = [[(op, field, value) for op, field, value in p.conditions] for p in stream.partitions] or [[]]
    if _splits_archived(stream) and not any(field == ARCHIVED for p in declared for _, field, _ in p):
        declared = [p + [("equals", ARCHIVED, archived)] for p in declared for archived in (False, True)]
    return [[condition(op, field, value) for op, field, value in p] for p in declared]
