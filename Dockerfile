# syntax=docker/dockerfile:1
# Gatehouse sidecar image: the package installed (not editable) into /opt/gatehouse,
# run as an unprivileged user. Postgres and Redis are external: configure them with
# GATEHOUSE_DATABASE_URL / GATEHOUSE_REDIS_URL (and GATEHOUSE_OPERATOR_KEY), or flags.
# The server's GATEHOUSE_DATABASE_URL names the runtime role (owns nothing, no superuser,
# no BYPASSRLS); `migrate` connects as the owner (GATEHOUSE_MIGRATE_DATABASE_URL) and
# grants the runtime role (the user of GATEHOUSE_DATABASE_URL) its DML. See README.md,
# "Database roles".
#
#   docker build -t gatehouse .
#   docker run --rm -e GATEHOUSE_MIGRATE_DATABASE_URL=postgresql://gatehouse@db/gatehouse \
#       -e GATEHOUSE_DATABASE_URL=postgresql://gatehouse_app@db/gatehouse gatehouse migrate up
#   docker run --rm -p 50051:50051 -e GATEHOUSE_DATABASE_URL=postgresql://gatehouse_app@db/gatehouse \
#       -e GATEHOUSE_REDIS_URL=... gatehouse
#
# TLS: mount the certificate, key (and, for mutual TLS, the client-CA bundle) and name them;
# the listener then serves TLS and the plaintext opt-in in CMD no longer applies:
#
#   docker run --rm -p 50051:50051 -v /etc/gatehouse/tls:/tls:ro \
#       -e GATEHOUSE_TLS_CERT_FILE=/tls/tls.crt -e GATEHOUSE_TLS_KEY_FILE=/tls/tls.key \
#       -e GATEHOUSE_TLS_CLIENT_CA_FILE=/tls/ca.crt -e GATEHOUSE_DATABASE_URL=... gatehouse

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1
RUN python -m venv /opt/gatehouse
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them
# (all but gatehouse-client: the light client in clients/python, whose generated stubs the
# server imports, is installed from this source below).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith('gatehouse-client')))" \
        > /tmp/requirements.txt \
    && /opt/gatehouse/bin/pip install -r /tmp/requirements.txt
COPY . .
RUN /opt/gatehouse/bin/pip install --no-deps ./clients/python . \
    && /opt/gatehouse/bin/gatehouse --help >/dev/null

FROM python:3.11-slim-bookworm
ENV PATH=/opt/gatehouse/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 gatehouse \
    && useradd --system --uid 10001 --gid gatehouse --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gatehouse
COPY --from=build /opt/gatehouse /opt/gatehouse
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464
# Prometheus scrapes a pod's address, not the container's loopback: /metrics listens on
# every address here (its series hold no tenant, subject or secret; README "Metrics").
ENV GATEHOUSE_METRICS_LISTEN=0.0.0.0:9464
# The health check asks over this unix socket, which is always plaintext (only processes
# in this container that may open the file can connect), so it works whether port 50051
# serves plaintext, TLS or mutual TLS. With a read-only root filesystem, mount a writable
# /tmp or point GATEHOUSE_UNIX_SOCKET at a writable directory.
ENV GATEHOUSE_UNIX_SOCKET=/tmp/gatehouse.sock
# gRPC health (grpc.health.v1, overall server status).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import grpc, os, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('unix:' + os.environ['GATEHOUSE_UNIX_SOCKET'])).Check(h.HealthCheckRequest(), timeout=2); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["gatehouse"]
# Plaintext on 0.0.0.0 is refused unless opted in, and the default command opts in:
# `docker run -p` reaches a container only through a listener beyond its own loopback,
# and a sidecar's callers are its neighbours (the containers of one pod share a network
# namespace and can dial 127.0.0.1:50051; `-p 127.0.0.1:50051:50051` publishes on the
# host's loopback only). Where calls cross a network you do not trust, configure TLS as
# above. A command of your own (`serve ...`) does not carry this opt-in: add
# --allow-plaintext, or TLS, to it.
CMD ["serve", "--listen", "0.0.0.0:50051", "--allow-plaintext"]
