# keyward Makefile. `make` (or `make help`) lists the targets.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
KEYWARD_CACHE ?= $(HOME)/.cache/keyward
export KEYWARD_CACHE

# Pinned tools, installed with `go install` into the cache (outside the checkout).
CONTROLLER_GEN_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
TOOLS_DIR := $(KEYWARD_CACHE)/tools
CONTROLLER_GEN := $(TOOLS_DIR)/controller-gen-$(CONTROLLER_GEN_VERSION)/controller-gen
GOLANGCI_LINT := $(TOOLS_DIR)/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint
HELM_VERSION ?= v3.22.0
HELM := $(TOOLS_DIR)/helm-$(HELM_VERSION)/helm

GO_TEST_FLAGS ?= -race -count=1

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code for the API types.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs, one ClusterRole per role (controller, issuer, validator) and the webhook configuration into config/.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd
	$(CONTROLLER_GEN) webhook paths=./webhook/... output:webhook:artifacts:config=config/webhook
	$(CONTROLLER_GEN) rbac:roleName=keyward-controller paths=./controllers/... paths=./internal/manager/... output:rbac:stdout > config/rbac/controller_role.yaml
	@if [ -d internal/issuer ]; then $(CONTROLLER_GEN) rbac:roleName=keyward-issuer paths=./internal/issuer/... output:rbac:stdout > config/rbac/issuer_role.yaml; fi
	@if [ -d internal/validator ]; then $(CONTROLLER_GEN) rbac:roleName=keyward-validator paths=./internal/validator/... output:rbac:stdout > config/rbac/validator_role.yaml; fi
	rm -f charts/keyward/files/crds/*.yaml charts/keyward/files/*_role.yaml
	cp config/crd/keyward.dev_*.yaml charts/keyward/files/crds/
	cp config/rbac/controller_role.yaml config/rbac/issuer_role.yaml config/rbac/validator_role.yaml charts/keyward/files/

.PHONY: fmt
fmt: ## Run gofmt.
	gofmt -w $$(git ls-files '*.go')

.PHONY: lint
lint: $(GOLANGCI_LINT) $(HELM) ## Run go vet, golangci-lint and helm lint.
	go vet ./...
	$(GOLANGCI_LINT) run ./...
	$(HELM) lint --strict charts/keyward
	$(HELM) template keyward charts/keyward --namespace keyward-system --set validator.allowHSKeys=true >/dev/null

.PHONY: verify
verify: generate manifests ## Check that generated files (deepcopy, CRDs, RBAC, chart copies) are up to date and go.mod is tidy.
	go mod tidy
	@if [ -n "$$(git status --porcelain -- api config charts go.mod go.sum)" ]; then \
		echo "generated files or go.mod are out of date; run 'make generate manifests' and 'go mod tidy':"; \
		git status --porcelain -- api config charts go.mod go.sum; git diff --stat -- api config charts go.mod go.sum; exit 1; fi

##@ Build

.PHONY: build
build: ## Build bin/keyward.
	CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/keyward ./cmd/keyward

IMG ?= ghcr.io/keyward/keyward:$(VERSION)
CONTAINER_TOOL ?= docker

.PHONY: docker-build
docker-build: ## Build the container image $(IMG) (one image for every role; needs a Docker engine).
	$(CONTAINER_TOOL) build --build-arg VERSION=$(VERSION) -t $(IMG) .

.PHONY: docker-push
docker-push: ## Push the container image $(IMG).
	$(CONTAINER_TOOL) push $(IMG)

##@ Test

.PHONY: control-plane
control-plane: ## Build (once, cached) kube-apiserver, kubectl and etcd; prints their directory.
	hack/control-plane.sh bin

.PHONY: test
test: $(HELM) ## Run all tests against a real kube-apiserver + etcd (envtest), except the failure tests; the chart tests use the pinned helm.
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh bin)" HELM="$(HELM)" go test $(GO_TEST_FLAGS) $$(go list ./... | grep -v /test/resilience)

.PHONY: test-resilience
test-resilience: ## Run the failure tests (test/resilience: processes, restarts, load; about 10 minutes).
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh bin)" go test $(GO_TEST_FLAGS) -timeout 20m -v ./test/resilience/

# Fuzz targets, as package:Target. `go test -fuzz` takes one target per run.
FUZZ_TARGETS := \
	internal/token:FuzzParse \
	internal/token:FuzzClaimsJSON \
	internal/token:FuzzVerifyKeysFromJWKS \
	internal/validator:FuzzCheckRequestWire \
	internal/validator:FuzzCheck \
	internal/validator:FuzzH2Conn \
	internal/validator:FuzzHTTPLoop \
	internal/validator:FuzzH2Loop \
	internal/issuer:FuzzRequestBodies \
	internal/keys:FuzzParseImport
FUZZTIME ?= 60s
FUZZFLAGS ?= -fuzzminimizetime=10s

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 60s), one after another. Findings land in the package's testdata/fuzz/.
	@for t in $(FUZZ_TARGETS); do \
		pkg="./$${t%%:*}"; name="$${t##*:}"; \
		echo "==> $$name in $$pkg for $(FUZZTIME)"; \
		go test -run '^$$' -fuzz "^$${name}$$" -fuzztime $(FUZZTIME) $(FUZZFLAGS) "$$pkg" || exit 1; \
	done

.PHONY: fuzz-smoke
# A count, not a duration: a timed run that ends while a worker is inside a slow input fails
# with "context deadline exceeded" (seen with FuzzCheck, ~60 execs/s on 2 cores).
fuzz-smoke: ## Run each fuzz target briefly (1000 inputs each), as CI does.
	$(MAKE) fuzz FUZZTIME=1000x

.PHONY: bench
bench: ## Run the Go benchmarks.
	go test -run '^$$' -bench . -benchmem ./...

##@ Run

.PHONY: up
up: ## Start a local control plane (etcd + kube-apiserver on 127.0.0.1:6443).
	hack/control-plane.sh up

.PHONY: down
down: ## Stop the local control plane.
	hack/control-plane.sh down

.PHONY: demo
demo: build ## Run keyward's main job locally: control plane, CRDs, controller, a sample SigningKey.
	hack/demo.sh

$(CONTROLLER_GEN):
	GOBIN=$(dir $@) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

$(HELM):
	GOBIN=$(dir $@) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(GOLANGCI_LINT):
	GOBIN=$(dir $@) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
