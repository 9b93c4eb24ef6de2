#!/usr/bin/env bash
# Start a real Kubernetes control plane from the binaries build.sh made:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, all on
# 127.0.0.1, state under ${RAFTKV_CLUSTER_DIR:-~/.cache/raftkv/cluster}:
#
#   pki/          CA, serving and client certificates, service-account keys
#   etcd/         etcd data (removed by cluster-down: every up is a fresh cluster)
#   logs/<c>.log  one log per component
#   pids/<c>.pid  one pid per component
#   kubeconfig    admin (system:masters) kubeconfig, usable from the host
#   ports.env     the ports in use
#
# Idempotent: a component already running is kept; when everything is healthy
# this only prints the export line. The LAST line on stdout is always
# `export KUBECONFIG=...` (progress goes to stderr), so
#   eval "$(e2e/k8s/cluster-up.sh | tail -n1)"
# works. The pod runner (raftkv-podrunner, this repo's e2e crate) registers
# Node raftkv-e2e-node and runs its pods as local processes in network
# namespaces; kube-proxy (nftables) runs in the pod network's router netns.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

START_TIMEOUT="${RAFTKV_START_TIMEOUT:-90}"

# --- binaries ----------------------------------------------------------------
"$k8s_dir/build.sh" >/dev/null

lock_state
mkdir -p "$STATE"/{pki,logs,pids}
load_ports

# --- pod network ---------------------------------------------------------------
# choose_slot: keep the slot recorded in net.env while it is free or ours;
# otherwise take the lowest free one (0..31). /run/raftkv-e2e/slot-<n> names
# the state dir that owns slot n; a slot whose router netns is gone is stale.
choose_slot() {
	local s owner
	mkdir -p "$SLOT_DIR"
	exec 8>"$SLOT_DIR/.lock"
	flock -w 60 8 || { log "cannot lock $SLOT_DIR/.lock"; exit 1; }
	slot_free() {
		owner="$(cat "$SLOT_DIR/slot-$1" 2>/dev/null)" || return 0
		[[ "$owner" == "$STATE" ]] && return 0
		! ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "rkv$1-net"
	}
	s="$(sed -n 's/^SLOT=//p' "$STATE/net.env" 2>/dev/null || true)"
	if ! [[ "$s" =~ ^[0-9]+$ ]] || ! slot_free "$s"; then
		s=""
		for ((i = 0; i < 32; i++)); do
			if slot_free "$i"; then s=$i; break; fi
		done
		[[ -n "$s" ]] || { log "no free pod network slot in $SLOT_DIR"; exit 1; }
	fi
	echo "$STATE" >"$SLOT_DIR/slot-$s"
	printf '# written by cluster-up.sh: pod network slot (see lib.sh load_net)\nSLOT=%s\n' "$s" >"$STATE/net.env"
	exec 8>&-
}

# net_up: the router netns, the host link and routes, the fault table. Idempotent.
net_up() {
	if ! ip netns list | awk '{print $1}' | grep -qx "$ROUTER_NS"; then
		ip netns add "$ROUTER_NS"
	fi
	ip -n "$ROUTER_NS" link set lo up
	ip netns exec "$ROUTER_NS" sysctl -qw net.ipv4.ip_forward=1
	if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
		ip link add "$HOST_IF" type veth peer name h0 netns "$ROUTER_NS"
		ip addr add "$HOST_IP/30" dev "$HOST_IF"
		ip -n "$ROUTER_NS" addr add "$ROUTER_IP/30" dev h0
	fi
	ip link set "$HOST_IF" up
	ip -n "$ROUTER_NS" link set h0 up
	ip route replace "$POD_CIDR" via "$ROUTER_IP" dev "$HOST_IF"
	ip route replace "$SERVICE_CIDR" via "$ROUTER_IP" dev "$HOST_IF"
	# Fault injection (e2e/src/net.rs cut/heal): interfaces in set `cut` lose
	# every forwarded packet, both ways.
	if ! ip netns exec "$ROUTER_NS" nft list table inet raftkv_faults >/dev/null 2>&1; then
		ip netns exec "$ROUTER_NS" nft -f - <<-'NFT'
			table inet raftkv_faults {
				set cut { type ifname; }
				chain forward {
					type filter hook forward priority -10; policy accept;
					iifname @cut drop
					oifname @cut drop
				}
			}
		NFT
	fi
}

for cmd in ip nft; do
	command -v "$cmd" >/dev/null 2>&1 || { log "$cmd is missing: run scripts/install-deps.sh"; exit 1; }
done
choose_slot
load_net
net_up

all_running() {
	local c
	for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null || return 1; done
}

