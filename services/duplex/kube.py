"""The Kubernetes API as workers, the operator, orchestrators and benches use it.

Credentials and transport are `kubernetes_asyncio`'s, the asyncio edition of the official
client (the same kubeconfig loader, ported): every kubeconfig it accepts works here, i.e.
tokens and token files, client certificates, exec credential plugins (EKS, GKE, AKS), OIDC and
GCP auth-providers, basic auth, several files in `KUBECONFIG`, `proxy-url`,
`tls-server-name`, and in-cluster service-account tokens that rotate. This module adds what
every caller here needs on top: objects as plain JSON dicts addressed by API path (no model
classes, which cost more to build than the operator's whole pass), errors as `KubeApiError`,
a retry after 429 (Retry-After), credentials renewed before they expire and once on a 401,
watch streams, and a count of the writes made (the operator's bench reports it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader
from kubernetes_asyncio.config.kube_config import ConfigNode, KubeConfigLoader, KubeConfigMerger

from duplex.errors import DuplexError, InvalidInput

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

PatchKind = Literal["merge", "json", "strategic"]
_PATCH_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# 429 answers (API Priority and Fairness) were not processed: any request may be sent again.
_MAX_ATTEMPTS = 6
_MAX_RETRY_AFTER = 10.0
# A token read from a file (kubeconfig tokenFile) is read again this often: rotated tokens.
_TOKEN_FILE_SECONDS = 60.0


class KubeApiError(DuplexError):
    """A non-2xx answer from the API server, with its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class KubeResponse:
    """An answer as it came, error statuses included (for callers that test refusals)."""

    status: int
    text: str
    retry_after: float | None = None

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.text) if self.text else {}
        return body

    @property
    def message(self) -> str:
        """The message of a metav1.Status error body; empty for other bodies."""
        try:
            return str(self.json().get("message", ""))
        except ValueError:
            return ""

    def error(self) -> KubeApiError:
        try:
            doc = self.json()
            return KubeApiError(
                self.status, str(doc.get("reason", "")), str(doc.get("message", self.text))
            )
        except (ValueError, AttributeError):
            return KubeApiError(self.status, "", self.text.strip()[:500])


@dataclass(frozen=True)
class KubeCredentials:
    """What a second HTTP client (kopf's) needs to reach the same API server as this one."""

    server: str
    ca_file: str | None
    insecure: bool
    authorization: str | None  # the whole header value, e.g. "Bearer ..."
    cert_file: str | None
    key_file: str | None
    proxy: str | None
    tls_server_name: str | None
    expires: datetime.datetime | None  # a token from an exec plugin: renew before then

    def ssl_context(self) -> ssl.SSLContext:
        """TLS as the client's own transport sets it up, `tls-server-name` included."""
        context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
        context.server_name = self.tls_server_name
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        else:
            context.load_default_certs()
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class _ServerNameContext(ssl.SSLContext):
    """Verifies the server as `server_name` whatever host was dialled (tls-server-name)."""

    server_name: str | None = None

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = self.server_name or server_hostname
        return super().wrap_bio(incoming, outgoing, server_side, name, session)


@dataclass(frozen=True)
class KubeSource:
    """Where the credentials come from: kubeconfig files, or the Pod's service account."""

    kubeconfig: str | None  # one path, or several joined by os.pathsep; None: in-cluster
    context: str | None = None
    namespace: str = "default"
    service_account_dir: Path = SERVICE_ACCOUNT_DIR

    @classmethod
    def find(cls, kubeconfig: Path | str | None = None, context: str | None = None) -> KubeSource:
        """An explicit kubeconfig, else in-cluster, else $KUBECONFIG, else ~/.kube/config."""
        if kubeconfig is not None:
            return cls.from_kubeconfig(str(kubeconfig), context)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").exists():
            return cls.in_cluster()
        paths = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        return cls.from_kubeconfig(paths, context)

    @classmethod
    def in_cluster(cls, service_account_dir: Path | None = None) -> KubeSource:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise InvalidInput("not running in a Kubernetes Pod (KUBERNETES_SERVICE_HOST unset)")
        service_account_dir = service_account_dir or SERVICE_ACCOUNT_DIR
        namespace_file = service_account_dir / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.exists() else "default"
        return cls(None, None, namespace, service_account_dir)

    @classmethod
    def from_kubeconfig(cls, paths: str, context: str | None = None) -> KubeSource:
        """Checks the files and the context now, so a wrong one fails the start, not a call."""
        existing = [p for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]
        if not existing:
            raise InvalidInput(
                f"no Kubernetes credentials: not in a Pod and no kubeconfig at {paths}"
            )
        joined = os.pathsep.join(existing)
        loader = _kubeconfig_loader(joined, context)
        current = (loader.current_context or {}).get("context") or {}
        return cls(joined, context, str(current.get("namespace") or "default"))


