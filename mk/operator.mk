# The operator (operator/): CRD generation. Included by the root Makefile.
#
#   make crds    regenerate crds/raftkv.io_kvclusters.yaml from the Rust types
#                (a test fails when the checked-in YAML drifts)

OPERATOR_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))/..

.PHONY: crds

# Built with the workspace's one feature set (see `build`), then run.
crds: deps
	cargo build --workspace --all-targets
	$(CARGO_TARGET_DIR)/debug/crdgen > $(OPERATOR_MK_DIR)/crds/raftkv.io_kvclusters.yaml
