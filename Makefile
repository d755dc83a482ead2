# replicache-sidecar — every target works on a fresh Debian machine with Go,
# Node and the Postgres server packages installed. Nothing needs to be running:
# targets that need a database start a throwaway one (cmd/devpg) unless
# DATABASE_URL or SIDECAR_DATABASE_URL is set.

GO      ?= go
BIN     := bin
GOFILES := $(shell git ls-files '*.go' 2>/dev/null)

.PHONY: all build test test-go test-e2e check fmt vet demo web clean bench bench-go promtool fuzz tools image lint

all: build

# The version the sidecar reports (replicache_sidecar_build_info): the
# nearest tag, else the commit, "-dirty" with uncommitted changes; "dev" and
# no revision outside a git checkout. `make build VERSION=1.2.3` overrides.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   = -X main.version=$(VERSION) -X main.revision=$(REVISION)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

$(BIN)/devpg: $(GOFILES) go.mod
	$(GO) build -o $(BIN)/devpg ./cmd/devpg

## demo: the product end to end: todo-api + the sidecar + a throwaway Postgres. Ctrl-C stops it all.
## Its ports: make demo PORT=8080 ADMIN_PORT=9090 API_PORT=3000 (the defaults; the page is on PORT).
PORT       = 8080
ADMIN_PORT = 9090
API_PORT   = 3000
DEMO_FLAGS = -port $(PORT) -admin-port $(ADMIN_PORT) -api-port $(API_PORT)
demo: build web $(BIN)/devpg
	@$(BIN)/demo -check-ports $(DEMO_FLAGS)
	$(BIN)/devpg -- $(BIN)/demo $(DEMO_FLAGS)

## web: install the pinned Node packages and bundle the demo web app.
web: web/node_modules/.installed
	cd web && npm run --silent build

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

## The previous release: the commit the current release started from. The upgrade test
## (TestPreviousReleaseBesideThisOne) runs its binary beside this one on one database;
## it is built from git history (a shallow clone fetches it; a copy without that history
## says so and skips the test). Defined before the rules that name it: make expands a
## rule's prerequisites as it reads them.
PREVIOUS_RELEASE := 05e1322
PREVIOUS_BIN     := $(BIN)/previous-$(PREVIOUS_RELEASE)/replicache-sidecar

## test: everything CI runs (the README's test command).
test: test-go test-e2e

## test-go: Go unit, integration and fault tests (crash, Postgres outage, breaker, bad
## input, fuzz seeds, promtool), with the race detector, against a real Postgres; the
## proxy's once more with span recording on; short runs of the benchmarks.
test-go: build $(BIN)/devpg promtool tools $(PREVIOUS_BIN)
	$(BIN)/devpg -- sh -c 'if [ -x $(PREVIOUS_BIN) ]; then export REQUIRE_PREVIOUS_RELEASE=1 SIDECAR_PREVIOUS_BIN=$(CURDIR)/$(PREVIOUS_BIN); fi; \
	  REQUIRE_DATABASE=1 REQUIRE_PROMTOOL=1 REQUIRE_DEPLOY_TOOLS=1 $(GO) test -race -count=1 ./... && \
	  SIDECAR_TEST_TRACING=1 $(GO) test -count=1 ./proxy ./proxy/pull && $(GO) test -run "^$$" -bench . -benchtime 3x ./proxy ./proxy/pull && \
	  $(BIN)/bench -quick -sidecar $(BIN)/replicache-sidecar >/dev/null'

$(PREVIOUS_BIN):
	@git cat-file -e '$(PREVIOUS_RELEASE)^{commit}' 2>/dev/null || git fetch --quiet --unshallow 2>/dev/null || true
	@if ! git cat-file -e '$(PREVIOUS_RELEASE)^{commit}' 2>/dev/null; then \
	  echo "warning: PREVIOUS_RELEASE $(PREVIOUS_RELEASE) is not in this clone's history: the upgrade test is skipped" >&2; \
	  echo "         (fetch the full history, git fetch --unshallow, to run it)" >&2; \
	else mkdir -p $(@D) && tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  git archive '$(PREVIOUS_RELEASE)' | tar -x -C "$$tmp" && \
	  cd "$$tmp" && $(GO) build -o '$(CURDIR)/$@' ./cmd/replicache-sidecar; fi

