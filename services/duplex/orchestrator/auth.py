"""Who may talk to the orchestrator: API keys, short-lived session tokens, allowed Origins.

- An **API key** (`--api-key`, `DUPLEX_API_KEYS`) is for servers and tools: a site's backend,
  `duplex talk`, a bench. It is sent as `Authorization: Bearer KEY`.
- A **session token** is for a browser: the site's backend asks `POST /api/session` for one with
  its key and hands it to the page, which sends it as `?token=` (a browser cannot set headers on
  a WebSocket) or as a Bearer header. It expires after `session_token_seconds`; it is an HMAC
  of its expiry, so any replica that shares `token_secret` accepts it.
- **Origins**: a request from a browser page (it carries `Origin`) is served only for the
  server's own origin or an `allowed_origins` entry, with or without keys: otherwise any web
  page the user has open could talk to a local orchestrator through the user's browser.

With no keys configured every route is open (the loopback demo); `/`, the page's static files,
`/healthz` and `/metrics` are always open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from duplex.errors import InvalidInput

_OPEN_PREFIXES = ("/static/",)
_OPEN_PATHS = {"/", "/healthz", "/metrics"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    def __init__(
        self,
        api_keys: list[str],
        allowed_origins: list[str],
        *,
        token_seconds: float = 300.0,
        secret: str | None = None,
    ) -> None:
        self._keys = [k.encode() for k in api_keys if k]
        self._origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.token_seconds = token_seconds
        # A random secret: tokens die with the process and are valid on this replica only.
        self._secret = (secret or secrets.token_hex(32)).encode()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @classmethod
    def check_bind(cls, host: str, api_keys: list[str], insecure: bool) -> None:
        """Refuse to serve another machine without a credential, unless told to."""
        if not api_keys and not insecure and not is_loopback(host):
            raise InvalidInput(
                f"refusing to listen on {host} without API keys: anyone who reaches it could "
                "talk to it; give --api-key KEY (or DUPLEX_API_KEYS), or --insecure to serve "
                "it open"
            )

    # -- credentials ---------------------------------------------------------------------

    def is_key(self, presented: str) -> bool:
        given = presented.encode()
        return any(hmac.compare_digest(given, key) for key in self._keys)

    def issue(self, now: float | None = None) -> str:
        claims = {"exp": int((now or time.time()) + self.token_seconds), "n": secrets.token_hex(8)}
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        return f"{body.decode()}.{self._sign(body)}"

    def is_token(self, token: str, now: float | None = None) -> bool:
        body, _, signature = token.partition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body.encode())):
            return False
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return isinstance(claims, dict) and float(claims["exp"]) > (now or time.time())
        except (ValueError, KeyError, TypeError):
            return False

    def _sign(self, body: bytes) -> str:
        digest = hmac.new(self._secret, body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        bearer = header[7:].strip() if header[:7].lower() == "bearer " else ""
        token = bearer or request.query.get("token", "")
        return bool(token) and (self.is_key(token) or self.is_token(token))

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser page: nothing to forge through
        if "*" in self._origins or origin.rstrip("/").lower() in self._origins:
            return True
        return urlsplit(origin).netloc.lower() == request.host.lower()

    # -- the middleware ------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
            return await handler(request)
        if not self.origin_allowed(request):
            return _error(
                403, "forbidden_origin", f"origin {request.headers['Origin']!r} is not allowed"
            )
        if self.enabled and not self.authorised(request):
            response = _error(
                401, "unauthorized", "an API key or a session token is required (Bearer or ?token=)"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    def routes(self) -> list[web.RouteDef]:
        async def session(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization", "")
            if not self.enabled:
                return _error(404, "not_configured", "no API keys are configured: nothing to issue")
            if not (header[:7].lower() == "bearer " and self.is_key(header[7:].strip())):
                return _error(401, "unauthorized", "a session token is issued for an API key")
            return web.json_response(
                {"token": self.issue(), "expires_in": int(self.token_seconds)},
                headers={"Cache-Control": "no-store"},
            )

        return [web.post("/api/session", session)]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
