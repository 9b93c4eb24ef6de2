#!/usr/bin/env bash
# Checks that the control plane built from source behaves like Kubernetes:
# it comes up, serves the stamped version, its controllers and scheduler
# reconcile workloads, Helm works against it, validation (built-in and CEL)
# rejects bad objects, and cluster-down leaves nothing behind. Brings the
# cluster up if it is not, and ends with it down.
#
# Output: one PASS/FAIL line per check, then `N passed, M failed` alone on
# the last line; exit status 1 if anything failed.
set -uo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

testdata="$k8s_dir/testdata"
passed=0
failed=0
namespaces=()
t_start=$SECONDS
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# check <description> <function>: runs the function, its output captured; a
# failure prints the output's tail as the explanation.
check() {
	local desc="$1" fn="$2" t0=$SECONDS
	if "$fn" >"$out/log" 2>&1; then
		passed=$((passed + 1))
		printf 'PASS  %s (%ss)%s\n' "$desc" "$((SECONDS - t0))" "$(msg)"
	else
		failed=$((failed + 1))
		rm -f "$out/note"
		printf 'FAIL  %s (%ss)\n' "$desc" "$((SECONDS - t0))"
		tail -n 25 "$out/log" | sed 's/^/      | /'
	fi
}
# A check may leave a one-line note for its PASS line in $out/note.
note() { echo "$*" >"$out/note"; }
msg() { [[ -s "$out/note" ]] && printf ': %s' "$(<"$out/note")"; rm -f "$out/note"; }

# eventually <seconds> <command...>: retry until it succeeds.
eventually() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || { echo "timed out after waiting for: $*"; "$@"; return 1; }
		sleep 0.5
	done
}

# contains <text> <fixed string>: with a message saying what was missing.
contains() {
	grep -qF -- "$2" <<<"$1" || { echo "expected to find: $2"; return 1; }
}

new_ns() { # new_ns <name>: a fresh namespace for one check
	kubectl delete namespace "$1" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1
	kubectl create namespace "$1" && namespaces+=("$1")
}

count() { # count <kubectl get args...>: number of objects
	kubectl get "$@" -o name 2>/dev/null | grep -c . || true
}

# --- checks --------------------------------------------------------------------

t_gomod_current() {
	"$k8s_dir/gen-replace.sh" --check || return 1
	note "$(grep -c "=> k8s.io/" "$k8s_dir/components/go.mod") staging modules -> v0.${K8S_VERSION#v1.}"
}

t_cluster_up() {
	local t0 last
	t0=$(date +%s.%N)
	last="$("$k8s_dir/cluster-up.sh" | tail -n1)" || return 1
	[[ "$last" == "export KUBECONFIG=$KUBECONFIG_FILE" ]] || { echo "last line was: $last"; return 1; }
	note "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}'), $last"
}

