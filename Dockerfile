# syntax=docker/dockerfile:1
# The pmsctl image: `pmsctl` as the entrypoint (default command: `pmsctl operator`).
#   make image                       # docker, podman or buildah, whichever can run here
#   docker build --build-arg VERSION=0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
# Two stages: the first builds wheels for pmsctl and its dependencies; the second installs
# them from that folder only (no index, no compiler) on the same slim base. The runtime runs as
# UID/GID 10001 with a read-only root filesystem: everything it writes goes to /var/lib/pmsctl
# (the state volume) and /tmp (an emptyDir in deploy/), with umask 077.

# An exact patch release: a floating tag would change the runtime under a fixed pmsctl version.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY reconciler/ reconciler/
COPY pms_drivers/ pms_drivers/
COPY pms_simulator/ pms_simulator/
# pmsctl's own wheel plus a wheel of every dependency (all publish binary wheels for
# manylinux, so this stage needs no compiler either; --only-binary makes that a rule).
RUN pip wheel --wheel-dir /wheels --only-binary=:all: .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="pmsctl" \
      org.opencontainers.image.description="Declarative PMS writeback and sync settings for dental practices: the PracticeWriteback operator and the pmsctl CLI." \
      org.opencontainers.image.source="https://github.com/dental-dev/pmsctl" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only at run time (bytecode is compiled
# at install time instead). PMSCTL_GIT_COMMIT: what `pmsctl version` reports as the commit.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/var/lib/pmsctl \
    PMSCTL_GIT_COMMIT=${GIT_COMMIT} \
    PMSCTL_STATE_DB=/var/lib/pmsctl/state.db \
    PMSCTL_WRITEBACK_DB=/var/lib/pmsctl/writebacks.db
RUN groupadd --system --gid 10001 pmsctl \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pmsctl --no-create-home \
      --shell /usr/sbin/nologin pmsctl \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/pmsctl
# The wheels are bind-mounted from the first stage, so none of them stays in a layer.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels --compile pmsctl==${VERSION}
COPY --chmod=0755 deploy/image/entrypoint.sh /usr/local/bin/pmsctl-entrypoint
USER 10001:10001
WORKDIR /var/lib/pmsctl
VOLUME ["/var/lib/pmsctl"]
EXPOSE 8080 8081 9090
ENTRYPOINT ["/usr/local/bin/pmsctl-entrypoint"]
CMD ["operator"]
