"""Quick-start helper: build an audience in SQL from the extracted ``profiles`` table, push it
into a Klaviyo list, and read the list's members back through the API."""

from __future__ import annotations

from typing import Any

from .report import ReverseSyncReport
from .run import reverse_sync
from .writer import make_client

DEMO_LIST = "Quick-start audience"


def demo_audience_query(limit: int = 25) -> str:
    """The demo audience: the first ``limit`` extracted profiles with an email, tagged with a property."""
    return (
        "select email, first_name, last_name, 'quick-start' as audience_source "
        f"from profiles where email is not null order by email limit {int(limit)}"
    )


def list_members(client: Any, list_id: str) -> list[dict[str, Any]]:
    """Members of a list as served by the API (get_profiles_for_list): id, email, names."""
    members = []
    params = {"fields[profile]": "email,first_name,last_name", "page[size]": 100}
    for page in client.pages(f"/api/lists/{list_id}/profiles", params):
        for item in page.get("data") or []:
            members.append({"id": item["id"], **(item.get("attributes") or {})})
    return members


def demo_reverse_sync(*, destination: Any, dataset_name: str, base_url: str, api_key: str,
                      credentials: Any = None, list_name: str = DEMO_LIST, limit: int = 25,
                      pipelines_dir: str | None = None) -> tuple[ReverseSyncReport, list[dict[str, Any]]]:
    """Reverse-sync the demo audience into ``list_name`` (created if missing, mirror mode);
    returns the run's report and the list's members read back from Klaviyo."""
    config = {
        "name": "quick_start",
        "query": demo_audience_query(limit),
        "identifiers": {"email": "email"},
        "attributes": {"first_name": "first_name", "last_name": "last_name"},
        "properties": {"audience_source": "audience_source"},
        "list": {"name": list_name, "create": True, "mode": "mirror"},
    }
    client = make_client(api_key, base_url)
    report = reverse_sync(config, destination=destination, dataset_name=dataset_name, credentials=credentials,
                          client=client, pipelines_dir=pipelines_dir)
    return report, list_members(client, report.list_id) if report.list_id else []
