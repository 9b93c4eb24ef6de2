# shellcheck shell=bash
# shellcheck disable=SC2034 # variables here are used by the scripts sourcing this file
# Shared by cluster-up.sh, cluster-down.sh and test-control-plane.sh: where
# things are, which components exist, and how a component's process is found.
# Sourced, never run.

k8s_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$k8s_dir/versions.env"

RAFTKV_CACHE_DIR="${RAFTKV_CACHE_DIR:-$HOME/.cache/raftkv}"
K8S_BIN="${K8S_BIN:-$RAFTKV_CACHE_DIR/k8s/$K8S_VERSION/bin}"
STATE="${RAFTKV_CLUSTER_DIR:-$RAFTKV_CACHE_DIR/cluster}"
STATE="$(realpath -m "$STATE")" # absolute: it identifies our processes by argv
KUBECONFIG_FILE="$STATE/kubeconfig"

# Components in start order; cluster-down stops them in reverse. To add one
# (the pod runner, kube-proxy, ...): append its name here and define, in
# cluster-up.sh, `args_<name>` (prints its command line, one word per line,
# binary first) and `healthy_<name>` (exit 0 once it serves).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler raftkv-podrunner kube-proxy)

# Binaries of this workspace (the pod runner, and what pods run): the
# Makefile exports RAFTKV_BIN_DIR; by hand, the default cargo target dir.
RAFTKV_BIN_DIR="${RAFTKV_BIN_DIR:-${CARGO_TARGET_DIR:-$RAFTKV_CACHE_DIR/target}/debug}"
# The one Node the pod runner registers and runs pods for.
NODE_NAME=raftkv-e2e-node
# Slots of the pod networks of every cluster on this machine (cleared at boot,
# like network namespaces): /run/raftkv-e2e/slot-<n> holds the owner's state dir.
SLOT_DIR=/run/raftkv-e2e

# Service ClusterIPs; the first address is the `kubernetes` Service and is in
# the apiserver certificate. load_net moves them per network slot.
SERVICE_CIDR="${RAFTKV_SERVICE_CIDR:-10.96.0.0/16}"
SERVICE_APISERVER_IP="${RAFTKV_SERVICE_APISERVER_IP:-10.96.0.1}"

# load_net: the pod network of this state dir, from $STATE/net.env (SLOT=n,
# written by cluster-up.sh). Every name and address is keyed by the slot so two
# clusters never clash (e2e/src/net.rs computes the same ones):
#   router netns rkv<n>-net (kube-proxy), pod netns rkv<n>-p<i>,
#   host link rkv<n>-h 10.(200+n).255.1/30 <-> h0 10.(200+n).255.2 in the router,
#   pods 10.(200+n).0.0/16, Services 10.(96+n).0.0/16.
# Fails (returns 1) when no slot was ever chosen.
load_net() {
	SLOT=""
	[[ -f "$STATE/net.env" ]] && SLOT="$(sed -n 's/^SLOT=//p' "$STATE/net.env")"
	[[ "$SLOT" =~ ^[0-9]+$ ]] || return 1
	ROUTER_NS="rkv$SLOT-net"
	POD_NS_PREFIX="rkv$SLOT-p"
	HOST_IF="rkv$SLOT-h"
	HOST_IP="10.$((200 + SLOT)).255.1"
	ROUTER_IP="10.$((200 + SLOT)).255.2"
	POD_CIDR="10.$((200 + SLOT)).0.0/16"
	SERVICE_CIDR="${RAFTKV_SERVICE_CIDR:-10.$((96 + SLOT)).0.0/16}"
	SERVICE_APISERVER_IP="${RAFTKV_SERVICE_APISERVER_IP:-10.$((96 + SLOT)).0.1}"
}

# our_netns: network namespaces of this cluster's slot.
our_netns() {
	[[ -n "${SLOT:-}" ]] || return 0
	ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^rkv$SLOT-(net|p[0-9]+)\$" || true
}

# leftovers: prints anything of this cluster still present (processes, network
# namespaces, the host interface and its routes, the slot, mounts under the
# state dir); prints nothing when all is clean.
leftovers() {
	local p ns
	for p in $(our_pids); do echo "process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"; done
	if load_net; then
		for ns in $(our_netns); do
			echo "netns $ns (pids: $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' '))"
		done
		ip link show "$HOST_IF" >/dev/null 2>&1 && echo "interface $HOST_IF"
		ip route show | grep -F "$HOST_IF" | sed 's/^/route /'
		[[ -e "$SLOT_DIR/slot-$SLOT" ]] && echo "slot file $SLOT_DIR/slot-$SLOT"
	fi
	awk -v s="$STATE/" 'index($2, s) == 1 {print "mount " $2}' /proc/self/mounts
	return 0
}

