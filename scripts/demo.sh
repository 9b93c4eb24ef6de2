#!/usr/bin/env bash
# `make demo`, the main job: a real Kubernetes control plane built from source
# with pods running as real processes (e2e/README.md), the operator running as
# a pod with the example RBAC, the example KVCluster until it is Available,
# then `kubectl get kvc` and kvctl against the cluster's client Service.
# Everything keeps running afterwards; `make cluster-down` removes it all.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${RAFTKV_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/raftkv/target}/debug}"
k8s_bin="${K8S_BIN:?run through make demo, which sets K8S_BIN}"
timeout_s="${DEMO_TIMEOUT_SECONDS:-300}"

step() { printf '\n== %s\n' "$*"; }
run() { echo "+ $*"; "$@"; }

step "control plane and pod runner"
eval "$(bash "$repo/e2e/k8s/cluster-up.sh" | tail -n1)"
kubectl() { "$k8s_bin/kubectl" "$@"; }

step "CRD and operator (as a pod, examples/operator.yaml)"
run kubectl apply --server-side -f "$repo/crds/"
run kubectl wait --for=condition=Established crd/kvclusters.raftkv.io --timeout=60s
run kubectl apply --server-side -f "$repo/examples/operator.yaml"
run kubectl -n raftkv-system rollout status deployment/raftkv-operator --timeout="${timeout_s}s"

step "KVCluster (examples/kvcluster.yaml)"
run kubectl apply --server-side -f "$repo/examples/kvcluster.yaml"
if ! run kubectl wait kvc/example --for=condition=Available --timeout="${timeout_s}s"; then
	kubectl describe kvc example || true
	kubectl get pods -A -o wide || true
	kubectl -n raftkv-system logs deployment/raftkv-operator --tail=50 || true
	echo "demo: the KVCluster did not become Available within ${timeout_s}s; logs: ${RAFTKV_CLUSTER_DIR:-$HOME/.cache/raftkv/cluster}/logs" >&2
	exit 1
fi
run kubectl get kvc
run kubectl get pods,svc,pvc -l app.kubernetes.io/instance=example -o wide
run kubectl describe kvc example

step "kvctl through the client Service"
ip="$(kubectl get svc example -o jsonpath='{.spec.clusterIP}')"
kv() { echo "+ kvctl --endpoints $ip:2379 $*"; "$bin/kvctl" --endpoints "$ip:2379" "$@"; }
kv put user:1 '{"name":"ada"}'
kv put user:2 '{"name":"grace"}'
kv get user:1 --consistency=linearizable
echo
kv scan --prefix user:
kv put session:42 token --ttl 60
echo
echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG; kvctl --endpoints $ip:2379 ...; 'make cluster-down' removes everything."
