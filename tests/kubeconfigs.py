"""Kubeconfigs of the kinds real clusters hand out, for tests: exec plugins and the like."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from duplex.testing.apiserver import KubeApiServer

PLUGIN = Path(__file__).with_name("exec_credential_plugin.py")


def exec_user(
    tokens: Path, *, calls: Path | None = None, ttl: float | None = None
) -> dict[str, Any]:
    """A kubeconfig user whose token comes from a credential plugin (see the plugin's doc)."""
    env = [{"name": "DUPLEX_PLUGIN_TOKENS", "value": str(tokens)}]
    if calls is not None:
        env.append({"name": "DUPLEX_PLUGIN_CALLS", "value": str(calls)})
    if ttl is not None:
        env.append({"name": "DUPLEX_PLUGIN_TTL", "value": str(ttl)})
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(PLUGIN)],
            "env": env,
            "interactiveMode": "Never",
        }
    }


def exec_kubeconfig(api: KubeApiServer, directory: Path) -> tuple[Path, Path]:
    """A kubeconfig whose only credential is a plugin handing out the plugin user's token,
    and the file the plugin logs its calls to.

    Its server is dialled as localhost, a name the serving certificate does not carry, and
    verified as `kubernetes` (tls-server-name), as behind a load balancer or a tunnel.
    """
    tokens = directory / "plugin-tokens"
    tokens.write_text(api.plugin_token + "\n")
    calls = directory / "plugin-calls"
    cluster = {
        "server": api.url.replace("127.0.0.1", "localhost"),
        "certificate-authority": str(api.ca_file),
        "tls-server-name": "kubernetes",
    }
    path = api.write_kubeconfig(
        directory / "exec.kubeconfig", exec_user(tokens, calls=calls), cluster=cluster
    )
    return path, calls
