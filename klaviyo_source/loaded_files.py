"""Loaded data leaves the pipeline's working folder: it lives in the warehouse only.

dlt keeps every load package's data files (``load/loaded/<load_id>/completed_jobs``) after a
successful load unless ``load.delete_completed_jobs`` is set.  Those files are copies of the
extracted profiles and of the reverse sync's state (emails, names, phone numbers), kept on the
machine that ran the pipeline for good.  Pipelines of this package delete them once loaded; a
package that failed keeps its files so a rerun can finish it.
"""

from __future__ import annotations

from typing import Any

import dlt

_SETTING = "load.delete_completed_jobs"


def drop_loaded_files(pipeline: Any) -> Any:
    """Have dlt delete ``pipeline``'s data files once they are loaded, unless the user set
    ``load.delete_completed_jobs`` (for all pipelines or this one) themselves.

    Args:
        pipeline: a dlt pipeline.

    Returns:
        The same pipeline.
    """
    scoped = f"{pipeline.pipeline_name}.{_SETTING}"
    if dlt.config.get(scoped) is None and dlt.config.get(_SETTING) is None:
        dlt.config[scoped] = True  # in memory, this process only; dlt resolves it per pipeline name
    return pipeline