## tools: kustomize and kubeconform (pinned) for the deploy/ checks, into bin/tools.
KUSTOMIZE_VERSION   := v5.8.2
KUBECONFORM_VERSION := v0.8.0
tools: $(BIN)/tools/kustomize $(BIN)/tools/kubeconform

$(BIN)/tools/kustomize:
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(BIN)/tools/kubeconform:
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)

## image: the sidecar's container image (needs a container engine; CI has none).
IMAGE ?= replicache-sidecar:dev
image:
	docker build -f deploy/Dockerfile --target sidecar \
	  --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) .

## promtool: Debian's prometheus package provides promtool (installed when missing, as root).
promtool:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "promtool is missing: apt-get install prometheus" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }; }

## fuzz: run each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzRender -fuzztime $(FUZZTIME) ./mutators
	$(GO) test -run '^$$' -fuzz FuzzEntries -fuzztime $(FUZZTIME) ./clientview
	$(GO) test -run '^$$' -fuzz FuzzLookup -fuzztime $(FUZZTIME) ./clientview/jsonwalk
	$(GO) test -run '^$$' -fuzz FuzzDecodePush -fuzztime $(FUZZTIME) ./proxy/push
	$(GO) test -run '^$$' -fuzz FuzzPullCookie -fuzztime $(FUZZTIME) ./proxy/store


## test-e2e: the real Replicache client (headless, and in Chromium) syncing through the
## sidecar binary with todo-api behind it. Installs Debian's chromium when missing (as root).
test-e2e: build web $(BIN)/devpg
	$(BIN)/devpg -- sh -c 'cd web && npm test'

## check: formatting, vet, staticcheck, and the tests.
check: fmt vet lint test

## lint: staticcheck and golangci-lint (errcheck, bodyclose, errorlint, sloglint,
## promlinter, govet, ineffassign, dupl, sqlclosecheck, tparallel: see
## .golangci.yml), pinned, a check that go.mod and go.sum are tidy, and
## govulncheck (pinned) when its database can be reached.
STATICCHECK_VERSION   := v0.8.2
GOLANGCI_LINT_VERSION := v2.15.0
GOVULNCHECK_VERSION   := v1.10.0
lint: $(BIN)/tools/staticcheck $(BIN)/tools/golangci-lint-$(GOLANGCI_LINT_VERSION) $(BIN)/tools/govulncheck
	$(BIN)/tools/staticcheck ./...
	$(BIN)/tools/golangci-lint-$(GOLANGCI_LINT_VERSION) run ./...
	$(GO) mod tidy -diff
	@# govulncheck needs its database (vuln.go.dev); a machine that cannot
	@# reach it says so and goes on, rather than failing the build.
	@if curl -fsS -m 5 -o /dev/null https://vuln.go.dev/index/db.json 2>/dev/null; then \
	  $(BIN)/tools/govulncheck ./...; \
	else echo "govulncheck: skipped, vuln.go.dev cannot be reached from this machine"; fi

$(BIN)/tools/govulncheck:
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)

$(BIN)/tools/golangci-lint-$(GOLANGCI_LINT_VERSION):
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/tools/golangci-lint $@

$(BIN)/tools/staticcheck:
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

fmt:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

## bench: what the sidecar costs next to the physical limit of the same work, measured
## in one run (push, reset and diff pulls of 1k/10k/100k entities, memory, 50 and 200
## groups at once): one table, a few minutes. See BENCHMARKS.md.
bench: build $(BIN)/devpg
	$(BIN)/devpg -- $(BIN)/bench -sidecar $(BIN)/replicache-sidecar

## bench-go: the Go benchmarks (go test -bench), and the memory tests and the in-flight
## budget's fairness test at full size.
bench-go: $(BIN)/devpg
	$(BIN)/devpg -- sh -c '$(GO) test -run "^$$" -bench . -benchmem ./... && \
	  MEMORY_TEST=full $(GO) test -count=1 -v -run "^(TestMemoryUnderHostileLoad|TestPokeSubscriberMemory)$$" ./cmd/replicache-sidecar | grep -E "peak RSS|poke streams|^(ok|FAIL|---)" && \
	  MEMORY_TEST=full $(GO) test -count=1 -v -run "^TestOneCallerCannotHoldTheBudget$$" ./proxy | grep -E "victim:|^(ok|FAIL|---)"'

clean:
	rm -rf $(BIN)
