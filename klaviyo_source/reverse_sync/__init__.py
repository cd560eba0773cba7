"""Reverse sync (issue #5): push an audience built in SQL into Klaviyo as profiles and list members.

    from klaviyo_source.reverse_sync import reverse_sync, ReverseSyncConfig

    report = reverse_sync("audience.toml", destination="klaviyo.duckdb", dataset_name="klaviyo_data",
                          api_key=KEY)
    print(report.summary())

Only what changed since the last accepted run is sent; see ``docs/reverse_sync.md``.
"""

from .mapping import ConfigError, ConsentMapping, ListTarget, ReverseSyncConfig
from .report import ReverseSyncReport
from .run import load_config, reverse_sync
from .source_rows import SourceError
from .state import REJECTS_TABLE, STATE_TABLE
from .writer import ReverseSyncError, make_client

__all__ = [
    "ConfigError", "ConsentMapping", "ListTarget", "REJECTS_TABLE", "ReverseSyncConfig", "ReverseSyncError",
    "ReverseSyncReport", "STATE_TABLE", "SourceError", "load_config", "make_client", "reverse_sync",
]
