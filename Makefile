# The make targets are the project's interface; README.md shows them first.
export PATH := $(PATH):/usr/local/go/bin:$(shell go env GOPATH 2>/dev/null)/bin

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build demo test lint pg-binaries

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/outbox-relay ./cmd/outbox-relay

# Installs the PostgreSQL server binaries when this machine has none (Debian/Ubuntu).
pg-binaries:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || [ -n "$$PG_BIN" ]; then :; \
	else echo "installing PostgreSQL server binaries (apt-get install postgresql)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; fi

# A throw-away Postgres from local binaries, an in-process Kafka-protocol
# broker, the relay, and events flowing through them.
# KAFKA=apache runs it on a real Apache Kafka broker instead (java, mvn).
demo: pg-binaries build
	$(GO) run ./cmd/outbox-demo -relay bin/outbox-relay -kafka $(or $(KAFKA),kfake)

test: pg-binaries
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

lint:
	$(GO) vet ./...
	@command -v staticcheck >/dev/null && staticcheck ./... || echo "staticcheck not installed: go install honnef.co/go/tools/cmd/staticcheck@latest"

# Benchmarks: a throw-away Postgres, one real Apache Kafka broker (java,
# mvn; KAFKA=kfake: in-process kfake brokers instead) and the relay
# binary; prints BENCHMARKS.md-ready tables (JSON=1: JSON) and
# keeps logs, profiles and results in bench-out/. PROFILE=1 also takes CPU
# and allocation profiles of the relay during the backlog drain.
# BENCH_FLAGS passes more flags, e.g. BENCH_FLAGS="-duration 10s -scenarios drain".
.PHONY: bench
bench: pg-binaries build
	$(GO) run ./cmd/outbox-bench -relay bin/outbox-relay -kafka $(or $(KAFKA),apache) $(if $(JSON),-json) $(if $(PROFILE),-profile) $(BENCH_FLAGS)

# The fault suite: every scenario of tests/faults against a throw-away
# Postgres and the relay as a subprocess, each ending in the same audit
# (lost, duplicates, order, confirmed position); prints one table.
# FAULTS_FLAGS passes more, e.g. FAULTS_FLAGS="-run TestFaults/02 -faults.kills 5".
.PHONY: faults
faults: pg-binaries
	$(GO) test -tags faults -count=1 -timeout 60m -v ./tests/faults -run TestFaults $(FAULTS_FLAGS)
