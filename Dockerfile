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

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1
RUN python -m venv /opt/gatehouse
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a source change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/gatehouse/bin/pip install -r /tmp/requirements.txt
COPY . .
RUN /opt/gatehouse/bin/pip install --no-deps . \
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
EXPOSE 50051
# gRPC health (grpc.health.v1, overall server status) on the default listen address.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=2); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["gatehouse"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
