"""A real kube-apiserver and etcd on loopback, envtest style: no kubelet and no controllers.

For the operator's tests and `duplex bench operator` on a machine without a cluster. In a
source checkout the binaries come from tools/build-test-binaries.sh, which builds them once
into a cache outside the checkout; an installed package finds them on PATH. The apiserver
serves the project's CRDs to bearer tokens over HTTPS (an admin, and a second user for
credential plugins); the kubeconfig written here carries the admin's for programs under test,
and an audit log records every write the server answers, with the user and user agent that made it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import yaml

from duplex.kube import KubeApiError, KubeClient
from duplex.ports import free_ports

ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = ROOT / "tools" / "build-test-binaries.sh"
# The CRDs: the checkout's, or the copy the wheel carries.
CRD_DIR = next(
    (d for d in (ROOT / "manifests" / "crds", Path(__file__).parent / "crds") if d.is_dir()),
    ROOT / "manifests" / "crds",
)
PLUGIN_USER = "plugin-user"
CERT_USER = "cert-user"
OIDC_USER = "oidc-user"

T = TypeVar("T")

# Metadata of every request that changes something; reads are not recorded.
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


@dataclass(frozen=True)
class KubeApiServer:
    url: str
    token: str  # the admin's (system:masters), also in `kubeconfig`
    ca_file: Path
    kubeconfig: Path
    # A second user for credentials that reach the server another way (an exec plugin).
    plugin_token: str
    # A third user's token, shaped as an OpenID Connect id-token (a JWT that expires in a day),
    # for kubeconfigs with an `oidc` auth-provider; the server takes it as a static token.
    oidc_token: str
    # Every write request the server answered, as JSON lines (user, user agent, verb, object).
    audit_log: Path
    # A client certificate (user cert-user, group system:masters) and its key.
    client_cert: Path
    client_key: Path

    def write_kubeconfig(
        self, path: Path, user: dict[str, Any], *, cluster: dict[str, Any] | None = None
    ) -> Path:
        """A kubeconfig for this server whose user is `user` (token, exec, certificate...)."""
        _write_kubeconfig(self, path, user, cluster)
        return path

    def client(self, **options: Any) -> KubeClient:
        """A client of the admin's kubeconfig."""
        return KubeClient.load(self.kubeconfig, **options)

    def writes(self) -> list[dict[str, Any]]:
        """The audit log's events so far: who changed what (the log is written as it happens)."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events


def locate_binaries(names: Sequence[str] = ("kube-apiserver", "etcd")) -> dict[str, Path]:
    """Paths of the test binaries, building the missing ones first (the script caches them)."""
    if not BUILD_SCRIPT.is_file():  # an installed package: no sources to build from
        on_path = {name: shutil.which(name) for name in names}
        missing = [name for name, path in on_path.items() if path is None]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} not on PATH: install them, or run from a source checkout"
                f" of duplex, where {BUILD_SCRIPT.name} builds them"
            )
        return {name: Path(str(path)) for name, path in on_path.items()}
    script = ["bash", str(BUILD_SCRIPT)]
    check = subprocess.run(
        [*script, "--check", *names], capture_output=True, text=True, check=False
    )
    output = check.stdout
    if check.returncode != 0:
        output = _build(script, names)
    paths = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    found = {name: Path(paths.get(name, "")) for name in names}
    missing = [name for name, path in found.items() if not path.is_file()]
    if missing:
        raise RuntimeError(f"{BUILD_SCRIPT.name} reported no binary for {', '.join(missing)}")
    return found


def _build(script: list[str], names: Sequence[str]) -> str:
    # The first build takes tens of minutes: its progress is passed through as it comes,
    # and its last lines go into the error if it fails.
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(
        [*script, *names], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as build:
        assert build.stderr is not None and build.stdout is not None
        for line in build.stderr:
            sys.stderr.write(line)
            tail.append(line)
        output = build.stdout.read()
    if build.returncode != 0:
        raise RuntimeError(
            f"tools/{BUILD_SCRIPT.name} could not build {', '.join(names)} "
            f"(exit {build.returncode}):\n{''.join(tail)}"
        )
    return output


class KubeControlPlane:
    """etcd and kube-apiserver on free loopback ports, serving the project's CRDs.

    `with KubeControlPlane() as api:` yields a KubeApiServer once /readyz answers, the
    default namespace exists and every CRD is Established and in discovery.
    """

    def __init__(self, *, crd_dir: Path = CRD_DIR, start_timeout: float = 120) -> None:
        self._crd_dir = crd_dir
        self._start_timeout = start_timeout
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._processes: list[_Process] = []

    def __enter__(self) -> KubeApiServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> KubeApiServer:
        binaries = locate_binaries()
        self._dir = tempfile.TemporaryDirectory(prefix="duplex-kube-")
        root = Path(self._dir.name)
        deadline = time.monotonic() + self._start_timeout
        # Ports are picked free and then bound by another process, so one may be taken in
        # between; that start is retried on new ports.
        for attempt in range(3):
            try:
                api = self._start_servers(binaries, root / f"run{attempt}", deadline)
                break
            except _PortTaken:
                self._stop_processes()
        else:
            raise RuntimeError("etcd or kube-apiserver found its port taken three times")
        return api

    def stop(self) -> None:
        self._stop_processes()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _stop_processes(self) -> None:
        # The apiserver first: it keeps retrying a vanished etcd instead of exiting.
        while self._processes:
            self._processes.pop().stop()

    def _start_servers(
        self, binaries: dict[str, Path], run: Path, deadline: float
    ) -> KubeApiServer:
        # The servers are started from this thread and only waited on from another: each asks
        # for a death signal when its parent thread ends (see _dying_with_parent).
        run.mkdir()
        etcd_port, peer_port, api_port = free_ports(3)
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd_args = [
            str(binaries["etcd"]),
            "--name=test",
            f"--data-dir={run / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--initial-cluster-state=new",
        ]
        if _supports(binaries["etcd"], "--unsafe-no-fsync"):
            # Throwaway data: durability only costs time.
            etcd_args.append("--unsafe-no-fsync")
        etcd = self._spawn("etcd", etcd_args, run / "etcd.log")
        _run(etcd.until(lambda: _etcd_healthy(etcd_url), "answer /health", deadline))

        token, plugin_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        oidc_token = _id_token(OIDC_USER, expires=time.time() + 86400)
        tokens = run / "tokens.csv"
        tokens.write_text(
            f'{token},admin,admin,"system:masters"\n'
            f'{plugin_token},{PLUGIN_USER},{PLUGIN_USER},"system:masters"\n'
            f'{oidc_token},{OIDC_USER},{OIDC_USER},"system:masters"\n'
        )
        sa_key = run / "service-account.key"
        _write_rsa_key(sa_key)
        client_ca = _write_client_certificates(run)
        policy = run / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
        cert_dir = run / "certs"
        api = KubeApiServer(
            url=f"https://127.0.0.1:{api_port}",
            token=token,
            # With --cert-dir and no certificate given, the apiserver writes a self-signed
            # CA and a serving cert for its bind and advertise addresses into this one file.
            ca_file=cert_dir / "apiserver.crt",
            kubeconfig=run / "kubeconfig",
            plugin_token=plugin_token,
            oidc_token=oidc_token,
            audit_log=run / "audit.log",
            client_cert=run / "client.crt",
            client_key=run / "client.key",
        )
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(binaries["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={cert_dir}",
                f"--token-auth-file={tokens}",
                f"--client-ca-file={client_ca}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                # This admission plugin rejects Pods until a controller-manager has created
                # the namespace's `default` ServiceAccount; there is none here.
                "--disable-admission-plugins=ServiceAccount",
                # The `kubernetes` Service's endpoints would be 127.0.0.1, which the API
                # rejects as loopback; nothing runs in-cluster to use them anyway.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={api.audit_log}",
                "--audit-log-format=json",
                # Written as each request completes, so a test reads what just happened.
                "--audit-log-mode=blocking",
            ],
            run / "kube-apiserver.log",
        )
        _run(self._bootstrap(api, apiserver, deadline))
        return api

    async def _bootstrap(self, api: KubeApiServer, server: _Process, deadline: float) -> None:
        # The serving certificate (our CA) exists once the apiserver has generated it.
        await server.until(_exists(api.ca_file), "write its certificate", deadline)
        _write_kubeconfig(api, api.kubeconfig, {"token": api.token})
        async with api.client() as client:
            await server.until(_answers(client, "/readyz"), "become ready", deadline)
            # The apiserver's own bootstrap controller creates it, shortly after /readyz.
            await server.until(
                _answers(client, "/api/v1/namespaces/default"),
                "create the default namespace",
                deadline,
            )
            await self._apply_crds(client, server, deadline)

    def _spawn(self, name: str, argv: list[str], log: Path) -> _Process:
        process = _Process(name, argv, log)
        self._processes.append(process)
        return process

    async def _apply_crds(self, client: KubeClient, server: _Process, deadline: float) -> None:
        crds = [
            doc
            for path in sorted(self._crd_dir.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") == "CustomResourceDefinition"
        ]
        if not crds:
            raise RuntimeError(f"no CustomResourceDefinition in {self._crd_dir}")
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in crds:
            try:
                await client.create(base, crd)
            except KubeApiError as exc:
                raise RuntimeError(f"creating CRD {crd['metadata']['name']}: {exc}") from exc
        for crd in crds:
            name = crd["metadata"]["name"]
            await server.until(
                _established(client, f"{base}/{name}"), f"establish CRD {name}", deadline
            )
            # Established can precede the group version's discovery document by a moment,
            # and clients that resolve resources through discovery need that too.
            spec = crd["spec"]
            plural = spec["names"]["plural"]
            for version in spec["versions"]:
                if version.get("served", True):
                    path = f"/apis/{spec['group']}/{version['name']}"
                    await server.until(
                        _discovers(client, path, plural), f"serve {plural} in {path}", deadline
                    )


class _PortTaken(Exception):
    pass


class _Process:
    """A server process started here, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self._popen = subprocess.Popen(
                _dying_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def until(
        self, condition: Callable[[], Awaitable[bool]], what: str, deadline: float
    ) -> None:
        while not await condition():
            if self._popen.poll() is not None:
                tail = self.tail()
                if "address already in use" in tail:
                    raise _PortTaken(self.name)
                raise RuntimeError(
                    f"{self.name} exited with status {self._popen.returncode} before it could "
                    f"{what}; the end of its log:\n{tail}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not {what} in time; the end of its log:\n{self.tail()}"
                )
            await asyncio.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        with self.log.open(errors="replace") as log:
            return "".join(collections.deque(log, maxlen=lines))

    def stop(self) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, on a loop and thread of its own.

    The caller may be a test whose event loop (idle or running) belongs to this thread.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="control-plane") as pool:
        return pool.submit(asyncio.run, coro).result()


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await asyncio.to_thread(path.exists)

    return check


