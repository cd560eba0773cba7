"""A local Klaviyo REST API (revision 2026-07-15) driven by the official OpenAPI spec.

``Sandbox`` serves generated, seeded data over real HTTP for tests, the demo and benchmarks.
"""

from .generator import DEFAULT_API_KEY, Account
from .server import MATON_API_KEY, REVISION, Sandbox, main, serve
from .store import Clock, Store

__all__ = ["Sandbox", "serve", "main", "Store", "Clock", "Account", "DEFAULT_API_KEY", "MATON_API_KEY", "REVISION"]
