# syntax=docker/dockerfile:1
# One image for the gateway and for the demo AgentOS upstreams:
#   docker run IMAGE                                   -> agentos-gateway serve (config at /etc/agentos-gateway/gateway.yaml)
#   docker run IMAGE upstream --name os-a --host 0.0.0.0 --port 7777 --db postgresql+psycopg://...

# -- builder: the project and its dependencies (with the postgres extra) into a venv ---------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, so a change to the code alone reuses this layer.
COPY pyproject.toml README.md ./
RUN mkdir gateway && touch gateway/__init__.py \
    && pip install --upgrade pip \
    && pip install ".[postgres]" \
    && pip uninstall --yes agentos-gateway
COPY gateway ./gateway
RUN pip install --no-deps ".[postgres]" \
    && python -m compileall -q /opt/venv/lib

# -- runtime: the venv alone, as a non-root user ----------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGNO_TELEMETRY=false

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /home/gateway --create-home \
       --shell /usr/sbin/nologin gateway

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/gateway
# 7777: the public port (AgentOS's API); 9901: the admin listener (Prometheus scrape, /admin)
EXPOSE 7777 9901

# GET /health on the port this container serves (7777 unless GATEWAY_PORT says otherwise); the slim
# image has no curl, so Python's urllib: a refused connection or a non-2xx answer exits non-zero.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_PORT', '7777'), timeout=2)"]

ENTRYPOINT ["agentos-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--config", "/etc/agentos-gateway/gateway.yaml"]