def _kubeconfig_loader(paths: str, context: str | None) -> KubeConfigLoader:
    try:
        merged = KubeConfigMerger(paths).config
        # persist_config off: a refreshed token stays in memory, the files are never written.
        loader = KubeConfigLoader(merged, active_context=context, config_base_path=None)
    except (OSError, yaml.YAMLError, ConfigException, AssertionError, TypeError) as exc:
        raise InvalidInput(f"cannot use kubeconfig {paths}: {exc or type(exc).__name__}") from exc
    # What the loader would only find out at the first request, or not at all.
    current = loader.current_context or {}
    settings = current.get("context") or {}
    clusters = [_plain(c) for c in (_plain(merged) or {}).get("clusters") or []]
    cluster = next(
        (c.get("cluster") or {} for c in clusters if c.get("name") == settings.get("cluster")),
        {},
    )
    server = str(cluster.get("server") or "")
    name = current.get("name")
    if not server:
        raise InvalidInput(f"kubeconfig {paths}: the cluster of context {name!r} has no server")
    if server.startswith("https") and not settings.get("user"):
        raise InvalidInput(f"kubeconfig {paths}: context {name!r} names no user")
    return loader


def _plain(node: Any) -> Any:
    """The value inside the library's ConfigNode wrappers (the merger wraps list items)."""
    return node.value if isinstance(node, ConfigNode) else node


class _Credentials:
    """The client's Configuration, and when and how to renew what authenticates it."""

    def __init__(self, source: KubeSource) -> None:
        self.source = source
        self.configuration = type.__call__(Configuration)
        self._kubeconfig: KubeConfigLoader | None = None
        self._in_cluster: InClusterConfigLoader | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        if self.source.kubeconfig is None:
            directory = self.source.service_account_dir
            self._in_cluster = InClusterConfigLoader(
                token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt")
            )
        else:
            self._kubeconfig = _kubeconfig_loader(self.source.kubeconfig, self.source.context)
        await self._apply()

    async def _apply(self) -> None:
        try:
            if self._in_cluster is not None:
                # Also installs the library's hook that re-reads the rotating token each minute.
                self._in_cluster.load_and_set(self.configuration)
            elif self._kubeconfig is not None:
                await self._kubeconfig.load_and_set(self.configuration)
        except (ConfigException, OSError, ValueError) as exc:
            raise InvalidInput(f"Kubernetes credentials: {exc}") from exc
        self._loaded_at = time.monotonic()
        self._strip_token()
        hook = self.configuration.refresh_api_key_hook
        if hook is not None and not getattr(hook, "strips", False):

            def refresh(configuration: Configuration) -> None:
                hook(configuration)
                self._strip_token()

            refresh.strips = True  # type: ignore[attr-defined]
            self.configuration.refresh_api_key_hook = refresh

    def _strip_token(self) -> None:
        # Token files often end in a newline, which the library keeps: not in a header.
        key = self.configuration.api_key.get("BearerToken")
        if isinstance(key, str):
            self.configuration.api_key["BearerToken"] = key.strip()

    def _due(self) -> bool:
        loader = self._kubeconfig
        if loader is None:
            return False
        expiry = getattr(loader, "exec_plugin_expiry", None)
        if isinstance(expiry, datetime.datetime) and _expired(expiry):
            return True
        user = loader._user  # the loader keeps the active user's section only here
        return bool(
            user is not None
            and "tokenFile" in user
            and time.monotonic() - self._loaded_at > _TOKEN_FILE_SECONDS
        )

    async def refresh(self, *, force: bool = False) -> None:
        """Renew what is due (an expired exec token, a token file), everything when forced.

        A renewal that fails is a 401 to the caller (it retries as for any refusal); only
        the first load of a kubeconfig fails with InvalidInput.
        """
        if not force and not self._due():
            return
        started = time.monotonic()
        async with self._lock:
            if force and self._loaded_at >= started:
                return  # renewed by another request's 401 while this one waited
            if not force and not self._due():
                return
            if force and self._kubeconfig is not None:
                # Run the exec plugin again even if its token claims to be valid (revoked).
                with contextlib.suppress(AttributeError):
                    del self._kubeconfig.exec_plugin_expiry
            try:
                await self._apply()
            except InvalidInput as exc:
                raise KubeApiError(401, "Unauthorized", f"renewing credentials: {exc}") from exc

    @property
    def tls_files(self) -> tuple[str | None, str | None]:
        return self.configuration.cert_file, self.configuration.key_file

    async def authorization(self) -> str | None:
        value = await self.configuration.get_api_key_with_prefix("BearerToken")
        return str(value) if value else None

    @property
    def expires(self) -> datetime.datetime | None:
        expiry = getattr(self._kubeconfig, "exec_plugin_expiry", None)
        return expiry if isinstance(expiry, datetime.datetime) else None


def _expired(expiry: datetime.datetime) -> bool:
    # The library's own margin: renew five minutes before the plugin's expirationTimestamp.
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.UTC)
    return expiry - datetime.timedelta(minutes=5) <= datetime.datetime.now(datetime.UTC)


def _query(params: Mapping[str, object | None] | None) -> list[tuple[str, str]]:
    query = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        query.append((key, str(value)))
    return query


