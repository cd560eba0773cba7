"""HTTP for the Klaviyo API on dlt's REST client: auth, revision header, pacing, retries.

* dlt's ``RESTClient`` drives requests and ``links.next`` pagination (a ``JSONLinkPaginator``).
* dlt's retrying ``Client`` session retries 429, 5xx, timeouts and dropped connections
  (``ChunkedEncodingError`` covers IncompleteRead / a connection reset mid-body), honouring
  ``Retry-After``, with exponential backoff plus random jitter; other 4xx fail at once with
  a one-line ``KlaviyoAPIError``.
* Every attempt (retries included) first waits for the endpoint's ``Pacer``.
* Response bodies are parsed once, with orjson.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import msgspec
import orjson
import requests
import urllib3
from dlt.common import logger as dlt_logger
from dlt.sources.helpers.requests.retry import (
    DEFAULT_RETRY_EXCEPTIONS,
    DEFAULT_RETRY_STATUS,
    Client,
    retry_if_status,
    wait_exponential_retry_after,
)
from dlt.sources.helpers.requests.session import Session
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import APIKeyAuth, BearerTokenAuth
from dlt.sources.helpers.rest_client.paginators import JSONLinkPaginator
from requests.adapters import HTTPAdapter
from tenacity import Retrying, retry_any, retry_if_exception_type, stop_after_attempt, wait_random

from klaviyo_source import settings
from klaviyo_source.errors import KlaviyoAPIError, KlaviyoConfigError, Masker, api_error
from klaviyo_source.keys import clean_key
from klaviyo_source.pacing import PACERS, Pacer, RateTier


class TruncatedBody(requests.exceptions.ConnectionError):
    """A 2xx body that is not complete JSON: the connection dropped mid-body; retried."""


@dataclass
class Bucket:
    """A rate-limit bucket: requests whose path matches (and that carry ``marker`` in the query) share it."""

    name: str
    path_regex: re.Pattern[str]
    tier: RateTier
    marker: str | None = None  # e.g. "predictive_analytics" in additional-fields


def _path_regex(path_template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", r"[^/]+", re.escape(path_template)) + "$")


@dataclass
class HttpStats:
    requests: int = 0
    status_429: int = 0
    retries: int = 0
    by_bucket: dict[str, int] = field(default_factory=dict)


class _Retry(wait_exponential_retry_after):
    """Exponential backoff (or Retry-After, fractional seconds allowed) plus random jitter."""

    def _parse_retry_after(self, retry_after: str) -> float | None:
        try:
            seconds = float(retry_after.strip())
        except ValueError:
            return super()._parse_retry_after(retry_after)
        return max(0.0, min(self.max, seconds)) if seconds >= 0 else None


class PacedAdapter(HTTPAdapter):
    """Waits for the request's pacer before every attempt and counts attempts."""

    def __init__(self, client: "KlaviyoClient", **kwargs: Any):
        super().__init__(**kwargs)
        self._client = client

    def send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        bucket = self._client.bucket_for(request.path_url)
        pacer = self._client.pacer(bucket)
        if pacer is not None:
            pacer.acquire()
        stats = self._client.stats
        stats.requests += 1
        if bucket is not None:
            stats.by_bucket[bucket.name] = stats.by_bucket.get(bucket.name, 0) + 1
        try:
            response = super().send(request, *args, **kwargs)
        finally:
            if pacer is not None:
                pacer.release()
        if response.status_code == 429:
            stats.status_429 += 1
        return response


class _RetryingClient(Client):
    """dlt's retrying requests client with jitter and the pacing adapter mounted."""

    def __init__(self, adapter: HTTPAdapter, jitter: float, **kwargs: Any):
        super().__init__(raise_for_status=False, **kwargs)
        self._adapter = adapter
        self._jitter = jitter
        self._proxies: dict[str, str] = {}

    def use_environment_proxies(self, url: str) -> None:
        self._proxies = requests.utils.get_environ_proxies(url) or {}

    def _make_session(self) -> Session:
        session = Session(**self._session_kwargs)  # type: ignore[arg-type]
        # proxies from the environment are resolved once, not on every request (~2 ms each)
        session.proxies.update(self._proxies)
        session.trust_env = False
        session.mount("http://", self._adapter)
        session.mount("https://", self._adapter)
        kw = self._retry_kwargs
        retry = Retrying(
            wait=_Retry(multiplier=kw["backoff_factor"], max=kw["max_delay"]) + wait_random(0, self._jitter),
            retry=retry_any(
                retry_if_status(kw["status_codes"]), retry_if_exception_type(tuple(kw["exceptions"]))
            ),
            stop=stop_after_attempt(kw["max_attempts"]),
            reraise=True,
            retry_error_callback=lambda state: state.outcome.result(),
        )
        session.send = retry.wraps(session.send)  # type: ignore[method-assign]
        return session


