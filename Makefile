# pgtoken — see README.md. `make demo` tries it, `make test` is what CI runs.
GO        ?= go
PKGS      := ./...
BIN       := bin/pgtoken
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
FUZZTIME  ?= 30s

.PHONY: all build test test-short vet lint fuzz demo bench bench-quick soak docs clean

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
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

## lint: staticcheck (installed on demand from the Go module proxy).
lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

## fuzz: each fuzz target for FUZZTIME.
fuzz:
	@for t in $$($(GO) test -list 'Fuzz.*' ./... 2>/dev/null | grep -E '^(Fuzz|ok)' ); do :; done
	$(GO) run ./internal/tools/fuzzall -fuzztime $(FUZZTIME)

## demo: a throwaway Postgres with demo roles and RLS data, pgtoken in front, and a psql line to paste.
demo:
	$(GO) run ./internal/demo

## docs: regenerate docs/CONFIG.md from the code's defaults.
docs:
	$(GO) run ./internal/tools/gendocs > docs/CONFIG.md

clean:
	rm -rf bin