class KubeClient:
    """One connection pool to one API server. Paths are API paths: /api/v1/namespaces/x/pods."""

    def __init__(self, source: KubeSource, *, user_agent: str | None = None) -> None:
        self.source = source
        self.user_agent = user_agent or "duplex"
        self._credentials = _Credentials(source)
        self._api: ApiClient | None = None
        self._tls_files: tuple[str | None, str | None] = (None, None)
        self._ready = asyncio.Lock()
        # (apiVersion, kind) -> (plural, namespaced), from API discovery.
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}
        # Requests that change something, by method (what a reconcile pass costs the server).
        self.writes: collections.Counter[str] = collections.Counter()

    @classmethod
    def load(
        cls,
        kubeconfig: Path | str | None = None,
        context: str | None = None,
        *,
        user_agent: str | None = None,
    ) -> KubeClient:
        """A client for an explicit kubeconfig, else in-cluster, else $KUBECONFIG's files."""
        return cls(KubeSource.find(kubeconfig, context), user_agent=user_agent)

    @property
    def namespace(self) -> str:
        return self.source.namespace

    async def _client(self) -> ApiClient:
        async with self._ready:
            if self._api is None:
                await self._credentials.load()
                self._connect()
            else:
                await self._credentials.refresh()
                if self._credentials.tls_files != self._tls_files:
                    # An exec plugin handed out a new client certificate: a new TLS context.
                    await self._api.close()
                    self._connect()
            assert self._api is not None
            return self._api

    def _connect(self) -> None:
        self._api = ApiClient(self._credentials.configuration)
        self._api.user_agent = self.user_agent
        self._tls_files = self._credentials.tls_files

    async def credentials(self) -> KubeCredentials:
        """The server and current credentials, renewed if due (kopf logs in with these)."""
        await self._client()
        conf = self._credentials.configuration
        return KubeCredentials(
            server=str(conf.host),
            ca_file=conf.ssl_ca_cert,
            insecure=not conf.verify_ssl,
            authorization=await self._credentials.authorization(),
            cert_file=conf.cert_file,
            key_file=conf.key_file,
            proxy=conf.proxy,
            tls_server_name=conf.tls_server_name,
            expires=self._credentials.expires,
        )

    async def _send(
        self,
        method: str,
        path: str,
        body: object | None,
        content_type: str,
        params: Mapping[str, object | None] | None,
        timeout: aiohttp.ClientTimeout,
        accept: str,
    ) -> aiohttp.ClientResponse:
        api = await self._client()
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        response: aiohttp.ClientResponse = await api.call_api(
            path,
            method,
            query_params=_query(params),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        if method in WRITE_METHODS:
            self.writes[method] += 1
        return response

    async def _open(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, object | None] | None = None,
        timeout: aiohttp.ClientTimeout,
        accept: str = "application/json",
    ) -> aiohttp.ClientResponse:
        """A response with a 2xx status, or one whose error status is final.

        A 401 renews the credentials once and sends again; a 429 waits as long as the server
        asks (capped) and sends again. The caller reads and releases what comes back.
        """
        renewed = False
        for attempt in range(_MAX_ATTEMPTS):
            response = await self._send(method, path, body, content_type, params, timeout, accept)
            if response.status == 401 and not renewed:
                response.release()
                renewed = True
                await self._credentials.refresh(force=True)
                continue
            if response.status == 429 and attempt < _MAX_ATTEMPTS - 1:
                wait = _retry_after(response.headers.get("Retry-After"), attempt)
                response.release()
                log.info("API server throttled %s %s; again in %.1f s", method, path, wait)
                await asyncio.sleep(wait)
                continue
            return response
        raise AssertionError("unreachable")  # the last attempt returns

    async def request_raw(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        params: Mapping[str, object | None] | None = None,
        timeout: float = 30.0,
    ) -> KubeResponse:
        """One request whose answer comes back whatever its status (tests check refusals)."""
        response = await self._open(
            method,
            path,
            body,
            content_type=content_type,
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=10),
            accept=accept,
        )
        async with response:
            text = await response.text()
        return KubeResponse(response.status, text)

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
        answer = await self.request_raw(
            method, path, body, content_type=content_type, params=params, timeout=timeout
        )
        if answer.status >= 300:
            raise answer.error()
        return answer.json()

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
        """Watch events ({"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": ...}).

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
        response = await self._open(
            "GET",
            path,
            params=params,
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=timeout_seconds + 30),
        )
        async with response:
            if response.status >= 300:
                raise KubeResponse(response.status, await response.text()).error()
            async for line in response.content:
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
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        wait = float(value) if value else 0.2 * 2**attempt
    except ValueError:
        wait = 0.2 * 2**attempt
    return min(_MAX_RETRY_AFTER, max(0.05, wait))


async def sleep_backoff(attempt: int, cap: float = 10.0) -> None:
    """Wait before retrying a failed watch or call: 0.2 s, 0.4 s, ... up to `cap`."""
    await asyncio.sleep(min(cap, 0.2 * 2 ** min(attempt, 10)))
