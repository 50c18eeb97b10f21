"""Generate the Python gRPC stubs for `proto/*.proto` into `services/duplex/rpc/_proto`.

Run by the build (see `hatch_build.py`) and by CI with `--check`, which fails when the committed
stubs differ from what the .proto files produce (drift).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "services" / "duplex" / "rpc" / "_proto"
HEADER = "# Generated from proto/ by proto/generate.py. Do not edit.\n"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # imported here: only builds and CI need grpcio-tools

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out_dir.glob("*_pb2*.py*")):
        text = path.read_text()
        # protoc writes absolute imports of sibling modules; the stubs live inside a package.
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        if not text.startswith(HEADER):
            text = HEADER + text
        path.write_text(text)
        written.append(path)
    (out_dir / "__init__.py").write_text(HEADER)
    return written


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        names = sorted(p.name for p in fresh.iterdir())
        stale = [n for n in names if not (OUT_DIR / n).exists()]
        stale += [
            n
            for n in names
            if (OUT_DIR / n).exists() and not filecmp.cmp(fresh / n, OUT_DIR / n, shallow=False)
        ]
        if stale:
            print("generated stubs are out of date: " + ", ".join(stale), file=sys.stderr)
            print("run: python proto/generate.py", file=sys.stderr)
            return 1
    print("generated stubs match proto/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    opts = parser.parse_args()
    if opts.check:
        return check()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for path in Path(tmp).iterdir():
            shutil.copy2(path, OUT_DIR / path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
