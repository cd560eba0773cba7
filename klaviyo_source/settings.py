"""Defaults of the Klaviyo source (every one can be overridden in ``[sources.klaviyo]``)."""

from __future__ import annotations

KLAVIYO_BASE_URL = "https://a.klaviyo.com"
MATON_GATEWAY_URL = "https://gateway.maton.ai/klaviyo"
REVISION = "2026-07-15"

AUTH_SCHEMES = ("klaviyo-api-key", "bearer", "maton")
DEFAULT_AUTH = "klaviyo-api-key"

DEFAULT_EVENT_LOOKBACK = "3d"
# Environment variables read when no dlt secret is configured.
API_KEY_ENV_VARS = ("KLAVIYO_API_KEY",)
MATON_KEY_ENV_VARS = ("MATON_API_KEY",)

# HTTP behaviour
REQUEST_TIMEOUT_SECONDS = 60.0
MAX_ATTEMPTS = 8
BACKOFF_FACTOR = 0.5  # exponential backoff: 0.5, 1, 2, 4 ... seconds (+ jitter)
MAX_RETRY_DELAY_SECONDS = 60.0
JITTER_SECONDS = 0.25

# Pacing: every window is lengthened by this fraction.  Latency is already covered (a request
# holds its windows from sending until one window after its response), so this only has to
# absorb a server clock running slightly fast.
PACING_MARGIN = 0.01

# Events backfill: a range longer than this is split into time windows read in parallel.
EVENT_WINDOW_MIN_SECONDS = 24 * 3600
EVENT_WINDOWS = 8
EVENT_WORKERS = 4

# Pages are concatenated into arrow tables of about this many rows before dlt sees them.
ARROW_BATCH_ROWS = 50_000
