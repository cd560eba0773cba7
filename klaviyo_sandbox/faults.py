"""Injected faults, deterministic by seed and switchable per endpoint at runtime.

Config (a dict, JSON text, or a path to a JSON file)::

    {"seed": 1, "rules": [
        {"match": "get_events",   "kind": "error", "status": 503, "rate": 0.2},
        {"match": "/api/profiles", "kind": "throttle", "retry_after": 1, "times": 3},
        {"match": "get_events",   "kind": "drop", "rate": 0.1},
        {"match": "*",            "kind": "slow", "delay": 0.25, "rate": 0.5}
    ]}

Short form, one rule per endpoint: ``{"GET /api/profiles": {"status": 503, "rate": 0.5},
"get_events": {"kind": "drop"}}`` (kind defaults to ``error``, or ``throttle`` for status 429).

``match``: an operationId, a spec path template (``/api/events/{id}``), a concrete
path, any of these prefixed by a method (``GET /api/profiles``), or ``*``.  ``kind``: ``error`` (5xx JSON:API error, ``status`` default 500),
``throttle`` (429 storm with ``Retry-After: retry_after``), ``drop`` (headers with the
full Content-Length, part of the body, then the socket is closed: the client sees an
incomplete read), ``slow`` (sleep ``delay`` seconds, then answer normally).
Selection: ``rate`` (probability per matching request, default 1), ``times`` (only the
first N firings), ``skip`` (let the first N matching requests through).  Each rule
draws from its own ``random.Random(seed, rule index)`` so a given request sequence
always gets the same faults.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("error", "throttle", "drop", "slow")


@dataclass
class FaultRule:
    match: str
    kind: str
    rate: float = 1.0
    status: int = 500
    retry_after: int = 1
    delay: float = 0.5
    times: int | None = None
    skip: int = 0
    seen: int = 0
    fired: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, operation_id: str, spec_path: str, path: str, method: str = "GET") -> bool:
        match = self.match
        if " " in match:  # "GET /api/profiles"
            wanted_method, _, match = match.partition(" ")
            if wanted_method.upper() != method:
                return False
        return match in ("*", operation_id, spec_path, path)


@dataclass
class Fault:
    """What to do with one request."""

    kind: str
    status: int = 500
    retry_after: int = 1
    delay: float = 0.0


def load_fault_config(config: Any) -> dict[str, Any]:
    """Accept a dict, JSON text, or a path to a JSON file; returns the dict."""
    if config is None:
        return {"rules": []}
    if isinstance(config, (str, Path)):
        text = str(config).strip()
        if not text.startswith("{") and not text.startswith("["):
            path = Path(text)
            if not path.exists():
                raise ValueError(f"faults: {text!r} is neither JSON nor an existing file")
            text = path.read_text()
        config = json.loads(text)
    if isinstance(config, list):
        config = {"rules": config}
    if not isinstance(config, dict):
        raise ValueError("faults: expected an object {'seed': .., 'rules': [...]}")
    if "rules" not in config:
        # short form: {"<operationId | path | METHOD path | *>": {"status": 503, "rate": 0.5}, ...}
        seed = config.get("seed")
        rules = []
        for match, raw in config.items():
            if match == "seed":
                continue
            if not isinstance(raw, dict):
                raise ValueError(f"faults: the rule for {match!r} must be an object like {{'status': 503}}")
            rule = {"match": match, **raw}
            if "kind" not in rule:
                rule["kind"] = "throttle" if rule.get("status") == 429 else "error"
            if rule["kind"] == "throttle":
                rule.pop("status", None)
            rules.append(rule)
        config = {"rules": rules} if seed is None else {"seed": seed, "rules": rules}
    return config


class Faults:
    """The active fault rules; ``decide`` is called once per API request."""

    def __init__(self, config: Any = None, seed: int = 0):
        self._lock = threading.Lock()
        self.seed = seed
        self.rules: list[FaultRule] = []
        self.configure(config)

    def configure(self, config: Any) -> None:
        """Replace all rules (``None`` or ``{"rules": []}`` switches faults off)."""
        data = load_fault_config(config)
        seed = data.get("seed", self.seed)
        rules = []
        for index, raw in enumerate(data.get("rules", [])):
            unknown = set(raw) - {"match", "kind", "rate", "status", "retry_after", "delay", "times", "skip"}
            if unknown:
                raise ValueError(f"faults rule {index}: unknown keys {sorted(unknown)}")
            if raw.get("kind") not in KINDS:
                raise ValueError(f"faults rule {index}: kind must be one of {', '.join(KINDS)}")
            rule = FaultRule(match=str(raw.get("match", "*")), kind=raw["kind"], rate=float(raw.get("rate", 1.0)),
                             status=int(raw.get("status", 500)), retry_after=int(raw.get("retry_after", 1)),
                             delay=float(raw.get("delay", 0.5)), times=raw.get("times"), skip=int(raw.get("skip", 0)))
            rule.rng = random.Random(f"{seed}:{index}")
            rules.append(rule)
        with self._lock:
            self.rules = rules

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"match": r.match, "kind": r.kind, "rate": r.rate, "status": r.status, "retry_after": r.retry_after,
                     "delay": r.delay, "times": r.times, "skip": r.skip, "seen": r.seen, "fired": r.fired}
                    for r in self.rules]

    def decide(self, operation_id: str, spec_path: str, path: str, method: str = "GET") -> Fault | None:
        """The fault for this request (first firing rule wins), or None."""
        with self._lock:
            for rule in self.rules:
                if not rule.matches(operation_id, spec_path, path, method.upper()):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.rng.random() >= rule.rate:
                    continue
                rule.fired += 1
                return Fault(rule.kind, rule.status, rule.retry_after, rule.delay)
        return None
