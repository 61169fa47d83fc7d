# outbox-relay container image: a static Go binary on distroless.
#
#   docker build -t outbox-relay --build-arg VERSION=$(git describe --always --dirty) .
#   docker run --rm -e OUTBOX_RELAY_PG_URL=... -e OUTBOX_RELAY_KAFKA_BROKERS=... outbox-relay        # run
#   docker run --rm -e OUTBOX_RELAY_PG_URL=... outbox-relay setup
#
# docker-compose.yml in this directory builds it and runs it against
# Postgres and Kafka.

# --- build -------------------------------------------------------------------
FROM golang:1.26-bookworm AS build
WORKDIR /src

# Dependencies first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/outbox-relay ./cmd/outbox-relay \
 && /out/outbox-relay version

# --- run ---------------------------------------------------------------------
# No shell, no package manager; CA certificates (Kafka TLS, Postgres
# sslmode=verify-full) and tzdata included. User nonroot is uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/outbox-relay /outbox-relay
USER nonroot:nonroot
# /metrics, /healthz, /readyz (OUTBOX_RELAY_HTTP_ADDR, default :9465).
EXPOSE 9465
# No shell or curl here: the binary probes its own /readyz.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 CMD ["/outbox-relay", "probe"]
ENTRYPOINT ["/outbox-relay"]
CMD ["run"]
