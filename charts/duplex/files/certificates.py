"""The TLS Secrets between the orchestrator and the workers, made with openssl.

Run by the chart's Job at install and upgrade (where cert-manager does not make them), with
the Python standard library alone, so that it does not depend on the image's code. A CA of the
release's own signs the workers' server certificate (named after the worker prefix: workers
are reached by Pod IP, which no certificate can name) and the orchestrator's client
certificate. Each Secret has the keys of a cert-manager one: tls.crt, tls.key and ca.crt.

What is still good is kept: a certificate is made anew when it is missing, ends within
RENEW_DAYS, names another name, or was not signed by the current CA. A renewed CA keeps its key,
so the certificates it signed before stay valid, and Pods that started with them go on working.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Where a Pod finds its service account's token and the cluster's CA.
ACCOUNT = Path(
    os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
)
NAME_ANNOTATION = "duplex.dev/tls-name"

EXTENSIONS = """
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:{name}
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


class Api:
    """The Secrets of one namespace, through the API server's REST interface."""

    def __init__(self, namespace: str) -> None:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        self.server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        self.tls = ssl.create_default_context(cafile=str(ACCOUNT / "ca.crt"))
        self.path = f"/api/v1/namespaces/{namespace}/secrets"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {(ACCOUNT / 'token').read_text().strip()}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.server + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if method == "GET" and error.code == 404:
                return None
            raise SystemExit(f"{method} {path}: {error.code} {error.read().decode()}") from None

    def read(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.call("GET", f"{self.path}/{name}")
        return found

    def write(
        self, name: str, old: dict[str, Any] | None, files: dict[str, bytes], tls_name: str
    ) -> None:
        labels = json.loads(os.environ.get("LABELS", "{}"))
        secret: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {NAME_ANNOTATION: tls_name},
            },
            "type": "kubernetes.io/tls",
            "data": {key: base64.b64encode(value).decode() for key, value in files.items()},
        }
        if old is None:
            self.call("POST", self.path, secret)
        else:
            secret["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            self.call("PUT", f"{self.path}/{name}", secret)
        print(f"wrote Secret {name} ({tls_name})", flush=True)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, check=False)


def must(*args: str | Path) -> None:
    result = openssl(*args)
    if result.returncode != 0:
        raise SystemExit(f"openssl {args[0]} failed: {result.stderr.decode(errors='replace')}")


class Workshop:
    """A private directory where keys and certificates are made and checked."""

    def __init__(self, directory: Path, renew_days: int) -> None:
        self.dir = directory
        self.renew_seconds = renew_days * 86400

    def file(self, name: str, content: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(content)
        return path

    def config(self, name: str) -> Path:
        return self.file("openssl.cnf", EXTENSIONS.format(name=name).encode())

    def good(self, cert: bytes, ca: bytes | None = None) -> bool:
        """Valid for longer than the renewal margin (and signed by `ca`, when given)."""
        path = self.file("check.crt", cert)
        if openssl("x509", "-in", path, "-noout", "-checkend", str(self.renew_seconds)).returncode:
            return False
        if ca is None:
            return True
        return openssl("verify", "-CAfile", self.file("check-ca.crt", ca), path).returncode == 0

    def key(self, name: str) -> Path:
        path = self.dir / name
        must("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        return path

    def ca(self, name: str, key: bytes | None, days: int) -> tuple[bytes, bytes]:
        key_path = self.file("ca.key", key) if key else self.key("ca.key")
        cert = self.dir / "ca.crt"
        subject = f"/CN={name}"
        must(
            "req",
            "-new",
            "-x509",
            "-key",
            key_path,
            "-subj",
            subject,
            "-days",
            str(days),
            "-config",
            self.config(name),
            "-extensions",
            "ca",
            "-out",
            cert,
        )
        return cert.read_bytes(), key_path.read_bytes()

    def leaf(self, name: str, kind: str, ca: tuple[bytes, bytes], days: int) -> tuple[bytes, bytes]:
        key = self.key(f"{kind}.key")
        request, cert = self.dir / f"{kind}.csr", self.dir / f"{kind}.crt"
        config = self.config(name)
        must("req", "-new", "-key", key, "-subj", f"/CN={name}", "-config", config, "-out", request)
        must(
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            self.file("ca.crt", ca[0]),
            "-CAkey",
            self.file("ca.key", ca[1]),
            "-set_serial",
            f"0x{secrets.token_hex(16)}",
            "-days",
            str(days),
            "-extfile",
            config,
            "-extensions",
            kind,
            "-out",
            cert,
        )
        return cert.read_bytes(), key.read_bytes()


def data(secret: dict[str, Any] | None, key: str) -> bytes | None:
    value = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(value) if value else None


def tls_name(secret: dict[str, Any] | None) -> str | None:
    annotations = (secret or {}).get("metadata", {}).get("annotations") or {}
    name: str | None = annotations.get(NAME_ANNOTATION)
    return name


def main() -> None:
    env = os.environ
    api = Api(env["NAMESPACE"])
    days, ca_days = int(env["DAYS"]), int(env["CA_DAYS"])
    with tempfile.TemporaryDirectory() as directory:
        shop = Workshop(Path(directory), int(env["RENEW_DAYS"]))
        ca_name = env["CA_NAME"]
        old_ca = api.read(env["CA_SECRET"])
        ca_cert, ca_key = data(old_ca, "tls.crt"), data(old_ca, "tls.key")
        if (
            ca_cert is None
            or ca_key is None
            or tls_name(old_ca) != ca_name
            or not shop.good(ca_cert)
        ):
            ca_cert, ca_key = shop.ca(
                ca_name, ca_key if tls_name(old_ca) == ca_name else None, ca_days
            )
            api.write(
                env["CA_SECRET"],
                old_ca,
                {"tls.crt": ca_cert, "tls.key": ca_key, "ca.crt": ca_cert},
                ca_name,
            )
        for secret_name, name, kind in (
            (env["WORKER_SECRET"], env["WORKER_NAME"], "server"),
            (env["ORCHESTRATOR_SECRET"], env["ORCHESTRATOR_NAME"], "client"),
        ):
            old = api.read(secret_name)
            cert = data(old, "tls.crt")
            if (
                cert is not None
                and data(old, "tls.key") is not None
                and data(old, "ca.crt") == ca_cert
                and tls_name(old) == name
                and shop.good(cert, ca_cert)
            ):
                print(f"Secret {secret_name} is good", flush=True)
                continue
            cert, key = shop.leaf(name, kind, (ca_cert, ca_key), days)
            api.write(secret_name, old, {"tls.crt": cert, "tls.key": key, "ca.crt": ca_cert}, name)


if __name__ == "__main__":
    main()