class KlaviyoPaginator(JSONLinkPaginator):
    """``links.next`` pagination reading the already-parsed body; next links are rebased on base_url."""

    def __init__(self, base_url: str):
        super().__init__(next_url_path="links.next")
        self._base = urlsplit(base_url)

    def update_state(self, response: requests.Response, data: list[Any] | None = None) -> None:
        self._next_reference = next_link(getattr(response, "klaviyo_document", None))

    def update_request(self, request: requests.Request) -> None:
        if self._next_reference:
            self._next_reference = _rebase(self._next_reference, self._base)
        super().update_request(request)


def next_link(document: Any) -> str | None:
    """``links.next`` of a parsed page: an orjson dict or a msgspec-decoded page struct."""
    if document is None:
        return None
    if isinstance(document, dict):
        return (document.get("links") or {}).get("next") or None
    links = getattr(document, "links", None)
    return getattr(links, "next", None) or None


def _rebase(url: str, base: Any) -> str:
    """Point a next link at our base URL (gateways and proxies may echo the upstream host)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    base_path = base.path.rstrip("/")
    path = parts.path
    if parts.netloc == base.netloc and (not base_path or path.startswith(base_path + "/")):
        return url
    api_at = path.find("/api/")
    if api_at < 0:
        return url
    path = base_path + path[api_at:]
    return f"{base.scheme}://{base.netloc}{path}" + (f"?{parts.query}" if parts.query else "")


def _read_body(response: requests.Response) -> bytes:
    """The whole body in one read (requests' ``.content`` reads it in 10 kB chunks)."""
    if getattr(response, "_content_consumed", False) or response.raw is None:
        return response.content
    try:
        body = response.raw.read(decode_content=True)
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        raise TruncatedBody(f"connection dropped while reading the body: {type(exc).__name__}") from None
    response._content = body  # type: ignore[attr-defined]
    response._content_consumed = True  # type: ignore[attr-defined]
    return body


class _ParsingRESTClient(RESTClient):
    def _log_request(self, request: requests.Request, prepared_url: str) -> None:
        # dlt logs the query at INFO and, at DEBUG, the body: the reverse sync's bodies carry every
        # pushed email and name and its lookups filter by email, so only method, host and path are
        # logged at any level (and nothing is built when INFO is off: a parse of the long next link
        # on every page)
        if dlt_logger.isEnabledFor(logging.INFO):
            parts = urlsplit(prepared_url)
            line = f"Making {request.method.upper()} request to {parts.scheme}://{parts.netloc}{parts.path}"
            if dlt_logger.isEnabledFor(logging.DEBUG) and request.data:
                line += f" (body of {len(request.data)} bytes)"
            dlt_logger.info(line)

    def extract_response(self, response: requests.Response, data_selector: Any) -> list[Any]:
        document = getattr(response, "klaviyo_document", None)
        if document is None:
            raise self._owner.error_for(response)
        data = document.get("data") if isinstance(document, dict) else document.data
        if data is None:
            return []
        return data if isinstance(data, list) else [data]


class KlaviyoClient:
    """Klaviyo HTTP access for one account: ``pages(path, params)`` yields parsed JSON:API documents."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = settings.KLAVIYO_BASE_URL,
        auth: str = settings.DEFAULT_AUTH,
        revision: str = settings.REVISION,
        maton_connection: str | None = None,
        buckets: Sequence[Bucket] = (),
        pacing: bool = True,
        rate_limit_scale: float = 1.0,
        max_attempts: int = settings.MAX_ATTEMPTS,
        backoff_factor: float = settings.BACKOFF_FACTOR,
        max_retry_delay: float = settings.MAX_RETRY_DELAY_SECONDS,
        jitter: float = settings.JITTER_SECONDS,
        timeout: float = settings.REQUEST_TIMEOUT_SECONDS,
        max_connections: int = 32,
    ):
        if auth not in settings.AUTH_SCHEMES:
            raise KlaviyoConfigError(f"auth={auth!r} is unknown; use one of {', '.join(settings.AUTH_SCHEMES)}")
        api_key = clean_key(api_key)  # a trailing newline would make the header invalid (and be printed)
        if not api_key:
            raise KlaviyoConfigError("api_key is empty; set SOURCES__KLAVIYO__API_KEY or KLAVIYO_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.revision = revision
        self.mask = Masker([api_key, maton_connection])
        if auth == "klaviyo-api-key":
            self.auth = APIKeyAuth(name="Authorization", api_key=f"Klaviyo-API-Key {api_key}", location="header")
        else:  # "bearer" (OAuth access token) and "maton" (Maton API key) are both bearer tokens
            self.auth = BearerTokenAuth(token=api_key)
        self.headers = {"revision": revision, "accept": "application/vnd.api+json"}
        if maton_connection:
            self.headers["Maton-Connection"] = maton_connection
        # pacers are per account: identify it without keeping the key around in clear
        account = hashlib.sha256(f"{self.base_url}|{api_key}|{maton_connection}".encode()).hexdigest()[:16]
        self._buckets = list(buckets)
        self._pacers: dict[str, Pacer] = (
            {b.name: PACERS.get(account, b.name, b.tier, rate_limit_scale) for b in self._buckets} if pacing else {}
        )
        self._base_path = urlsplit(self.base_url).path.rstrip("/")
        self.stats = HttpStats()
        self._http = _RetryingClient(
            PacedAdapter(self, pool_maxsize=max_connections, pool_connections=4),
            jitter=jitter,
            request_timeout=timeout,
            status_codes=DEFAULT_RETRY_STATUS,
            exceptions=DEFAULT_RETRY_EXCEPTIONS,
            request_max_attempts=max_attempts,
            request_backoff_factor=backoff_factor,
            request_max_retry_delay=max_retry_delay,
        )
        self._http.use_environment_proxies(self.base_url)

    # -- pacing ---------------------------------------------------------------------------
    def bucket_for(self, path_url: str) -> Bucket | None:
        """The rate-limit bucket serving this request (path + query)."""
        path, _, query = path_url.partition("?")
        if self._base_path and path.startswith(self._base_path):
            path = path[len(self._base_path):]
        chosen = None
        for bucket in self._buckets:
            if bucket.path_regex.match(path):
                if bucket.marker is None:
                    chosen = chosen or bucket
                elif bucket.marker in query:
                    return bucket
        return chosen

    def pacer(self, bucket: Bucket | None) -> Pacer | None:
        return self._pacers.get(bucket.name) if bucket is not None else None

    def pacer_for(self, path_url: str) -> Pacer | None:
        """The pacer of the bucket serving this request, None when pacing is off."""
        return self.pacer(self.bucket_for(path_url))

    def tiers(self) -> dict[str, RateTier]:
        return {b.name: b.tier for b in self._buckets}

    # -- requests -------------------------------------------------------------------------
    def _hook(self, response: requests.Response, *args: Any, decoder: Any = None, **kwargs: Any) -> requests.Response:
        if response.status_code >= 400:
            if response.status_code in DEFAULT_RETRY_STATUS:
                return response  # the retry layer decides; extract_response raises if retries run out
            raise self.error_for(response)
        body = _read_body(response)  # raises TruncatedBody when the connection drops mid-body: retried
        try:
            if decoder is not None:
                document = decoder.decode(body)
            else:
                document = orjson.loads(body) if body else {}
        except (orjson.JSONDecodeError, msgspec.DecodeError) as exc:
            if isinstance(exc, msgspec.ValidationError):  # complete JSON of an unexpected shape
                raise KlaviyoAPIError(self.mask(f"Klaviyo {self.endpoint(response)} -> {response.status_code}: "
                                                f"unexpected response body ({exc})"), response) from None
            raise TruncatedBody(f"incomplete JSON body from {self.endpoint(response)}") from None
        response.klaviyo_document = document  # type: ignore[attr-defined]
        return response

    def endpoint(self, response: requests.Response) -> str:
        request = response.request
        path = urlsplit(request.url if request is not None else response.url or "").path
        if self._base_path and path.startswith(self._base_path):
            path = path[len(self._base_path):]
        return f"{request.method if request is not None else 'GET'} {path}"

    def error_for(self, response: requests.Response):
        return api_error(response, self.endpoint(response), self.mask)

    def rest_client(self) -> RESTClient:
        """A dlt RESTClient for the calling thread (sessions are per thread)."""
        client = _ParsingRESTClient(
            base_url=self.base_url,
            headers=self.headers,
            auth=self.auth,
            paginator=KlaviyoPaginator(self.base_url),
            data_selector="data",
            session=self._http.session,
        )
        client._owner = self  # type: ignore[attr-defined]
        return client

    def pages(self, path: str, params: dict[str, Any] | None = None, decoder: Any = None) -> Iterator[Any]:
        """Every page of a list endpoint, following ``links.next``; yields parsed documents
        (orjson dicts, or what the msgspec ``decoder`` makes of each body)."""
        client = self.rest_client()
        hook = functools.partial(self._hook, decoder=decoder)
        for page in client.paginate(path, params=params, hooks={"response": [hook]}):
            yield page.response.klaviyo_document  # type: ignore[attr-defined]

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.rest_client().get(path, params=params, hooks={"response": [self._hook]})
        document = getattr(response, "klaviyo_document", None)
        if document is None:
            raise self.error_for(response)
        return document


def buckets_for(streams: Sequence[Any]) -> list[Bucket]:
    """Rate buckets of the given streams (one per endpoint, plus per-parameter tiers)."""
    buckets: dict[str, Bucket] = {}
    for stream in streams:
        name = f"GET {stream.path}"
        buckets.setdefault(name, Bucket(name, _path_regex(stream.path), stream.rate_tier))
        for marker, tier in stream.extra_rate_tiers:
            extra = f"{name} [{marker}]"
            buckets.setdefault(extra, Bucket(extra, _path_regex(stream.path), tier, marker))
    return list(buckets.values())