t_readyz() {
	local r
	r="$(kubectl get --raw=/readyz)" || return 1
	[[ "$r" == ok ]] || { echo "/readyz said: $r"; return 1; }
	contains "$(kubectl get --raw='/readyz?verbose')" 'readyz check passed' || return 1
	# controller-manager and scheduler serve /healthz on the ports cluster-up recorded
	load_ports
	local p
	for p in "$CONTROLLER_MANAGER_PORT" "$SCHEDULER_PORT"; do
		[[ "$(curl -skf --max-time 5 "https://127.0.0.1:$p/healthz")" == ok ]] || { echo "healthz on :$p failed"; return 1; }
	done
	note "apiserver /readyz; controller-manager :$CONTROLLER_MANAGER_PORT and scheduler :$SCHEDULER_PORT /healthz"
}

t_version() {
	local server client
	server="$(kubectl get --raw=/version)" || return 1
	echo "$server"
	contains "$server" "\"gitVersion\": \"$K8S_VERSION\"" || return 1
	contains "$server" '"gitTreeState": "clean"' || return 1
	client="$("$K8S_BIN/kubectl" version --client -o yaml)" || return 1
	contains "$client" "gitVersion: $K8S_VERSION" || return 1
	local b
	for b in kube-controller-manager kube-scheduler kube-proxy; do
		[[ "$("$K8S_BIN/$b" --version)" == "Kubernetes $K8S_VERSION" ]] || { echo "$b: $("$K8S_BIN/$b" --version)"; return 1; }
	done
	contains "$("$K8S_BIN/etcd" --version)" "etcd Version: ${ETCD_VERSION#v}" || return 1
	contains "$(helm version)" "Version:\"$HELM_VERSION\"" || return 1
	contains "$("$K8S_BIN/kwok" --version)" "kwok version $KWOK_VERSION " || return 1
	note "server, kubectl, controller-manager, scheduler, kube-proxy $K8S_VERSION; etcd $ETCD_VERSION; helm $HELM_VERSION; kwok $KWOK_VERSION"
}

# Predicates for eventually: each asks the apiserver one question.
jp() { kubectl "$@" 2>/dev/null; } # quiet kubectl for polling
lines_equal() { # lines_equal <want count> <want line> <kubectl args...>
	local n="$1" want="$2"
	shift 2
	[[ "$(jp "$@" | grep -cxF -- "$want")" == "$n" ]]
}
names_exist() { # names_exist <n> <kubectl get args...>
	local n="$1"
	shift
	[[ "$(jp get "$@" -o name | grep -c .)" == "$n" ]]
}

t_deployment() {
	local ns=t-deploy rs
	new_ns $ns || return 1
	kubectl -n $ns apply -f "$testdata/deployment.yaml" || return 1
	# deployment controller -> a ReplicaSet owned by the Deployment
	eventually 60 lines_equal 1 web -n $ns get rs -l app=web \
		-o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].name}{"\n"}{end}' || return 1
	rs="$(kubectl -n $ns get rs -l app=web -o jsonpath='{.items[0].metadata.name}')"
	# replicaset controller -> 2 Pods owned by that ReplicaSet
	eventually 60 lines_equal 2 "$rs" -n $ns get pods -l app=web \
		-o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].name}{"\n"}{end}' || return 1
	# scheduler -> both bound to the pod runner's node
	eventually 60 lines_equal 2 "$NODE_NAME" -n $ns get pods -l app=web \
		-o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' || return 1
	# the runner reports them: the pause image maps to no local binary
	eventually 60 lines_equal 2 ErrImagePull -n $ns get pods -l app=web \
		-o jsonpath='{range .items[*]}{.status.containerStatuses[0].state.waiting.reason}{"\n"}{end}' || return 1
	kubectl -n $ns get deploy,rs,pods -o wide
	note "ReplicaSet $rs, 2 Pods scheduled to $NODE_NAME (ErrImagePull: no local binary for pause)"
}

t_statefulset() {
	local ns=t-sts
	new_ns $ns || return 1
	kubectl -n $ns apply -f "$testdata/statefulset.yaml" || return 1
	# statefulset controller -> a PVC per replica from the volumeClaimTemplate, and Pods
	eventually 60 names_exist 2 -n $ns pvc data-db-0 data-db-1 || return 1
	eventually 60 names_exist 2 -n $ns pod db-0 db-1 || return 1
	# the pod runner provisions a volume per claim (default StorageClass raftkv-local)
	eventually 60 lines_equal 2 Bound -n $ns get pvc -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' || return 1
	# each Pod uses its own claim; claims are protected (pvc-protection finalizer)
	[[ "$(kubectl -n $ns get pod db-1 -o jsonpath='{.spec.volumes[?(@.name=="data")].persistentVolumeClaim.claimName}')" == data-db-1 ]] || return 1
	contains "$(kubectl -n $ns get pvc data-db-0 -o jsonpath='{.metadata.finalizers}')" kubernetes.io/pvc-protection || return 1
	# the headless Service gets an EndpointSlice from the endpointslice controller
	eventually 30 names_exist 1 -n $ns endpointslices -l kubernetes.io/service-name=db || return 1
	kubectl -n $ns get sts,pods,pvc,endpointslices
	note "PVCs data-db-0/1 (Bound) and Pods db-0/1 created"
}

# A pod of the suite's echo binary runs as a real process in its own network
# namespace; the host reaches it by pod IP and through a ClusterIP Service
# (kube-proxy's nftables rules in the router netns).
t_pod_network() {
	local ns=t-net ip cip pid
	new_ns $ns || return 1
	eventually 30 kubectl -n $ns get serviceaccount default >/dev/null || return 1
	kubectl -n $ns apply -f "$testdata/echo-pod.yaml" || return 1
	kubectl -n $ns wait --for=condition=Ready pod/echo --timeout=90s || { kubectl -n $ns get pod echo -o yaml; return 1; }
	ip="$(kubectl -n $ns get pod echo -o jsonpath='{.status.podIP}')"
	contains "$(curl -sf --max-time 5 "http://$ip:8080/whoami")" "hostname=echo" || return 1
	cip="$(kubectl -n $ns get svc echo -o jsonpath='{.spec.clusterIP}')"
	eventually 30 curl -sf --max-time 5 -o /dev/null "http://$cip/healthz" || return 1
	# the runner's record names the process: the echo binary, in another netns
	pid="$(grep -o '"pid": [0-9]*' "$STATE/runner/pods/$ns/echo.json" | grep -o '[0-9]*$')" || return 1
	[[ "$(readlink "/proc/$pid/exe")" == */raftkv-e2e-echo ]] || { echo "pid $pid is $(readlink "/proc/$pid/exe")"; return 1; }
	[[ "$(readlink "/proc/$pid/ns/net")" != "$(readlink /proc/self/ns/net)" ]] || { echo "pod shares the host netns"; return 1; }
	note "pod echo $ip (pid $pid) and Service $cip:80 answer from the host"
}

