"""Room tokens for LiveKit: the orchestrator's HTTP server hands the page a short-lived JWT.

A LiveKit server admits a participant only with a token signed by one of its API keys, naming
the room and what the participant may do there. The page asks `POST /api/livekit/token` for
one; the server picks a fresh room and identity for it (a caller cannot name another's room),
and the token is limited to that room, to publishing the microphone and to a few minutes, so
a leaked token is worth little. Without a LiveKit configuration the endpoint
answers 404 and the page stays on the WebSocket transport.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from duplex.errors import InvalidInput

if TYPE_CHECKING:
    from livekit import api

# The agent every token dispatches into its room: the orchestrator registers under this name.
AGENT_NAME = "duplex"


class LiveKitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The URL browsers (and the agent) connect to, e.g. wss://livekit.example.com.
    url: str = Field(pattern=r"^(wss?|https?)://")
    # Where the agent itself connects, when that differs from the browsers' URL (in a
    # cluster: the LiveKit Service's address). Default: url.
    agent_url: str | None = Field(None, pattern=r"^(wss?|https?)://")
    api_key: str = Field(min_length=1)
    api_secret: str = Field(min_length=1)
    token_ttl_seconds: int = Field(600, ge=10, le=86400)
    # Serve rooms as a LiveKit agent (off: only hand out tokens, another agent answers).
    agent: bool = True
    # Rooms this process serves at once before the server sends new ones elsewhere.
    max_rooms: int = Field(20, ge=1)


def issue_token(
    config: LiveKitConfig,
    room: str,
    identity: str,
    *,
    ttl: timedelta | None = None,
    attributes: dict[str, str] | None = None,
) -> str:
    """A participant token for one room; joining it dispatches the duplex agent there."""
    from livekit import api  # the livekit extra; checked by `require_sdk` at start

    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=["microphone"],
    )
    return (
        _signed(config, identity, grants, ttl or timedelta(seconds=config.token_ttl_seconds))
        .with_name(identity)
        .with_attributes(attributes or {})
        .with_room_config(
            api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=AGENT_NAME)])
        )
        .to_jwt()
    )


def agent_token(config: LiveKitConfig, room: str, identity: str) -> str:
    """The agent's own token for a room it was dispatched to."""
    from livekit import api

    grants = api.VideoGrants(
        room_join=True,
        room=room,
        agent=True,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
    )
    return (
        _signed(config, identity, grants, timedelta(hours=6))
        .with_name("duplex")
        .with_kind("agent")
        .to_jwt()
    )


def _signed(
    config: LiveKitConfig, identity: str, grants: api.VideoGrants, ttl: timedelta
) -> api.AccessToken:
    from livekit import api

    return (
        api.AccessToken(config.api_key, config.api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .with_ttl(ttl)
    )


def credentials(key: str | None, secret: str | None) -> tuple[str | None, str | None]:
    """An API key and secret from flags, else from LiveKit's usual environment variables."""
    return key or os.environ.get("LIVEKIT_API_KEY"), secret or os.environ.get("LIVEKIT_API_SECRET")


def merge_settings(
    configured: LiveKitConfig | None, flags: Mapping[str, str | None]
) -> LiveKitConfig | None:
    """The LiveKit settings from flags, then the config file, then LiveKit's usual environment
    variables (a LIVEKIT_API_SECRET exported for another server must not override the file's).
    Keys in the environment alone do not switch LiveKit on: a URL must come from somewhere."""
    if configured is None and not flags.get("url"):
        return None
    merged = {
        **(configured.model_dump() if configured else {}),
        **{k: v for k, v in flags.items() if v},
    }
    key, secret = credentials(merged.get("api_key"), merged.get("api_secret"))
    merged.update({k: v for k, v in (("api_key", key), ("api_secret", secret)) if v})
    try:
        return LiveKitConfig.model_validate(merged)
    except ValueError as exc:
        raise InvalidInput(f"invalid LiveKit settings: {exc}") from exc


def require_sdk() -> None:
    try:
        import livekit.api  # noqa: F401
    except ImportError as exc:
        raise InvalidInput(
            f"LiveKit is configured but its SDK is missing: pip install 'duplex-voice[livekit]' "
            f"({exc})"
        ) from exc


def token_routes(config: LiveKitConfig | None) -> list[web.RouteDef]:
    async def token(request: web.Request) -> web.Response:
        if config is None:
            return _error(404, "not_configured", "LiveKit is not configured on this server")
        body: Any = {}
        if request.can_read_body:
            try:
                body = json.loads(await request.text())
            except ValueError:
                return _error(400, "bad_request", "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "bad_request", "the body must be a JSON object")
        attributes = {}
        for field in ("model", "voice"):
            value = body.get(field)
            if value is None or value == "":
                continue
            if not isinstance(value, str) or len(value) > 200:
                return _error(400, "bad_request", f"{field} must be a string")
            attributes[f"duplex.{field}"] = value
        for field in ("room", "identity"):
            if field in body:
                return _error(
                    400,
                    "bad_request",
                    f"the server chooses the {field}: every conversation gets a room of its own",
                )
        # Fresh, unguessable names: a token never lets anyone into another's conversation.
        room = f"duplex-{secrets.token_urlsafe(12)}"
        identity = f"user-{secrets.token_urlsafe(6)}"
        return web.json_response(
            {
                "url": config.url,
                "token": issue_token(config, room, identity, attributes=attributes),
                "room": room,
                "identity": identity,
                "expires_in": config.token_ttl_seconds,
            },
            headers={"Cache-Control": "no-store"},
        )

    return [web.post("/api/livekit/token", token)]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