async def _etcd_healthy(url: str) -> bool:
    try:
        # trust_env off: a proxy from the environment must not intercept loopback.
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=1)) as response,
        ):
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def _answers(client: KubeClient, path: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            answer = await client.request_raw("GET", path, accept="*/*", timeout=2)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        return answer.status == 200

    return check


def _established(client: KubeClient, path: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        answer = await client.request_raw("GET", path)
        if answer.status != 200:
            return False
        conditions = answer.json().get("status", {}).get("conditions") or []
        for condition in conditions:
            if condition["type"] == "NamesAccepted" and condition["status"] == "False":
                raise RuntimeError(f"{path}: names not accepted: {condition.get('message')}")
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    return check


def _discovers(client: KubeClient, path: str, plural: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        answer = await client.request_raw("GET", path)
        if answer.status != 200:
            return False
        return plural in {resource["name"] for resource in answer.json().get("resources", [])}

    return check


def _supports(binary: Path, flag: str) -> bool:
    result = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return flag in result.stdout + result.stderr


def _id_token(subject: str, expires: float) -> str:
    """An unsigned JWT with `sub` and `exp`: what a kubeconfig's oidc auth-provider holds and
    reads the expiry of (this server matches it as a plain string, so no signature is needed)."""
    import base64

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    claims = {"iss": "https://issuer.invalid", "sub": subject, "exp": int(expires)}
    return ".".join((part({"alg": "none", "typ": "JWT"}), part(claims), secrets.token_hex(8)))


def _write_rsa_key(path: Path) -> None:
    # The apiserver signs service-account tokens with it; any RSA key will do.
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), "2048"], capture_output=True, check=True
    )


