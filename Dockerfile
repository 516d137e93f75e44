# fluidfs image: the CSI plugin (entry point fluidfs-csi), the fluidfs CLI it runs for each
# dataset's FUSE mount, and fluidfs-controller (the Dataset controller). Used by the Helm chart
# in helm/fluidfs (node DaemonSet, CSI controller, Dataset controller).
#
#   docker build -t fluidfs/fluidfs:0.1.0 .
#
# Two stages: pyfuse3 is built from source against libfuse3-dev in the first, so the final
# image carries only the runtime pieces (fuse3, mount) and the installed wheels: fluidfs and its
# runtime dependencies, no extras (no demo or test servers, no dev tooling).

ARG PYTHON_IMAGE=python:3.11-slim

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
# fuse3: fusermount3 and libfuse3; mount/util-linux: mount, umount, mountpoint, findmnt for
# bind-mounting a dataset into each pod's target path.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 mount util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'fluidfs[kubernetes]' \
    && rm -rf /wheels \
    && fluidfs-csi --help >/dev/null \
    && fluidfs-controller --help >/dev/null
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["fluidfs-csi"]
