"""A client-go credential plugin for tests: prints an ExecCredential, as EKS's or GKE's would.

The token is the first line of the file $DUPLEX_PLUGIN_TOKENS; with more lines, each call
takes the next one (a rotation), the last one staying. Each call appends a JSON line to
$DUPLEX_PLUGIN_CALLS when set (the request client-go passes in $KUBERNETES_EXEC_INFO, and the
command line of the process that ran the plugin), so a test can count them and tell who
called. $DUPLEX_PLUGIN_TTL: seconds until the token is said to expire (default an hour).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path


def main() -> int:
    tokens_file = Path(os.environ["DUPLEX_PLUGIN_TOKENS"])
    tokens = tokens_file.read_text().split()
    if not tokens:
        print("no token to hand out", file=sys.stderr)
        return 1
    if len(tokens) > 1:
        tokens_file.write_text("\n".join(tokens[1:]) + "\n")
    calls = os.environ.get("DUPLEX_PLUGIN_CALLS")
    if calls:
        caller = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
        call = {
            "exec_info": json.loads(os.environ.get("KUBERNETES_EXEC_INFO") or "{}"),
            "caller": [arg.decode(errors="replace") for arg in caller if arg],
        }
        with Path(calls).open("a") as out:
            out.write(json.dumps(call) + "\n")
    expires = time.time() + float(os.environ.get("DUPLEX_PLUGIN_TTL", "3600"))
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {
            "token": tokens[0],
            "expirationTimestamp": datetime.fromtimestamp(expires, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        },
    }
    print(json.dumps(credential))
    return 0


if __name__ == "__main__":
    sys.exit(main())
