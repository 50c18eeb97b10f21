"""The dev image's entrypoint: `duplex ARGS`, restarted whenever a Python file changes.

Pods run with a read-only root file system, so the code runs from a copy on /tmp (an emptyDir),
where Tilt's live updates write; the image puts that copy first on PYTHONPATH. Files already
in the copy are kept: after a container restart they may be newer than the image's.
"""

import shlex
import shutil
import sys
from pathlib import Path

import watchfiles

SOURCE = Path("/app")
WORK = Path("/tmp/app")
PACKAGES = ("services", "operator")


def copy_if_absent(source: str, target: str) -> None:
    if not Path(target).exists():
        shutil.copy2(source, target)


for package in PACKAGES:
    shutil.copytree(
        SOURCE / package, WORK / package, dirs_exist_ok=True, copy_function=copy_if_absent
    )
watchfiles.run_process(
    *(WORK / package for package in PACKAGES),
    target=shlex.join(["duplex", *sys.argv[1:]]),
    target_type="command",
    watch_filter=watchfiles.PythonFilter(),
)
