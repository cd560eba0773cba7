"""The outcome of one reverse-sync run: counts, samples (dry run) and a printable summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ReverseSyncReport:
    """Counts of one run. ``created``/``updated`` are relative to this sync's state: an identity
    the sync never pushed before is *created*, one whose mapped values changed is *updated*."""

    sync_name: str
    run_id: str
    dry_run: bool = False
    list_id: str | None = None
    list_created: bool = False
    read: int = 0
    unchanged: int = 0
    sent: int = 0  # profiles sent through bulk-import jobs
    created: int = 0
    updated: int = 0
    cleared: int = 0  # profiles whose NULLed fields were cleared via profile-import
    rejected: int = 0  # all stages
    rejected_local: int = 0
    rejected_remote: int = 0  # import-errors, 409 conflicts, invalid values on clear
    added_to_list: int = 0
    removed_from_list: int = 0
    subscribed: int = 0
    unresolved_removals: int = 0  # departed members whose Klaviyo id could not be found
    jobs: int = 0
    requests: int = 0
    seconds: float = 0.0
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # dry run: what would happen
    would: dict[str, int] = field(default_factory=dict)  # dry run: counts per action

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few human lines (the CLI prints them)."""
        head = f"reverse sync {self.sync_name!r}" + (" (dry run, nothing sent)" if self.dry_run else "")
        lines = [head + f": read {self.read}, unchanged {self.unchanged}, rejected {self.rejected}"
                 f" ({self.rejected_local} locally, {self.rejected_remote} by Klaviyo)"]
        if self.dry_run:
            lines.append("would: " + ", ".join(f"{k} {v}" for k, v in self.would.items()))
            for action, rows in self.samples.items():
                for row in rows:
                    lines.append(f"  {action}: {row}")
        else:
            lines.append(f"sent {self.sent} in {self.jobs} bulk job(s) (created {self.created}, updated {self.updated}),"
                         f" cleared {self.cleared}, added to list {self.added_to_list},"
                         f" removed from list {self.removed_from_list}, subscribed {self.subscribed}")
            if self.unresolved_removals:
                lines.append(f"{self.unresolved_removals} departed member(s) not removed: no Klaviyo profile id found")
        if self.list_id:
            lines.append(f"list {self.list_id}" + (" (created)" if self.list_created else ""))
        lines.append(f"{self.requests} request(s), {self.seconds:.1f}s")
        return "\n".join(lines)
