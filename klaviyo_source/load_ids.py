"""``_dlt_load_id`` on every row, whatever pipeline runs the source.

dlt's arrow path leaves ``_dlt_load_id`` out unless the *pipeline's* configuration says
``normalize.parquet_normalizer.add_dlt_load_id = true``; a source cannot set that for the
pipelines it runs in (the CLI, the Airflow DAG, a user's own ``dlt.pipeline``).  So every
resource of the source stamps its tables itself, with the id of the load package being
extracted: analysts can see what each load brought (``_dlt_loads``), on every destination.
With the dlt option also on, dlt writes the same value over it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from dlt.common.storages.load_package import CurrentLoadPackageStateNotAvailable, load_package_state

LOAD_ID = "_dlt_load_id"
LOAD_ID_HINT: dict[str, Any] = {
    "name": LOAD_ID,
    "data_type": "text",
    # nullable: tables loaded by earlier versions get the column added, and ADD COLUMN ... NOT NULL
    # fails on a table that has rows (PostgreSQL, DuckDB); those rows keep NULL until rewritten
    "nullable": True,
    "description": "id of the load that wrote this row (see _dlt_loads)",
}


def current_load_id() -> str | None:
    """The id of the load package being extracted; None outside a pipeline run."""
    try:
        return load_package_state()["load_id"]
    except CurrentLoadPackageStateNotAvailable:
        return None


def stamp(table: Any) -> Any:
    """``table`` with a ``_dlt_load_id`` column holding the current load id (as is outside a run).

    Args:
        table: a pyarrow table yielded by a resource (other items pass through).

    Returns:
        The table with the column set (replaced when already there).
    """
    if not isinstance(table, pa.Table):
        return table
    load_id = current_load_id()
    if load_id is None:
        return table
    if LOAD_ID in table.column_names:
        table = table.drop_columns([LOAD_ID])
    # dictionary-encoded: one string for the whole batch, not one per row
    column = pa.DictionaryArray.from_arrays(pa.nulls(table.num_rows, pa.int32()).fill_null(0),
                                            pa.array([load_id], pa.string()))
    return table.append_column(pa.field(LOAD_ID, column.type), column)


def stamp_load_ids(resource: Any) -> Any:
    """Make ``resource`` stamp every table it yields and declare the column.

    Args:
        resource: a dlt resource yielding pyarrow tables.

    Returns:
        The same resource.
    """
    resource.add_map(stamp)
    resource.apply_hints(columns={LOAD_ID: dict(LOAD_ID_HINT)})
    return resource
