#!/usr/bin/env bash
# `make e2e-kind`: the e2e scenario suite on a kind cluster, for users' CI
# (needs Docker; cannot run on the raftkv development machines, which have no
# container engine — see e2e/README.md, "kind").
#
#   1. install kind (pinned) into ~/.cache/raftkv/kind/bin; kubectl from `make k8s-bins`
#   2. create the kind cluster from e2e/kind/kind-config.yaml (Kubernetes 1.36)
#   3. build the node and operator images (Dockerfile targets) and load them
#   4. install the CRD and run the operator in the cluster (examples/operator.yaml)
#   5. run the same scenario tests as `make e2e-local`, with the harness pointed
#      at this cluster (RAFTKV_E2E_CLUSTER=external, KUBECONFIG)
#
# KEEP_CLUSTER=1 keeps the cluster afterwards (default: deleted on exit).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIND_VERSION="${KIND_VERSION:-v0.32.0}"
CLUSTER_NAME="${KIND_CLUSTER_NAME:-raftkv-e2e}"
TAG="${RAFTKV_E2E_IMAGE_TAG:-e2e}"
bin="${RAFTKV_CACHE_DIR:-$HOME/.cache/raftkv}/kind/bin"
kubeconfig="${RAFTKV_CACHE_DIR:-$HOME/.cache/raftkv}/kind/kubeconfig"

log() { printf 'e2e-kind: %s\n' "$*" >&2; }

command -v docker >/dev/null || { log "docker is required (kind runs Kubernetes nodes as containers)"; exit 1; }
docker info >/dev/null 2>&1 || { log "the docker client cannot reach an engine: start Docker first"; exit 1; }

mkdir -p "$bin"
if [[ "$("$bin/kind" version 2>/dev/null | awk '{print $2}')" != "$KIND_VERSION" ]]; then
	log "installing kind $KIND_VERSION"
	GOBIN="$bin" GOFLAGS=-modcacherw go install "sigs.k8s.io/kind@$KIND_VERSION"
fi
# kubectl: the one `make k8s-bins` built from source (same 1.36 release line).
ln -sf "${K8S_BIN:?run through make e2e-kind, which sets K8S_BIN}/kubectl" "$bin/kubectl"
export PATH="$bin:$PATH" KUBECONFIG="$kubeconfig"

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
	log "creating kind cluster $CLUSTER_NAME"
	kind create cluster --name "$CLUSTER_NAME" --config "$repo/e2e/kind/kind-config.yaml" --kubeconfig "$kubeconfig" --wait 120s
fi
[[ "${KEEP_CLUSTER:-0}" == 1 ]] || trap 'kind delete cluster --name "$CLUSTER_NAME" --kubeconfig "$kubeconfig"' EXIT

log "building images raftkv/raftkv-node:$TAG and raftkv/raftkv-operator:$TAG"
docker build --target node -t "raftkv/raftkv-node:$TAG" "$repo"
docker build --target operator -t "raftkv/raftkv-operator:$TAG" "$repo"
kind load docker-image --name "$CLUSTER_NAME" "raftkv/raftkv-node:$TAG" "raftkv/raftkv-operator:$TAG"

log "installing the CRD and the operator"
kubectl apply --server-side -f "$repo/crds/"
sed "s#raftkv/raftkv-operator:[^[:space:]\"]*#raftkv/raftkv-operator:$TAG#" "$repo/examples/operator.yaml" |
	kubectl apply --server-side -f -
kubectl -n raftkv-system rollout status deployment/raftkv-operator --timeout=180s

log "running the scenario suite against kind"
cd "$repo"
RAFTKV_E2E_CLUSTER=external RAFTKV_E2E_IMAGE_TAG="$TAG" RAFTKV_E2E_OPERATOR=in-cluster \
	cargo test --workspace -- --test-threads=1 e2e_
