"""The caller's access and refresh tokens, and when to refresh them.

Expiry is kept as seconds on the client's own clock (`received + expires_in`), not the
server's `expire_time`, so a client whose clock is off still refreshes on time. Refresh
tokens are single use (svc_auth revokes the whole session when one is replayed), so a refresh
runs under a lock and a caller that waited for it takes the new token instead of refreshing
again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any


class NotLoggedIn(Exception):
    """There is no session, or its refresh token was refused: log in again."""


@dataclass(frozen=True)
class Tokens:
    """One session's tokens; times are Unix seconds on the client's clock."""

    access_token: str
    refresh_token: str
    access_expires_at: float
    refresh_expires_at: float
    """0 when the server did not say."""
    access_lifetime_s: float
    """`expires_in` as issued: how long a fresh access token lives."""

    @classmethod
    def from_response(cls, response: Any, now: float) -> Tokens:
        """From a LoginResponse or RefreshTokenResponse received at `now`."""
        # The server's clock is used only for a difference: how much longer the refresh
        # token lives than the access token.
        access_end = getattr(response, "expire_time", None)
        refresh_end = getattr(response, "refresh_expire_time", None)
        extra_s = (refresh_end - access_end).total_seconds() if access_end and refresh_end else 0
        return cls(
            access_token=response.access_token,
            refresh_token=response.refresh_token,
            access_expires_at=now + response.expires_in,
            refresh_expires_at=now + response.expires_in + extra_s if extra_s > 0 else 0.0,
            access_lifetime_s=float(response.expires_in),
        )

    def to_json(self) -> str:
        """The JSON the CLI keeps in its credentials file."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Tokens:
        """Back from `to_json`."""
        return cls(**json.loads(text))


Refresher = Callable[[str], Awaitable[Any]]


class TokenKeeper:
    """Hands out a valid access token, refreshing it ahead of expiry or after a rejection."""

    def __init__(
        self,
        *,
        refresh: Refresher,
        clock: Callable[[], float],
        refresh_ahead_s: float,
        on_tokens: Callable[[Tokens], None] | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        self._refresh = refresh
        self._clock = clock
        self._refresh_ahead_s = refresh_ahead_s
        self._on_tokens = on_tokens
        self._tokens = tokens
        self._lock = asyncio.Lock()
        self.refreshes = 0
        """How many times the tokens were refreshed (for callers who want to know)."""

    @property
    def tokens(self) -> Tokens | None:
        """The current tokens, or None before login."""
        return self._tokens

    def set(self, tokens: Tokens | None) -> None:
        """Replace the tokens (login, logout) and tell `on_tokens`."""
        self._tokens = tokens
        if tokens is not None and self._on_tokens is not None:
            self._on_tokens(tokens)

    def _due(self, tokens: Tokens) -> bool:
        # Short-lived tokens are refreshed halfway through their life at the latest, so a
        # 60-second token is not refreshed on every call by a 30-second margin.
        margin = min(self._refresh_ahead_s, tokens.access_lifetime_s / 2)
        return self._clock() >= tokens.access_expires_at - margin

    async def access_token(self) -> str:
        """A token that is not about to expire (refreshed first if it is)."""
        tokens = self._tokens
        if tokens is None:
            raise NotLoggedIn("not logged in")
        if self._due(tokens):
            return await self._refresh_unless_done(tokens.access_token, due_only=True)
        return tokens.access_token

    async def after_rejection(self, rejected: str) -> str:
        """A fresh token after the server refused `rejected` (UNAUTHENTICATED)."""
        return await self._refresh_unless_done(rejected, due_only=False)

    async def _refresh_unless_done(self, stale: str, *, due_only: bool) -> str:
        async with self._lock:
            tokens = self._tokens
            if tokens is None:
                raise NotLoggedIn("not logged in")
            if tokens.access_token != stale or (due_only and not self._due(tokens)):
                return tokens.access_token  # another call refreshed while this one waited
            try:
                response = await self._refresh(tokens.refresh_token)
            except NotLoggedIn:
                self._tokens = None
                raise
            self.refreshes += 1
            self.set(Tokens.from_response(response, self._clock()))
            assert self._tokens is not None
            return self._tokens.access_token
