# fluidfs image: the CSI plugin (entry point fluidfs-csi), the fluidfs CLI it runs for each
# dataset's FUSE mount, and fluidfs-controller (the Dataset controller). Used by the Helm chart
# in helm/fluidfs (node DaemonSet, CSI controller, Dataset controller).
#
#   docker build -t fluidfs/fluidfs:0.1.0 .
#
# Two stages: pyfuse3 is built from source against libfuse3-dev in the first, so the final
# image carries only the runtime pieces (fuse3, mount) and the installed wheels: fluidfs, its
# runtime dependencies and the kubernetes client (fluidfs-controller, peer discovery); no other
# extras (no demo or test servers such as moto, no dev or benchmark tooling).
#
# The base image is pinned to an exact release (Python patch version and Debian release): a
# rebuild gets the same interpreter; move the pin deliberately (or pin a digest with
# --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:...).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libfuse3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fluidfs ./fluidfs
COPY csi ./csi
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[kubernetes]'

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fluidfs" \
      org.opencontainers.image.description="Read-only FUSE filesystem and CSI driver for training datasets on S3/HTTP/local sources" \
      org.opencontainers.image.licenses="Apache-2.0"
# fuse3: fusermount3 and libfuse3 (the FUSE mounts); mount: umount, which `fluidfs umount`
# falls back to (the CSI plugin binds and unmounts with the system calls themselves);
# ca-certificates: TLS to S3 and HTTP sources.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 mount ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'fluidfs[kubernetes]' \
    && rm -rf /wheels \
    && fluidfs-csi --help >/dev/null \
    && fluidfs-controller --help >/dev/null
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["fluidfs-csi"]