# stop_pid <pid> <label>: TERM its process group (it is a session leader
# started by setsid) and the pid itself, wait, then KILL.
stop_pid() {
	local pid="$1" label="$2" deadline
	is_ours "$pid" || return 0
	log "stopping $label (pid $pid)"
	kill -TERM -- "-$pid" 2>/dev/null || true
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + ${GRACE:-10}))
	while is_ours "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
	if is_ours "$pid"; then
		log "$label did not exit in ${GRACE:-10}s: SIGKILL"
		kill -KILL -- "-$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
		while is_ours "$pid"; do sleep 0.1; done
	fi
}

# Ports: defaults chosen away from raftkv's own (2379-2381, 8080) and from a
# stock control plane's (2379, 6443, 10257, 10259). RAFTKV_<NAME> in the
# environment wins; otherwise the ports recorded in $STATE/ports.env by the
# last cluster-up (which moves off a busy default) are kept.
PORT_NAMES=(ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT CONTROLLER_MANAGER_PORT SCHEDULER_PORT)
declare -A DEFAULT_PORT=(
	[ETCD_CLIENT_PORT]=23790
	[ETCD_PEER_PORT]=23800
	[APISERVER_PORT]=26443
	[CONTROLLER_MANAGER_PORT]=20257
	[SCHEDULER_PORT]=20259
)

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

pidfile() { echo "$STATE/pids/$1.pid"; }

# component_pid <name>: prints the pid and succeeds if the component recorded
# in its pid file is alive *and* is ours (its command line names our state
# dir), so a recycled pid is never mistaken for it.
component_pid() {
	local f pid
	f="$(pidfile "$1")"
	[[ -f "$f" ]] || return 1
	pid="$(<"$f")"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	is_ours "$pid" || return 1
	echo "$pid"
}

# is_ours <pid>: the process is alive, not a zombie, and its argv mentions $STATE/.
is_ours() {
	local pid="$1" state args
	[[ -r "/proc/$pid/cmdline" ]] || return 1
	state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
	[[ -n "$state" && "$state" != Z ]] || return 1
	args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
	[[ "$args" == *"$STATE/"* ]]
}

# our_pids: every live process whose argv names $STATE/ and whose binary is one
# of ours (from any version's bin dir, or a component installed under $STATE).
# Used by cluster-down as a sweep when pid files were lost.
our_pids() {
	local p exe
	for p in /proc/[0-9]*; do
		p="${p#/proc/}"
		[[ "$p" == "$$" || "$p" == "$BASHPID" ]] && continue
		exe="$(readlink "/proc/$p/exe" 2>/dev/null)" || continue
		exe="${exe% (deleted)}"
		case "${exe##*/}" in kubectl | helm) continue ;; esac # clients, not components
		case "$exe" in
		"$K8S_BIN"/* | "$RAFTKV_CACHE_DIR"/k8s/*/bin/* | "$STATE"/*) is_ours "$p" && echo "$p" ;;
		esac
	done
}

load_ports() {
	local k env
	for k in "${PORT_NAMES[@]}"; do printf -v "$k" '%s' "${DEFAULT_PORT[$k]}"; done
	# shellcheck source=/dev/null
	[[ -f "$STATE/ports.env" ]] && source "$STATE/ports.env"
	for k in "${PORT_NAMES[@]}"; do
		env="RAFTKV_$k"
		[[ -n "${!env:-}" ]] && printf -v "$k" '%s' "${!env}"
	done
	return 0
}

# lock_state: one cluster-up/cluster-down at a time per state dir.
lock_state() {
	mkdir -p "$STATE"
	command -v flock >/dev/null 2>&1 || return 0
	exec 9>"$STATE/.lock"
	flock -w 300 9 || { log "another cluster-up/down holds $STATE/.lock"; exit 1; }
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Discovery cache in the state dir too (a fresh cluster reuses host:port).
kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" --cache-dir "$STATE/kube-cache" "$@"; }
# Helm's config, cache and data (repositories, plugins) and its discovery
# cache stay in the state dir, never in the user's ~/.config/helm or ~/.kube.
helm() {
	HELM_CONFIG_HOME="$STATE/helm/config" HELM_CACHE_HOME="$STATE/helm/cache" \
		HELM_DATA_HOME="$STATE/helm/data" KUBECACHEDIR="$STATE/kube-cache" \
		"$K8S_BIN/helm" --kubeconfig "$KUBECONFIG_FILE" "$@"
}
