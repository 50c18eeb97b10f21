"""A real kube-apiserver and etcd on loopback, envtest style: no kubelet and no controllers.

For the operator's tests and `duplex bench operator` on a machine without a cluster. The
binaries come from tools/build-test-binaries.sh, which builds them once into a cache outside
the checkout, so this works from a source checkout only. The apiserver serves the project's
CRDs to an admin bearer token over HTTPS; the kubeconfig written here carries the same for
programs under test.
"""

from __future__ import annotations

import collections
import functools
import json
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from duplex.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tools" / "build-test-binaries.sh"
CRD_DIR = ROOT / "manifests" / "crds"


@dataclass(frozen=True)
class KubeResponse:
    status: int
    text: str

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.text)
        return body

    @property
    def message(self) -> str:
        """The message of a metav1.Status error body; empty for other bodies."""
        try:
            return str(self.json().get("message", ""))
        except ValueError:
            return ""


@dataclass(frozen=True)
class KubeApiServer:
    url: str
    token: str
    ca_file: Path
    kubeconfig: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float = 10,
    ) -> KubeResponse:
        """One request as the admin user; error statuses are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", accept)
        if data is not None:
            request.add_header("Content-Type", content_type)
        opener = _loopback_opener(urllib.request.HTTPSHandler(context=self.ssl_context()))
        try:
            with opener.open(request, timeout=timeout) as response:
                return KubeResponse(response.status, response.read().decode())
        except urllib.error.HTTPError as error:
            with error:
                return KubeResponse(error.code, error.read().decode())


def locate_binaries(names: Sequence[str] = ("kube-apiserver", "etcd")) -> dict[str, Path]:
    """Paths of the test binaries, building the missing ones first (the script caches them)."""
    if not BUILD_SCRIPT.is_file():
        raise RuntimeError(
            f"{BUILD_SCRIPT} not found: a local control plane needs a source checkout of duplex"
        )
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
        self._apply_crds(api, deadline)
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
        etcd.wait_until(lambda: _etcd_healthy(etcd_url), "answer /health", deadline)

        token = secrets.token_urlsafe(32)
        tokens = run / "tokens.csv"
        tokens.write_text(f'{token},admin,admin,"system:masters"\n')
        sa_key = run / "service-account.key"
        _write_rsa_key(sa_key)
        cert_dir = run / "certs"
        api = KubeApiServer(
            url=f"https://127.0.0.1:{api_port}",
            token=token,
            # With --cert-dir and no certificate given, the apiserver writes a self-signed
            # CA and a serving cert for its bind and advertise addresses into this one file.
            ca_file=cert_dir / "apiserver.crt",
            kubeconfig=run / "kubeconfig",
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
            ],
            run / "kube-apiserver.log",
        )
        apiserver.wait_until(lambda: _answers(api, "/readyz"), "become ready", deadline)
        # The apiserver's own bootstrap controller creates it, shortly after /readyz.
        apiserver.wait_until(
            lambda: _answers(api, "/api/v1/namespaces/default"),
            "create the default namespace",
            deadline,
        )
        _write_kubeconfig(api)
        return api

    def _spawn(self, name: str, argv: list[str], log: Path) -> _Process:
        process = _Process(name, argv, log)
        self._processes.append(process)
        return process

    def _apply_crds(self, api: KubeApiServer, deadline: float) -> None:
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
            created = api.request("POST", base, crd)
            if created.status != 201:
                name = crd["metadata"]["name"]
                raise RuntimeError(f"creating CRD {name}: {created.status} {created.text}")
        for crd in crds:
            name = crd["metadata"]["name"]
            established = functools.partial(_established, api, f"{base}/{name}")
            _wait_until(established, f"CRD {name} to be Established", deadline)
            # Established can precede the group version's discovery document by a moment,
            # and clients that resolve resources through discovery need that too.
            spec = crd["spec"]
            plural = spec["names"]["plural"]
            for version in spec["versions"]:
                if version.get("served", True):
                    path = f"/apis/{spec['group']}/{version['name']}"
                    discovered = functools.partial(_discovers, api, path, plural)
                    _wait_until(discovered, f"{plural} in {path}", deadline)


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

    def wait_until(self, condition: Callable[[], bool], what: str, deadline: float) -> None:
        while not condition():
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
            time.sleep(0.05)

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


def _wait_until(condition: Callable[[], bool], what: str, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _loopback_opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    # An empty ProxyHandler: a proxy from the environment must not intercept loopback.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), *handlers)


def _etcd_healthy(url: str) -> bool:
    try:
        with _loopback_opener().open(f"{url}/health", timeout=1) as response:
            return bool(json.load(response).get("health") == "true")
    except (OSError, HTTPException, ValueError):
        return False


def _answers(api: KubeApiServer, path: str) -> bool:
    if not api.ca_file.exists():
        return False
    try:
        return api.request("GET", path, accept="*/*", timeout=2).status == 200
    except (OSError, HTTPException):
        return False


def _established(api: KubeApiServer, path: str) -> bool:
    response = api.request("GET", path)
    if response.status != 200:
        return False
    conditions = response.json().get("status", {}).get("conditions") or []
    for condition in conditions:
        if condition["type"] == "NamesAccepted" and condition["status"] == "False":
            raise RuntimeError(f"{path}: names not accepted: {condition.get('message')}")
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _discovers(api: KubeApiServer, path: str, plural: str) -> bool:
    response = api.request("GET", path)
    if response.status != 200:
        return False
    return plural in {resource["name"] for resource in response.json().get("resources", [])}


def _supports(binary: Path, flag: str) -> bool:
    result = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return flag in result.stdout + result.stderr


def _write_rsa_key(path: Path) -> None:
    # The apiserver signs service-account tokens with it; any RSA key will do.
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), "2048"], capture_output=True, check=True
    )


def _write_kubeconfig(api: KubeApiServer) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": api.url, "certificate-authority": str(api.ca_file)},
            }
        ],
        "users": [{"name": "admin", "user": {"token": api.token}}],
        "contexts": [
            {
                "name": "test",
                "context": {"cluster": "test", "user": "admin", "namespace": "default"},
            }
        ],
        "current-context": "test",
    }
    api.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))


def _dying_with_parent(argv: list[str]) -> list[str]:
    """argv, run so that a test run killed without teardown leaves no apiserver or etcd behind.

    `setpriv --pdeathsig` asks the kernel for the signal, then execs the server. Not a
    `preexec_fn`: that forces a real fork() of this multi-threaded process, and gRPC's fork
    handlers can abort the child before it ever reaches exec.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv
