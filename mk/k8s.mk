# Kubernetes test environment: a real control plane built from source
# (e2e/k8s, see e2e/README.md). Included by the root Makefile; defines only
# k8s-* / cluster-* / test-k8s targets.
#
#   make k8s-bins      build kube-apiserver & co., etcd, helm, kwok (no-op when current)
#   make cluster-up    start etcd, apiserver, controller-manager, scheduler
#   make cluster-down  stop them (no process, mount or etcd data left)
#   make test-k8s      control-plane checks (brings it up, ends with it down)

K8S_E2E_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))/../e2e/k8s
K8S_VERSION := $(shell sed -n 's/^K8S_VERSION=//p' $(K8S_E2E_DIR)/versions.env)
RAFTKV_CACHE_DIR ?= $(HOME)/.cache/raftkv
K8S_BIN ?= $(RAFTKV_CACHE_DIR)/k8s/$(K8S_VERSION)/bin
export RAFTKV_CACHE_DIR K8S_BIN

.PHONY: k8s-bins k8s-gen-replace cluster-up cluster-down test-k8s

k8s-bins:
	bash $(K8S_E2E_DIR)/build.sh

# Regenerate e2e/k8s/*/go.mod after changing e2e/k8s/versions.env.
k8s-gen-replace:
	bash $(K8S_E2E_DIR)/gen-replace.sh

cluster-up: k8s-bins build
	bash $(K8S_E2E_DIR)/cluster-up.sh

cluster-down:
	bash $(K8S_E2E_DIR)/cluster-down.sh

test-k8s: k8s-bins build
	bash $(K8S_E2E_DIR)/test-control-plane.sh