t_helm() {
	local ns=t-helm chart="$testdata/charts/hello" rendered
	new_ns $ns || return 1
	helm lint --strict "$chart" || return 1
	# Offline render: the stamped default capabilities must satisfy kubeVersion.
	rendered="$(helm template demo "$chart")" || return 1
	contains "$rendered" 'kind: Deployment' || return 1
	# ... and Helm must believe the cluster is our minor (its stamped default)
	contains "$rendered" "kubeVersion: \"v$(cut -d. -f1,2 <<<"${K8S_VERSION#v}")." || return 1
	helm -n $ns install demo "$chart" --wait=false || return 1
	contains "$(helm -n $ns status demo)" 'STATUS: deployed' || return 1
	# rendered against the live server: its exact version
	[[ "$(kubectl -n $ns get configmap demo-hello -o jsonpath='{.data.kubeVersion}')" == "$K8S_VERSION" ]] || {
		kubectl -n $ns get configmap demo-hello -o yaml
		return 1
	}
	eventually 60 names_exist 1 -n $ns pods -l app.kubernetes.io/instance=demo || return 1
	helm -n $ns uninstall demo --wait --timeout 60s || return 1
	[[ "$(count -n $ns deploy,svc,configmap -l app.kubernetes.io/instance=demo)" == 0 ]] || return 1
	note "$(helm version --template '{{.Version}}'): lint, template, install, uninstall"
}

t_invalid_rejected() {
	local ns=t-invalid err
	new_ns $ns || return 1
	if err="$(kubectl -n $ns apply -f "$testdata/invalid-deployment.yaml" 2>&1)"; then
		echo "apply of an invalid Deployment succeeded: $err"
		return 1
	fi
	echo "$err"
	contains "$err" 'The Deployment "broken" is invalid' || return 1
	contains "$err" 'spec.replicas: Invalid value: -1: must be greater than or equal to 0' || return 1
	# shellcheck disable=SC2016 # backquotes are part of the apiserver's message
	contains "$err" '`selector` does not match template `labels`' || return 1
	[[ "$(count -n $ns deploy)" == 0 ]] || return 1
	note "$(grep -o 'spec.replicas: Invalid value: -1: [^,]*' <<<"$err" | head -n1)"
}

t_crd_cel() {
	local ns=t-crd err
	new_ns $ns || return 1
	kubectl apply -f "$testdata/crd-widgets.yaml" || return 1
	kubectl wait --for=condition=Established --timeout=60s crd/widgets.e2e.raftkv.io || return 1
	# The first write right after Established can race discovery; retry it.
	eventually 30 kubectl -n $ns apply -f "$testdata/widget-valid.yaml" || return 1
	if err="$(kubectl -n $ns apply -f "$testdata/widget-invalid.yaml" 2>&1)"; then
		echo "apply of a Widget breaking the CEL rule succeeded: $err"
		return 1
	fi
	echo "$err"
	contains "$err" 'The Widget "bad" is invalid' || return 1
	contains "$err" 'minReplicas must not exceed replicas' || return 1
	kubectl delete -f "$testdata/crd-widgets.yaml" --wait=true --timeout=60s || return 1
	note "$(grep -o 'spec: Invalid value: .*' <<<"$err" | head -n1)"
}

t_namespaces_deleted() {
	local ns
	((${#namespaces[@]})) || return 0
	kubectl delete namespace "${namespaces[@]}" --wait=false || return 1
	# The namespace controller empties them; garbage collector, pvc-protection
	# and the statefulset/replicaset controllers must all cooperate.
	for ns in "${namespaces[@]}"; do
		kubectl wait --for=delete "namespace/$ns" --timeout=90s || {
			kubectl get namespace "$ns" -o yaml
			return 1
		}
	done
	note "${namespaces[*]}"
	namespaces=()
}

t_down_leaves_nothing() {
	local left
	# leave a pod running, so down must also stop pods and remove their network
	kubectl create namespace t-down >/dev/null || return 1
	eventually 30 kubectl -n t-down get serviceaccount default >/dev/null || return 1
	kubectl -n t-down apply -f "$testdata/echo-pod.yaml" || return 1
	kubectl -n t-down wait --for=condition=Ready pod/echo --timeout=90s || return 1
	"$k8s_dir/cluster-down.sh" || return 1
	left="$(leftovers)"
	[[ -z "$left" ]] || { echo "left behind: $left"; return 1; }
	# and nothing listens on the ports it used
	load_ports
	local k
	for k in "${PORT_NAMES[@]}"; do
		! port_busy "${!k}" || { echo "port ${!k} ($k) still open"; return 1; }
	done
	if [[ -n "$(awk -v s="$STATE/" 'index($2, s) == 1' /proc/self/mounts)" ]]; then
		echo "mounts left under $STATE"
		return 1
	fi
	[[ ! -d "$STATE/etcd" ]] || { echo "etcd data left"; return 1; }
	"$k8s_dir/cluster-down.sh" || { echo "a second cluster-down failed"; return 1; }
	note "with a pod running: no process, netns, interface, route, mount, open port or etcd data left; a second down is a no-op"
}

t_second_up() {
	local t0
	t0=$(date +%s.%N)
	"$k8s_dir/cluster-up.sh" >/dev/null || return 1
	local took
	took="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1fs", b-a}')"
	[[ "$(kubectl get --raw=/readyz)" == ok ]] || return 1
	# a fresh cluster: nothing from the first run
	[[ "$(count namespace t-deploy)" == 0 ]] || return 1
	# idempotent: a second up only prints the export line
	[[ "$("$k8s_dir/cluster-up.sh" 2>/dev/null)" == "export KUBECONFIG=$KUBECONFIG_FILE" ]] || return 1
	note "warm start $took; up again is a no-op"
}

t_final_down() {
	"$k8s_dir/cluster-down.sh" && [[ -z "$(leftovers)" ]]
}

check "control plane comes up (cluster-up.sh)" t_cluster_up
if ((failed)); then
	echo "0 passed, 1 failed"
	exit 1
fi
check "components/go.mod replace block matches the release (gen-replace.sh --check)" t_gomod_current
check "/readyz is ok" t_readyz
check "versions: server and binaries are the stamped $K8S_VERSION" t_version
check "Deployment -> ReplicaSet -> Pods (controllers + scheduler)" t_deployment
check "StatefulSet with volumeClaimTemplate -> PVCs + Pods" t_statefulset
check "a pod runs as a process with its own IP; pod IP and ClusterIP reachable from the host" t_pod_network
check "helm lint, template, install, uninstall" t_helm
check "invalid Deployment rejected by the apiserver" t_invalid_rejected
check "CRD CEL rule (x-kubernetes-validations) rejects a bad object" t_crd_cel
check "test namespaces are deleted (namespace controller, finalizers)" t_namespaces_deleted
check "cluster-down leaves no process, port, mount or data" t_down_leaves_nothing
check "a second cluster-up works" t_second_up
check "cluster-down at the end" t_final_down

echo "runtime $((SECONDS - t_start))s"
echo "$passed passed, $failed failed"
((failed == 0))