# --- ports: keep the recorded ones; if the cluster is down and one is taken by
# someone else, move to the next free port and record it. ---------------------
choose_ports() {
	local k p used=" "
	for k in "${PORT_NAMES[@]}"; do
		p="${!k}"
		while port_busy "$p" || [[ "$used" == *" $p "* ]]; do
			p=$((p + 1))
			((p < 65535)) || { log "no free port for $k"; exit 1; }
		done
		[[ "$p" != "${!k}" ]] && log "port ${!k} is in use; $k=$p"
		printf -v "$k" '%s' "$p"
		used+="$p "
	done
	{
		echo "# written by cluster-up.sh"
		for k in "${PORT_NAMES[@]}"; do
			echo "$k=${!k}"
		done
	} >"$STATE/ports.env"
}

# --- PKI (openssl; made once, kept across down/up) ---------------------------
pki="$STATE/pki"
make_ca() { # make_ca <name> <common name>
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$1.key" 2>/dev/null
	openssl req -x509 -new -key "$pki/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$pki/$1.crt"
}
sign() { # sign <name> <subject> <extensions> [ca name]
	local name="$1" subj="$2" ext="$3" ca="${4:-ca}"
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
	openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
		-CAcreateserial -CAserial "$pki/$ca.srl" -days 3650 -sha256 \
		-extfile <(printf '%b' "$ext") -out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr"
}
sign_apiserver() {
	sign apiserver "/CN=kube-apiserver" \
		"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:$HOST_IP,IP:$SERVICE_APISERVER_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
}
make_pki() {
	local f need=0
	for f in ca.crt apiserver.crt admin.crt controller-manager.crt scheduler.crt kube-proxy.crt sa.key sa.pub \
		front-proxy-ca.crt front-proxy-client.crt; do
		[[ -s "$pki/$f" ]] || need=1
	done
	if ((need == 0)); then
		# The serving cert names the pod-network host address and the
		# `kubernetes` Service IP, which follow the network slot.
		local sans
		sans="$(openssl x509 -in "$pki/apiserver.crt" -noout -ext subjectAltName 2>/dev/null)"
		if [[ "$sans" != *"IP Address:$HOST_IP,"* || "$sans" != *"IP Address:$SERVICE_APISERVER_IP,"* ]]; then
			log "re-signing the apiserver certificate for $HOST_IP, $SERVICE_APISERVER_IP"
			umask 077
			sign_apiserver
			umask 022
		fi
		return 0
	fi
	log "creating PKI in $pki"
	rm -f "$pki"/*
	umask 077
	make_ca ca raftkv-e2e-ca
	# Separate CA for the aggregation layer (requestheader): a client cert from
	# it may assert any user, so it must not be the cluster CA (as kubeadm).
	make_ca front-proxy-ca raftkv-e2e-front-proxy-ca
	local client='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
	sign_apiserver
	sign admin "/O=system:masters/CN=kubernetes-admin" "$client"
	sign controller-manager "/CN=system:kube-controller-manager" "$client"
	sign scheduler "/CN=system:kube-scheduler" "$client"
	# system:kube-proxy is bound to ClusterRole system:node-proxier by default.
	sign kube-proxy "/CN=system:kube-proxy" "$client"
	sign front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca
	# Service-account token signing key pair (apiserver signs, verifies; the
	# controller-manager's token controller signs legacy tokens).
	openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null
	openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
	umask 022
}

write_kubeconfig() { # write_kubeconfig <file> <client cert name> <user>
	local file="$1" cert="$2" user="$3" tmp
	tmp="$(mktemp "$file.XXXXXX")"
	cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: raftkv-e2e
  cluster:
    server: https://${HOST_IP}:${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$cert.crt")
    client-key-data: $(base64 -w0 <"$pki/$cert.key")
contexts:
- name: raftkv-e2e
  context:
    cluster: raftkv-e2e
    user: ${user}
current-context: raftkv-e2e
EOF
	chmod 600 "$tmp"
	mv -f "$tmp" "$file"
}

# --- components: args_<name> prints argv (one word per line), healthy_<name>
# succeeds once it serves. ---------------------------------------------------
args_etcd() {
	printf '%s\n' "$K8S_BIN/etcd" \
		--name=raftkv-e2e \
		--data-dir="$STATE/etcd" \
		--listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster="raftkv-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
		--unsafe-no-fsync=true \
		--quota-backend-bytes=2147483648 \
		--log-level=warn
}
healthy_etcd() {
	[[ "$(curl -sf --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health")" == *'"health":"true"'* ]]
}

args_kube-apiserver() {
	printf '%s\n' "$K8S_BIN/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--bind-address="$HOST_IP" \
		--secure-port="$APISERVER_PORT" \
		--advertise-address="$HOST_IP" \
		--endpoint-reconciler-type=lease \
		--tls-cert-file="$pki/apiserver.crt" \
		--tls-private-key-file="$pki/apiserver.key" \
		--client-ca-file="$pki/ca.crt" \
		--requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$pki/front-proxy-client.crt" \
		--proxy-client-key-file="$pki/front-proxy-client.key" \
		--authorization-mode=RBAC \
		--anonymous-auth=false \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$pki/sa.pub" \
		--service-account-signing-key-file="$pki/sa.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--allow-privileged=true \
		--cert-dir="$STATE/apiserver-certs" \
		--profiling=false
}
healthy_kube-apiserver() {
	[[ "$(kubectl --request-timeout=2s get --raw=/readyz 2>/dev/null)" == ok ]]
}

# kube-controller-manager runs the controllers that turn Deployments,
# StatefulSets, PVCs and namespaces into their dependents, each with its own
# service account (as kubeadm does). Names checked against its --help in 1.36.
CONTROLLERS=(
	statefulset-controller
	deployment-controller
	replicaset-controller
	garbage-collector-controller
	namespace-controller
	serviceaccount-controller
	serviceaccount-token-controller
	endpointslice-controller
	endpointslice-mirroring-controller
	persistentvolume-binder-controller
	persistentvolume-protection-controller
	persistentvolumeclaim-protection-controller
	persistentvolume-expander-controller
	disruption-controller
	pod-garbage-collector-controller
	job-controller
	cronjob-controller
	replicationcontroller-controller
	resourcequota-controller
	ttl-after-finished-controller
	root-ca-certificate-publisher-controller
	clusterrole-aggregation-controller
	daemonset-controller
	endpoints-controller
	service-cidr-controller
	validatingadmissionpolicy-status-controller
	# With no nodes these idle; the pod runner's Node will need them.
	node-lifecycle-controller
	taint-eviction-controller
)
args_kube-controller-manager() {
	local IFS=,
	printf '%s\n' "$K8S_BIN/kube-controller-manager" \
		--kubeconfig="$STATE/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 \
		--secure-port="$CONTROLLER_MANAGER_PORT" \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$pki/sa.key" \
		--root-ca-file="$pki/ca.crt" \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--controllers="${CONTROLLERS[*]}" \
		--profiling=false
}
healthy_kube-controller-manager() { serving_healthz "$CONTROLLER_MANAGER_PORT"; }

args_kube-scheduler() {
	printf '%s\n' "$K8S_BIN/kube-scheduler" \
		--kubeconfig="$STATE/scheduler.kubeconfig" \
		--authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
		--authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 \
		--secure-port="$SCHEDULER_PORT" \
		--leader-elect=false \
		--profiling=false
}
healthy_kube-scheduler() { serving_healthz "$SCHEDULER_PORT"; }

# The pod runner runs from a copy in the state dir, so a cargo build while it
# runs cannot change it under it, and cluster-down's sweep recognises it.
prepare_raftkv-podrunner() {
	local src="$RAFTKV_BIN_DIR/raftkv-podrunner"
	[[ -x "$src" ]] || { log "$src is missing: cargo build --workspace --all-targets (make build)"; return 1; }
	mkdir -p "$STATE/bin"
	cp -f "$src" "$STATE/bin/raftkv-podrunner.new"
	mv -f "$STATE/bin/raftkv-podrunner.new" "$STATE/bin/raftkv-podrunner"
}
# stale_<name>: the running component is outdated and must be restarted.
stale_raftkv-podrunner() {
	[[ -x "$RAFTKV_BIN_DIR/raftkv-podrunner" ]] && ! cmp -s "$RAFTKV_BIN_DIR/raftkv-podrunner" "$STATE/bin/raftkv-podrunner"
}
args_raftkv-podrunner() {
	printf '%s\n' "$STATE/bin/raftkv-podrunner" run \
		--state-dir="$STATE" \
		--kubeconfig="$STATE/kubeconfig" \
		--node-name="$NODE_NAME" \
		--bin-dir="$RAFTKV_BIN_DIR" \
		--k8s-version="$K8S_VERSION"
}
healthy_raftkv-podrunner() {
	[[ "$(kubectl --request-timeout=2s get node "$NODE_NAME" \
		-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# kube-proxy in the router netns: Service ClusterIPs become nftables DNAT
# rules there, applied to traffic from pods and from the host link alike.
args_kube-proxy() {
	printf '%s\n' ip netns exec "$ROUTER_NS" "$K8S_BIN/kube-proxy" \
		--kubeconfig="$STATE/kube-proxy.kubeconfig" \
		--proxy-mode=nftables \
		--hostname-override="$NODE_NAME" \
		--cluster-cidr="$POD_CIDR" \
		--conntrack-max-per-core=0 \
		--healthz-bind-address=127.0.0.1:10256 \
		--metrics-bind-address=127.0.0.1:10249 \
		--profiling=false
}
healthy_kube-proxy() {
	ip netns exec "$ROUTER_NS" curl -sf --max-time 2 http://127.0.0.1:10256/healthz >/dev/null 2>&1 &&
		ip netns exec "$ROUTER_NS" nft list table ip kube-proxy >/dev/null 2>&1
}

# /healthz of a secure component (self-signed serving cert): always allowed,
# so anonymous works.
serving_healthz() {
	[[ "$(curl -skf --max-time 2 "https://127.0.0.1:$1/healthz")" == ok ]]
}

start_component() {
	local c="$1" argv log
	if declare -F "prepare_$c" >/dev/null; then "prepare_$c" || return 1; fi
	mapfile -t argv < <("args_$c")
	log="$STATE/logs/$c.log"
	# Logs are appended across restarts; keep one previous file past 20 MB.
	if [[ -f "$log" ]] && (($(stat -c %s "$log") > 20 * 1024 * 1024)); then
		mv -f "$log" "$log.1"
	fi
	printf '\n==== %s starting %s\n%s\n' "$(date -u +%FT%TZ)" "$c" "${argv[*]}" >>"$log"
	# setsid: own session and process group, so the component outlives this
	# script and cluster-down can signal the whole group.
	# 9>&-: the lock_state fd must not outlive this script in the component.
	# The runner finds its binaries in RAFTKV_BIN_DIR (passed as a flag too).
	setsid "${argv[@]}" </dev/null >>"$log" 2>&1 9>&- &
	echo "$!" >"$(pidfile "$c")"
}

wait_healthy() {
	local c="$1" deadline=$((SECONDS + START_TIMEOUT)) pid
	pid="$(<"$(pidfile "$c")")"
	until "healthy_$c"; do
		# Exited means gone or a zombie. Right after the fork the process may not
		# have exec'd the component yet (its argv is still this script's), so
		# "not ours yet" is no reason to give up.
		if ! kill -0 "$pid" 2>/dev/null || [[ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" == Z ]]; then
			log "$c exited; last lines of $STATE/logs/$c.log:"
			tail -n 20 "$STATE/logs/$c.log" >&2
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "$c not healthy after ${START_TIMEOUT}s; see $STATE/logs/$c.log"
			tail -n 20 "$STATE/logs/$c.log" >&2
			return 1
		fi
		sleep 0.2
	done
}

all_healthy() {
	local c
	for c in "${COMPONENTS[@]}"; do
		component_pid "$c" >/dev/null && "healthy_$c" || return 1
	done
}

# --- main ----------------------------------------------------------------------
for c in "${COMPONENTS[@]}"; do
	if declare -F "stale_$c" >/dev/null && "stale_$c" && pid="$(component_pid "$c")"; then
		log "$c binary changed: restarting it"
		stop_pid "$pid" "$c"
	fi
done
if all_running && all_healthy; then
	log "already up ($K8S_VERSION, apiserver https://$HOST_IP:$APISERVER_PORT)"
	echo "export KUBECONFIG=$KUBECONFIG_FILE"
	exit 0
fi

t0=$SECONDS
running_any=0
for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null && running_any=1; done
# Ports may only move while nothing runs (running components hold them).
((running_any)) || choose_ports
make_pki
write_kubeconfig "$KUBECONFIG_FILE" admin kubernetes-admin
write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler system:kube-scheduler
write_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy system:kube-proxy

failed=0
for c in "${COMPONENTS[@]}"; do
	if component_pid "$c" >/dev/null; then
		log "$c already running"
	else
		log "starting $c"
		start_component "$c"
	fi
	wait_healthy "$c" || { failed=1; break; }
done
if ((failed)); then
	log "control plane failed to start; stop it with e2e/k8s/cluster-down.sh"
	exit 1
fi
log "up in $((SECONDS - t0))s: $K8S_VERSION, apiserver https://$HOST_IP:$APISERVER_PORT, etcd 127.0.0.1:$ETCD_CLIENT_PORT, pods $POD_CIDR, services $SERVICE_CIDR, logs in $STATE/logs"
echo "export KUBECONFIG=$KUBECONFIG_FILE"
