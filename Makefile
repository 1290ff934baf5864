# pgtoken — see README.md. `make demo` tries it, `make test` is what CI runs.
GO        ?= go
PKGS      := ./...
BIN       := bin/pgtoken
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
FUZZTIME  ?= 30s

.PHONY: all build test test-short vet lint fuzz demo bench bench-quick bench-micro soak stress manyclients compat-pgx docs clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/pgtoken

## test: vet, then every package with the race detector against a real, throwaway Postgres.
test: vet
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

test-short: vet
	$(GO) test -short -count=1 $(PKGS)

vet:
	$(GO) vet $(PKGS)
	cd bench && $(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

## lint: staticcheck (installed on demand from the Go module proxy).
lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)
	cd bench && $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

## fuzz: each fuzz target of every package for FUZZTIME (seeds: <package>/testdata/fuzz/<Target>/).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$t ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

## compat-pgx: pgx's own test suite (the pgx of go.mod, from the module cache) against a throwaway
## Postgres directly, then through pgtoken in transaction and in session mode; prints the three
## results side by side and fails on a difference not listed in testdata/compat/pgx-expected.txt.
## About 3 minutes once pgx's tests are compiled, plus 3 for each package whose tests hang
## (go test -timeout). COMPAT_PGX_FLAGS passes flags, e.g. -modes session -run 'TestConn' -out DIR
## (the raw logs), or -from DIR to judge saved logs again.
COMPAT_PGX_FLAGS ?=
compat-pgx:
	$(GO) run ./internal/tools/compatpgx $(COMPAT_PGX_FLAGS)

## demo: a throwaway Postgres with demo roles and RLS data, pgtoken in front, and a psql line to paste.
demo:
	@$(GO) build -o bin/pgtoken-demo ./internal/demo
	@exec bin/pgtoken-demo

## docs: regenerate docs/CONFIG.md from the code's defaults.
docs:
	$(GO) run ./internal/tools/gendocs > docs/CONFIG.md

## bench: the full benchmark (bench/README.md): Postgres, PgBouncer and pgtoken under pgbench; about 70 minutes (-T 5: 40).
## BENCH_FLAGS passes flags to the harness, e.g. make bench BENCH_FLAGS="-T 5 -reps 2".
BENCH_FLAGS ?=
## bench/ is a Go module of its own (its chart library stays out of pgtoken's go.mod); it runs from there.
bench:
	cd bench && $(GO) run . $(BENCH_FLAGS)

## bench-quick: a subset in about a minute and a half (writes bench/results/latest-quick.*, leaves bench/README.md alone).
bench-quick:
	cd bench && $(GO) run . -quick $(BENCH_FLAGS)

## bench-micro: the Go micro-benchmarks (wire, session, authn, sqlscan) with -benchmem.
BENCHTIME ?= 1s
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./wire ./session ./authn ./session/sqlscan

## soak: the isolation test under chaos (server connections killed every 250ms, clients dropping,
## one Postgres restart) until SOAK_STATEMENTS identity checks, printing progress and the final
## counts; then make manyclients. SOAK_FLAGS adds test flags (e.g. -race).
SOAK_STATEMENTS ?= 1000000
SOAK_FLAGS ?=
soak: build
	PGTOKEN_SOAK_STATEMENTS=$(SOAK_STATEMENTS) $(GO) test $(SOAK_FLAGS) -count=1 -timeout 0 -v -run '^TestIsolationUnderChaos$$' ./session/
	$(MAKE) manyclients

## stress: STRESS_RUNS short pgbench -S runs (-T 2, -j 2) through bin/pgtoken (pool 16, log_level warn),
## a fresh pgtoken for each, in the modes simple, extended and prepared at 1, 32 and 256 clients,
## taking turns, against a throwaway Postgres. A run still going STRESS_GRACE seconds after its -T
## (and making no progress) left clients waiting: pgtoken's /debug/sessions, pg_stat_activity, the
## sockets and pgtoken's goroutine dump are saved under STRESS_OUT (default: a new temporary
## directory); fails if any. Not run by CI; see bench/README.md. STRESS_FLAGS passes more harness
## flags (e.g. -modes simple -clients 32 -T 8, -restart 10, -pgtoken FILE for a -race build).
STRESS_RUNS ?= 270
STRESS_GRACE ?= 5
STRESS_OUT ?=
STRESS_FLAGS ?=
stress: build
	cd bench && $(GO) run . -stress -runs $(STRESS_RUNS) -grace $(STRESS_GRACE) -stress-out "$(STRESS_OUT)" $(STRESS_FLAGS)

## manyclients: MANY_CLIENTS (10,000) client connections on a pool of 20, 1,000 active at once,
## against bin/pgtoken run as a process of its own; reports its resident memory.
MANY_CLIENTS ?= 10000
manyclients: build
	PGTOKEN_BIN=$(CURDIR)/$(BIN) PGTOKEN_MANY_CLIENTS=$(MANY_CLIENTS) $(GO) test -count=1 -timeout 30m -v -run '^TestManyClients10k$$' ./session/

clean:
	rm -rf bin