def _write_client_certificates(run: Path) -> Path:
    """A CA the apiserver trusts for client certificates, and one certificate it signed."""
    ca_key, ca, key, request = (run / n for n in ("ca.key", "ca.crt", "client.key", "client.csr"))
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subject = f"/O=system:masters/CN={CERT_USER}"
    sign = ["-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2"]
    for argv in (
        ["req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-subj", "/CN=duplex-test-ca"],
        ["req", *new_key, "-keyout", key, "-out", request, "-subj", subject],
        ["x509", "-req", "-in", request, *sign, "-out", run / "client.crt"],
    ):
        subprocess.run(["openssl", *map(str, argv)], capture_output=True, check=True)
    return ca


def _write_kubeconfig(
    api: KubeApiServer, path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": cluster
                or {"server": api.url, "certificate-authority": str(api.ca_file)},
            }
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [
            {
                "name": "test",
                "context": {"cluster": "test", "user": "user", "namespace": "default"},
            }
        ],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _dying_with_parent(argv: list[str]) -> list[str]:
    """argv, run so that a test run killed without teardown leaves no apiserver or etcd behind.

    `setpriv --pdeathsig` asks the kernel for the signal, then execs the server. Not a
    `preexec_fn`: that forces a real fork() of this multi-threaded process, and gRPC's fork
    handlers can abort the child before it ever reaches exec.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv
