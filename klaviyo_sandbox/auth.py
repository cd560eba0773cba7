"""Authentication: ``Klaviyo-API-Key <private key>`` or ``Bearer <oauth token>`` -> account id."""

from __future__ import annotations

import threading

from .errors import authentication_failed, not_authenticated


class Credentials:
    """Private keys and OAuth tokens of every account (several keys per account allowed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.api_keys: dict[str, str] = {}
        self.oauth_tokens: dict[str, str] = {}

    def add_account(self, account: str, api_key: str | None = None, oauth_token: str | None = None) -> None:
        with self._lock:
            if api_key:
                self.api_keys[api_key] = account
            if oauth_token:
                self.oauth_tokens[oauth_token] = account

    def revoke(self, secret: str) -> None:
        with self._lock:
            self.api_keys.pop(secret, None)
            self.oauth_tokens.pop(secret, None)

    def authenticate(self, header: str | None) -> str:
        """The account id for an Authorization header value; raises 401 ApiErrors."""
        if not header or not header.strip():
            raise not_authenticated()
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() == "klaviyo-api-key" and secret:
            account = self.api_keys.get(secret)
        elif scheme.lower() == "bearer" and secret:
            account = self.oauth_tokens.get(secret)
        else:
            raise not_authenticated()
        if account is None:
            raise authentication_failed()
        return account
