"""A small asyncio client for the Kubernetes API (the few calls workers and the operator make).

Both a worker following its Pod's model set and the operator need get/list/patch/watch and
little else; a thin layer over aiohttp (already a dependency) keeps the worker image free of a
full Kubernetes client. Credentials come from the in-cluster service account or a kubeconfig
(token, client certificate, or no auth), the two ways a process meets an API server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import yaml

from duplex.errors import DuplexError, InvalidInput

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

PatchKind = Literal["merge", "json", "strategic"]
_PATCH_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class KubeApiError(DuplexError):
    """A non-2xx answer from the API server, with its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass
class KubeConfig:
    server: str
    token: str | None = None
    token_file: Path | None = None  # re-read on use: projected tokens rotate
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    namespace: str = "default"
    # Temporary files written for inline (*-data) credentials; removed by the client.
    _temp: list[Path] = field(default_factory=list, repr=False)

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise InvalidInput("not running in a Kubernetes Pod (KUBERNETES_SERVICE_HOST unset)")
        if ":" in host:
            host = f"[{host}]"
        namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
        return cls(
            server=f"https://{host}:{port}",
            token_file=SERVICE_ACCOUNT_DIR / "token",
            ca_file=SERVICE_ACCOUNT_DIR / "ca.crt",
            namespace=namespace_file.read_text().strip() if namespace_file.exists() else "default",
        )

    @classmethod
    def from_kubeconfig(cls, path: Path, context: str | None = None) -> KubeConfig:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidInput(f"cannot read kubeconfig {path}: {exc}") from exc

        def named(section: str, name: str) -> dict[str, Any]:
            for item in doc.get(section) or []:
                if item.get("name") == name:
                    value: dict[str, Any] = item.get(section[:-1]) or {}
                    return value
            raise InvalidInput(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

        ctx_name = context or doc.get("current-context")
        if not ctx_name:
            raise InvalidInput(f"kubeconfig {path}: no current-context")
        ctx = named("contexts", ctx_name)
        if not ctx.get("cluster"):
            raise InvalidInput(f"kubeconfig {path}: context {ctx_name!r} names no cluster")
        cluster = named("clusters", ctx["cluster"])
        if not cluster.get("server"):
            raise InvalidInput(f"kubeconfig {path}: cluster {ctx['cluster']!r} has no server")
        user = named("users", ctx["user"]) if ctx.get("user") else {}
        config = cls(
            server=str(cluster["server"]).rstrip("/"),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            namespace=ctx.get("namespace") or "default",
            token=user.get("token"),
        )
        base = path.parent

        def file_of(key: str, holder: dict[str, Any]) -> Path | None:
            if holder.get(f"{key}-data"):
                fd, name = tempfile.mkstemp(prefix="duplex-kube-")
                with os.fdopen(fd, "wb") as out:
                    out.write(base64.b64decode(holder[f"{key}-data"]))
                config._temp.append(Path(name))
                return Path(name)
            if holder.get(key):
                candidate = Path(holder[key])
                return candidate if candidate.is_absolute() else base / candidate
            return None

        config.ca_file = file_of("certificate-authority", cluster)
        config.cert_file = file_of("client-certificate", user)
        config.key_file = file_of("client-key", user)
        if user.get("tokenFile"):
            token_file = Path(user["tokenFile"])
            config.token_file = token_file if token_file.is_absolute() else base / token_file
        return config

    @classmethod
    def load(cls, kubeconfig: Path | None = None, context: str | None = None) -> KubeConfig:
        """An explicit kubeconfig, else in-cluster, else $KUBECONFIG or ~/.kube/config."""
        if kubeconfig is not None:
            return cls.from_kubeconfig(kubeconfig, context)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_DIR.exists():
            return cls.in_cluster()
        env = os.environ.get("KUBECONFIG")
        path = Path(env.split(os.pathsep)[0]) if env else Path.home() / ".kube" / "config"
        if not path.exists():
            raise InvalidInput(
                f"no Kubernetes credentials: not in a Pod and no kubeconfig at {path}"
            )
        return cls.from_kubeconfig(path, context)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        if self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def bearer(self) -> str | None:
        if self.token_file is not None and self.token_file.exists():
            return self.token_file.read_text().strip()
        return self.token

    def cleanup(self) -> None:
        for path in self._temp:
            path.unlink(missing_ok=True)
        self._temp.clear()


def _query(params: Mapping[str, object | None]) -> str:
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        parts.append(f"{key}={quote(str(value), safe='')}")
    return ("?" + "&".join(parts)) if parts else ""


class KubeClient:
    """One HTTP session to one API server. Paths are API paths, e.g. /api/v1/namespaces/x/pods."""

    def __init__(self, config: KubeConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        # (apiVersion, kind) -> (plural, namespaced), from API discovery.
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    @classmethod
    def load(cls, kubeconfig: Path | None = None, context: str | None = None) -> KubeClient:
        return cls(KubeConfig.load(kubeconfig, context))

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.config.ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=10)
            )
        return self._session

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.config.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
        params: Mapping[str, object | None] | None = None,
    ) -> dict[str, Any]:
        url = self.config.server + path + _query(params or {})
        data = None if body is None else json.dumps(body)
        async with self._http().request(
            method,
            url,
            data=data,
            headers=self._headers(content_type if body is not None else None),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise _api_error(resp.status, text)
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def list(
        self, path: str, *, label_selector: str | None = None, field_selector: str | None = None
    ) -> dict[str, Any]:
        return await self.request(
            "GET", path, params={"labelSelector": label_selector, "fieldSelector": field_selector}
        )

    async def create(
        self, path: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        return await self.request(
            "POST", path, dict(body), params={"dryRun": "All" if dry_run else None}
        )

    async def patch(
        self, path: str, body: object, *, kind: PatchKind = "merge", dry_run: bool = False
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            path,
            body,
            content_type=_PATCH_TYPES[kind],
            params={"dryRun": "All" if dry_run else None},
        )

    async def delete(self, path: str, *, grace_seconds: int | None = None) -> dict[str, Any]:
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        return await self.request("DELETE", path, body)

    async def watch(
        self,
        path: str,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}).

        Ends when the server closes the watch (after `timeout_seconds`); the caller re-lists
        or re-watches from the last resourceVersion it saw. An ERROR event (e.g. 410 Gone,
        the version is too old) is raised as KubeApiError.
        """
        params = {
            "watch": True,
            "allowWatchBookmarks": True,
            "resourceVersion": resource_version,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
            "timeoutSeconds": timeout_seconds,
        }
        url = self.config.server + path + _query(params)
        async with self._http().get(
            url,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30),
        ) as resp:
            if resp.status >= 300:
                raise _api_error(resp.status, await resp.text())
            async for line in resp.content:
                if not line.strip():
                    continue
                event: dict[str, Any] = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise KubeApiError(
                        int(status.get("code", 500)),
                        str(status.get("reason", "Error")),
                        str(status.get("message", "")),
                    )
                yield event

    # -- objects by apiVersion/kind (manifests) ---------------------------------------------

    async def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the server's discovery documents."""
        key = (api_version, kind)
        if key not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                doc = await self.get(base)
            except KubeApiError as exc:
                raise KubeApiError(
                    exc.status, exc.reason, f"API {api_version} is not served: {exc.message}"
                ) from exc
            for res in doc.get("resources", []):
                if "/" not in res["name"]:
                    self._resources[(api_version, res["kind"])] = (
                        res["name"],
                        bool(res["namespaced"]),
                    )
            if key not in self._resources:
                raise KubeApiError(404, "NotFound", f"no kind {kind} in {api_version}")
        return self._resources[key]

    async def object_path(
        self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None
    ) -> str:
        plural, namespaced = await self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            base += f"/namespaces/{namespace or self.namespace}"
        path = f"{base}/{plural}"
        return f"{path}/{name}" if name else path

    async def create_object(
        self, obj: Mapping[str, Any], *, namespace: str | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Create a manifest object (any kind the server serves); `dry_run` validates only."""
        meta = obj.get("metadata") or {}
        path = await self.object_path(
            str(obj["apiVersion"]), str(obj["kind"]), meta.get("namespace") or namespace
        )
        return await self.create(path, obj, dry_run=dry_run)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.config.cleanup()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _api_error(status: int, text: str) -> KubeApiError:
    try:
        doc = json.loads(text)
        return KubeApiError(status, str(doc.get("reason", "")), str(doc.get("message", text)))
    except (ValueError, AttributeError):
        return KubeApiError(status, "", text.strip()[:500])


async def sleep_backoff(attempt: int, cap: float = 10.0) -> None:
    """Wait before retrying a failed watch or call: 0.2 s, 0.4 s, ... up to `cap`."""
    await asyncio.sleep(min(cap, 0.2 * 2 ** min(attempt, 10)))
