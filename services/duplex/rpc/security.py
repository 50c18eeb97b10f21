"""TLS for the TTS ABI, and who may call its admin RPCs.

A worker can serve TLS (`tls_cert`, `tls_key`) and require client certificates signed by a CA
(`tls_client_ca`: mutual TLS). LoadModel, UnloadModel and Control RELOAD change what the worker
holds for everyone, so they need an admin identity: a client certificate whose common name is
in `admin_names`, or a bearer token in `admin_tokens` (metadata `authorization: Bearer T`).
With neither configured only a caller on the same machine (loopback) is an admin. The gRPC
health service needs nothing: it can also be served in plain text on `health_port`, for
probes that do not speak TLS (the kubelet's).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict

ADMIN_METADATA = "authorization"


class ClientTls(BaseModel):
    """How a client reaches TLS workers: the CA that signed them, its own certificate for
    mutual TLS, and the name to expect when the address is not in the certificate."""

    model_config = ConfigDict(extra="forbid")

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=_read(client_ca),
        require_client_auth=client_ca is not None,
    )


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


@dataclass(frozen=True)
class AdminPolicy:
    tokens: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    def allows(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        for key, value in context.invocation_metadata() or ():
            if key == ADMIN_METADATA and isinstance(value, str) and value[:7].lower() == "bearer ":
                given = value[7:].strip().encode()
                if any(hmac.compare_digest(given, t.encode()) for t in self.tokens):
                    return True
        auth = context.auth_context() or {}
        names = {n.decode(errors="replace") for n in auth.get("x509_common_name", [])}
        if names & set(self.names):
            return True
        if not self.tokens and not self.names:
            return _is_loopback(context.peer() or "")
        return False


def _is_loopback(peer: str) -> bool:
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:"))
