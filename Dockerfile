# One image for every role of the orchestrator: the command picks the role.
#   docker build -t kafka-orchestrator .
#   docker run kafka-orchestrator worker --hostname 'orchestrator@%h'
#   docker run kafka-orchestrator consume | web --host 0.0.0.0 --port 8080 | db upgrade
# Settings come from ORCHESTRATOR_* environment variables (see compose.yaml).

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: install the project and its dependencies into a virtualenv ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/orchestrator
WORKDIR /src
# Dependencies change less often than the code: resolve them in their own layer first.
COPY pyproject.toml README.md ./
RUN mkdir orchestrator workflows migrations web \
 && /opt/orchestrator/bin/pip install . \
 && /opt/orchestrator/bin/pip uninstall --yes kafka-orchestrator
COPY orchestrator ./orchestrator
COPY workflows ./workflows
COPY migrations ./migrations
COPY web ./web
RUN /opt/orchestrator/bin/pip install --no-deps .

# -- runtime: the virtualenv only, run as an unprivileged user ---------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/orchestrator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app
RUN groupadd --system --gid 10001 orchestrator \
 && useradd --system --uid 10001 --gid orchestrator --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin orchestrator \
 && mkdir /app && chown orchestrator:orchestrator /app
COPY --from=build /opt/orchestrator /opt/orchestrator
# /app is on PYTHONPATH: a derived image adds its own workflow modules there and names
# them in ORCHESTRATOR_WORKFLOWS (the shipped examples are the package `workflows`).
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["orchestrator"]
CMD ["worker", "--hostname", "orchestrator@%h"]
