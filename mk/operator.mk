# The operator (operator/): CRD generation. Included by the root Makefile.
#
#   make crds       regenerate crds/raftkv.io_kvclusters.yaml from the Rust types
#                   (a test fails when the checked-in YAML drifts)
#   make e2e-local  the operator scenario suite on the local control plane

OPERATOR_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))/..

.PHONY: crds

# Built with the workspace's one feature set (see `build`), then run.
crds: deps
	cargo build --workspace --all-targets
	$(CARGO_TARGET_DIR)/debug/crdgen > $(OPERATOR_MK_DIR)/crds/raftkv.io_kvclusters.yaml
	cp $(OPERATOR_MK_DIR)/crds/raftkv.io_kvclusters.yaml $(OPERATOR_MK_DIR)/charts/raftkv-operator/files/crds/raftkv.io_kvclusters.yaml

# The operator's scenario suite (tests named e2e_*) on the local control plane
# with pods as real processes; the harness brings the cluster up if needed.
# `make e2e-kind` runs the same tests against kind.
.PHONY: e2e-local
e2e-local: build k8s-bins
	cargo test --workspace -- --test-threads=1 e2e_
