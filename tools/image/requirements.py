"""Print the image's requirements, one per line, from pyproject.toml (the Dockerfile's deps stage).

The dependencies of the extras `all` and `operator` (following `duplex-voice[...]` references
between extras), and the build requirements: the project itself is installed without build
isolation. Not `llm`: a cluster's orchestrators ask an LLM service (responder kind openai)
rather than carry half a gigabyte of model in every Pod. Run by the Dockerfile as
`python requirements.py pyproject.toml`; `--extra NAME` prints that extra's alone (the GPU
image's layer: `--extra gpu`).
"""

import re
import sys
import tomllib

args = sys.argv[1:]
only = None
if args[:1] == ["--extra"]:
    only, args = args[1], args[2:]
with open(args[0], "rb") as f:
    meta = tomllib.load(f)
project = meta["project"]
extras = project["optional-dependencies"]
self_ref = re.compile(re.escape(project["name"]) + r"\[([^\]]+)\]")
if only is None:
    requirements = list(project["dependencies"]) + list(meta["build-system"]["requires"])
    wanted, seen = ["all", "operator"], {"llm"}
else:
    requirements, wanted, seen = [], [only], set()
while wanted:
    extra = wanted.pop()
    if extra in seen:
        continue
    seen.add(extra)
    for requirement in extras[extra]:
        nested = self_ref.fullmatch(requirement.replace(" ", ""))
        if nested:
            wanted += nested.group(1).split(",")
        else:
            requirements.append(requirement)
print("\n".join(requirements))
