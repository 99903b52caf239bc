# replicate-operator: the commands a developer and CI need. `make help` lists them.

K8S_VERSION ?= 1.37.2
CACHE ?= $(or $(REPLICATE_OPERATOR_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/replicate-operator)
KUBEBUILDER_ASSETS ?= $(CACHE)/envtest/$(K8S_VERSION)
# Cargo's build output lives outside the clone, keyed by the toolchain, so fresh clones (CI) reuse it.
RUST_VERSION := $(shell rustc --version 2>/dev/null | cut -d' ' -f2)
CARGO_TARGET_DIR ?= $(CACHE)/cargo-target/rust-$(RUST_VERSION)

export K8S_VERSION KUBEBUILDER_ASSETS CARGO_TARGET_DIR
export REPLICATE_OPERATOR_CACHE := $(CACHE)

.PHONY: help test run envtest-assets tools crds check-crds lint bench build

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

run: tools envtest-assets ## Run the operator on a local control plane + the Replicate emulator (no account needed)
	@hack/run-local.sh

test: tools envtest-assets ## Set up and run every test (unit, real kube-apiserver, kubectl, emulator)
	cargo test --locked -- --color never

tools: ## Install what the build and the tests need (Go, clang) if missing
	@hack/ensure-tools.sh

envtest-assets: tools ## Build etcd, kube-apiserver and kubectl from Go modules (cached, keyed by version)
	@hack/envtest-assets.sh >/dev/null

build: ## Build the operator binary
	cargo build --locked --release --bin replicate-operator

crds: ## Regenerate crds/ from the Rust types
	cargo run --locked --quiet --bin replicate-operator -- crd > crds/replicatedeployments.yaml

lint: ## rustfmt and clippy
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

bench: tools envtest-assets ## Run the benchmarks and write target/bench-report.md
	@hack/bench.sh
