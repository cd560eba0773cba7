"""``flatten_properties=True``: free-form bags (``profiles.properties``, ``events.event_properties``)
as columns, without losing a value to name collisions.

Klaviyo property keys are free text, dlt column names are not: ``Favorite Color``,
``favorite color`` and ``favorite.color`` all become ``favorite_color``, and letters outside
a-z become ``x`` (``Цвет`` and ``颜色`` would both be ``x``).  So:

* a key gets a column of its own, ``<bag>__<key as dlt names it>`` (nested objects:
  ``<bag>__<key>__<sub key>``; 63 characters at most, see naming.py), only when that name spells
  the key: the same ASCII letters and digits, case, spaces and punctuation aside;
* a column belongs to the first key that claimed it, for good: the claim is kept in the
  resource's state (``flattened_columns``), so a later run whose only profile spells the key
  another way does not change what the column holds;
* every other value stays in the bag's JSON column under its original key: keys without a
  column of their own (non-Latin names, names another key owns), objects holding objects in some
  rows and scalars in others, and empty objects.  The bag is NULL when nothing is left in it.

Nothing is dropped: the columns and the JSON bag of a row together hold every key and value.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from dlt.common.normalizers.naming.snake_case import NamingConvention

from klaviyo_source.naming import column_name

_NAMING = NamingConvention()
_LETTERS = re.compile(r"[^a-z0-9]")
_MISSING = object()


def column_part(key: str) -> str | None:
    """The column-name segment of a raw key, None when the name would not spell the key."""
    if not key.isascii():
        return None
    part = _NAMING.normalize_identifier(key)
    if not part or _LETTERS.sub("", part) != _LETTERS.sub("", key.lower()):
        return None
    return part


def _put(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


class BagFlattener:
    """Splits one bag column into owned columns and a JSON bag of the rest.

    Args:
        bag: the bag's column name (``properties``); flattened columns are ``<bag>__...``.
        claims: ``{column: [raw key, ...]}``, the owner of each column; updated in place (pass
            the resource state's dict to keep owners across runs).
    """

    def __init__(self, bag: str, claims: dict[str, list[str]] | None = None):
        self.bag = bag
        self.claims: dict[str, list[str]] = claims if claims is not None else {}

    def flatten(self, bags: list[Any]) -> tuple[dict[str, list[Any]], list[Any]]:
        """Columns and leftovers of a batch of bags (one per row; None / non-objects allowed).

        Returns:
            ``{column: values}`` (one value per row) and, per row, the dict of values that stay
            in the JSON bag (None when empty; a bag that is not an object is kept whole).
        """
        columns: dict[str, list[Any]] = {}
        leftovers: list[Any] = [None] * len(bags)
        for i, bag in enumerate(bags):
            if bag is not None and not isinstance(bag, dict):
                leftovers[i] = bag
        self._walk([b if isinstance(b, dict) else _MISSING for b in bags], (), (self.bag,), columns, leftovers)
        return columns, leftovers

    def _keep(self, leftovers: list[Any], path: tuple[str, ...], values: list[Any]) -> None:
        for i, value in enumerate(values):
            if value is not _MISSING:
                if leftovers[i] is None:
                    leftovers[i] = {}
                _put(leftovers[i], path, value)

    def _walk(self, objects: list[Any], path: tuple[str, ...], name: tuple[str, ...],
              columns: dict[str, list[Any]], leftovers: list[Any]) -> None:
        keys: dict[str, None] = {}
        for obj in objects:
            if obj is not _MISSING and obj:
                keys.update(dict.fromkeys(obj))
        for key in keys:
            values = [_MISSING if obj is _MISSING else obj.get(key, _MISSING) for obj in objects]
            present = [v for v in values if v is not _MISSING and v is not None]
            part = column_part(key)
            sub_path = path + (key,)
            if part is None:
                self._keep(leftovers, sub_path, values)
            elif present and all(isinstance(v, dict) for v in present):
                # empty objects have no column to go to: kept in the bag
                self._keep(leftovers, sub_path, [v if v == {} else _MISSING for v in values])
                self._walk([v if isinstance(v, dict) and v else _MISSING for v in values], sub_path,
                           name + (part,), columns, leftovers)
            elif any(isinstance(v, dict) for v in present):  # objects in some rows, scalars in others
                self._keep(leftovers, sub_path, values)
            else:
                column = column_name(name + (part,))
                owner = self.claims.setdefault(column, list(sub_path))
                if owner == list(sub_path) and column not in columns:
                    columns[column] = [None if v is _MISSING else v for v in values]
                else:
                    self._keep(leftovers, sub_path, values)
