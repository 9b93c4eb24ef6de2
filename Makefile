# raftkv — the single entry point for developers and users.
#   make test            everything CI runs (.ci/run calls this)
#   make demo            the main job: control plane from source, operator as a pod,
#                        the example KVCluster until Available, kubectl and kvctl
#   make local-cluster   start N nodes on loopback (N=3), bootstrap them (no Kubernetes)
#   make cluster-up / cluster-down, make crds, make e2e-kind: see mk/*.mk
#   make local-cluster-down
#   make bench           throughput/latency figures and failover time
#   make check-chart     Helm chart, dashboards, alerts: lint, template, schema,
#                        drift, promtool (part of make lint)
#   make check-prometheus  a real Prometheus scrapes a loaded local cluster: every
#                        node dashboard query and alert expression returns data
#   make fuzz            every decoder of network/disk bytes under libFuzzer
#                        (FUZZ_SECONDS each, default 60; fuzz/seeds, fuzz/corpus)
#   make robustness      every nemesis against real nodes, histories checked for
#                        linearizability, a summary table (RAFTKV_ROBUSTNESS_SECONDS each)

SHELL := /bin/bash
# Build caches live outside the checkout so CI and fresh clones reuse them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/raftkv/target
# Tests take binaries from here, never from a stale path.
export RAFTKV_BIN_DIR ?= $(CARGO_TARGET_DIR)/debug
# ...and read repository files (manifests, examples) from this checkout, not
# the one a cached test binary was compiled in.
export RAFTKV_REPO_DIR := $(CURDIR)
N ?= 3

-include mk/k8s.mk
-include mk/operator.mk
-include mk/kind.mk

.PHONY: deps build test test-rust lint demo local-cluster local-cluster-down bench robustness fuzz check-chart check-prometheus

deps:
	@bash scripts/install-deps.sh

# One feature set for every cargo command (always --workspace, all targets):
# a different selection of packages or targets unifies dependency features
# differently and would rebuild RocksDB's C++ (~14 min on 2 cores).
build: deps
	cargo build --workspace --all-targets

lint: deps check-kind check-chart
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test-rust: build
	cargo test --workspace -- --test-threads=2

test: lint k8s-bins test-rust test-k8s check-prometheus

# The tests get a control plane of their own (its own state dir, pod network
# slot and ports), so a `make demo` left running, whose operator watches every
# namespace, never acts on the clusters the tests create. `make test` ends
# with it down; after `make e2e-local` stop it with
# `RAFTKV_CLUSTER_DIR=~/.cache/raftkv/cluster-test make cluster-down`.
test-rust test-k8s e2e-local: export RAFTKV_CLUSTER_DIR ?= $(RAFTKV_CACHE_DIR)/cluster-test

demo: build k8s-bins
	@bash scripts/demo.sh

local-cluster: build
	@bash scripts/local-cluster.sh up $(N)

local-cluster-down:
	@bash scripts/local-cluster.sh down

bench: build
	@bash scripts/bench.sh

# The whole robustness matrix (make test runs a bounded part of it). Needs
# root, /dev/fuse (power-loss disks) and nftables (partitions).
check-chart: k8s-bins
	@bash scripts/check-chart.sh

check-prometheus: build
	@bash scripts/check-prometheus.sh

fuzz: deps
	@bash scripts/fuzz.sh

robustness: build
	cargo test --workspace --test robustness -- --ignored --nocapture --test-threads=1 full_matrix
