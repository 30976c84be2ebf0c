"""Client authentication, per-key scopes (AgentOS's RBAC) and rate limits: a pure ASGI middleware.

* ``Authorization: Bearer <key>`` (the bare key is accepted too, as AgentOS accepts it). Keys
  are looked up by their SHA-256 digest, so no comparison runs over the secret's bytes one by one;
  the found digest is then compared in constant time. Keys are never logged: the key's name is.
* 401 ``{"detail": ...}`` with AgentOS's own texts; ``/health``, ``/ready`` and the docs stay
  open. ``/metrics`` is AgentOS's usage metrics and needs a key like any of its routes; the
  Prometheus scrape and ``/admin`` (its own key) are on the admin port, never seen here.
* A key's ``scopes`` (AgentOS's RBAC scopes; ``entities`` is shorthand for the run and read
  scopes of those ids) are resolved once, at load, into ``permissions.Grants``: a request the
  key's scopes do not allow, by agno's own checker, gets 403. A key with neither may do
  everything (``agent_os:admin``). The ids a key may read are left on the request's state
  (``visible``) for ``/config`` and the listings, which AgentOS filters by them.
* A key with ``rate_per_s`` gets a token bucket (``burst`` deep): 429 with ``Retry-After``.
* A WebSocket (``/workflows/ws``) passes through: ``doors/websocket.py`` checks its key, from
  the upgrade's header or AgentOS's ``authenticate`` message, and each of its runs' scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import error_response
from gateway.api.permissions import Grants
from gateway.api.request_head import request_header
from gateway.errors import GatewayError, RateLimited, Unauthorized
from gateway.scopes import key_scopes
from gateway.settings import ApiKey

OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.updated = self.burst, self.clock()

    def take(self) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


@dataclass
class _Key:
    name: str
    digest: bytes
    grants: Grants
    bucket: Optional[TokenBucket]


class Keyring:
    """The client keys in force; replaced whole on a reload."""

    def __init__(self, keys: Sequence[ApiKey] = ()) -> None:
        self.keys: Dict[bytes, _Key] = {}
        self.load(keys)

    def load(self, keys: Sequence[ApiKey]) -> None:
        loaded: Dict[bytes, _Key] = {}
        for key in keys:
            digest = hashlib.sha256(key.key.encode()).digest()
            old = self.keys.get(digest)
            bucket = None
            if key.rate_per_s:
                burst = float(key.burst or max(1, math.ceil(key.rate_per_s)))
                # An unchanged limit keeps its bucket (a reload refills no one); a changed one,
                # rate or burst, starts a new bucket.
                kept = old.bucket if old is not None else None
                unchanged = kept is not None and (kept.rate_per_s, kept.burst) == (key.rate_per_s, burst)
                bucket = kept if unchanged else TokenBucket(key.rate_per_s, burst)
            loaded[digest] = _Key(key.name, digest, Grants(key.name, key_scopes(key.scopes, key.entities)), bucket)
        self.keys = loaded

    def find(self, token: bytes) -> Optional[_Key]:
        """The key ``token`` is (found by its digest, then compared in constant time), or None."""
        digest = hashlib.sha256(token).digest()
        key = self.keys.get(digest)
        return key if key is not None and hmac.compare_digest(key.digest, digest) else None

    def check(
        self, scope: Scope, path: str, authorization: Optional[bytes],
        door_path: Optional[Callable[[str], Optional[str]]] = None,
    ) -> Optional[GatewayError]:  # fmt: skip
        """Why this request may not go on (401, 403, 429), or None: then the key's name, grants and
        visible ids are on its state. ``authorization``: the request's header, as it came."""
        token = bearer_token(authorization)
        if token is None:
            return Unauthorized("Authorization header required")
        key = self.find(token)
        if key is None:
            return Unauthorized("Invalid authentication token")
        state = scope.setdefault("state", {})
        state["api_key"] = key.name
        state["grants"] = key.grants  # what a door checks per message (MCP's tools: doors/mcp.py)
        if not key.grants.admin:
            refusal = key.grants.refusal(scope["method"], path)
            canonical = door_path(path) if refusal is not None and door_path is not None else None
            if canonical is not None and canonical != path:
                refusal = key.grants.refusal(scope["method"], canonical)
            if refusal is not None:
                return refusal
            state["visible"] = key.grants.visible
        if key.bucket is not None:
            wait_s = key.bucket.take()
            if wait_s:
                return RateLimited("Too many requests", retry_after_s=wait_s)
        return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keyring: Keyring, door_path: Optional[Callable[[str], Optional[str]]] = None) -> None:
        self.app = app
        self.keyring = keyring
        # A door served under another prefix than agno's default: its path at that default (where
        # the route table, hence the grants, know it). Asked only when the path itself is refused.
        self.door_path = door_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.keyring.keys or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = self.keyring.check(scope, path, request_header(scope, b"authorization"), self.door_path)
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def bearer_token(authorization: Optional[bytes]) -> Optional[bytes]:
    """The key an ``Authorization`` header carries: ``Bearer <key>``, or the bare key."""
    if authorization is None:
        return None
    scheme, _, rest = authorization.partition(b" ")
    token = rest.strip() if scheme.lower() == b"bearer" else authorization.strip()
    return token or None
