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
# works. No node runs pods here: pods stay Pending until a later component
# (the pod runner) binds and runs them.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

START_TIMEOUT="${RAFTKV_START_TIMEOUT:-90}"

# --- binaries ----------------------------------------------------------------
"$k8s_dir/build.sh" >/dev/null

lock_state
mkdir -p "$STATE"/{pki,logs,pids}
load_ports

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
make_pki() {
	local f need=0
	for f in ca.crt apiserver.crt admin.crt controller-manager.crt scheduler.crt sa.key sa.pub \
		front-proxy-ca.crt front-proxy-client.crt; do
		[[ -s "$pki/$f" ]] || need=1
	done
	((need)) || return 0
	log "creating PKI in $pki"
	rm -f "$pki"/*
	umask 077
	make_ca ca raftkv-e2e-ca
	# Separate CA for the aggregation layer (requestheader): a client cert from
	# it may assert any user, so it must not be the cluster CA (as kubeadm).
	make_ca front-proxy-ca raftkv-e2e-front-proxy-ca
	local client='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
	sign apiserver "/CN=kube-apiserver" \
		"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:$SERVICE_APISERVER_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
	sign admin "/O=system:masters/CN=kubernetes-admin" "$client"
	sign controller-manager "/CN=system:kube-controller-manager" "$client"
	sign scheduler "/CN=system:kube-scheduler" "$client"
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
    server: https://127.0.0.1:${APISERVER_PORT}
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
		--bind-address=127.0.0.1 \
		--secure-port="$APISERVER_PORT" \
		--advertise-address=127.0.0.1 \
		--endpoint-reconciler-type=none \
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

# /healthz of a secure component (self-signed serving cert): always allowed,
# so anonymous works.
serving_healthz() {
	[[ "$(curl -skf --max-time 2 "https://127.0.0.1:$1/healthz")" == ok ]]
}

start_component() {
	local c="$1" argv log
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
if all_running && all_healthy; then
	log "already up ($K8S_VERSION, apiserver https://127.0.0.1:$APISERVER_PORT)"
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
log "up in $((SECONDS - t0))s: $K8S_VERSION, apiserver https://127.0.0.1:$APISERVER_PORT, etcd 127.0.0.1:$ETCD_CLIENT_PORT, logs in $STATE/logs"
echo "export KUBECONFIG=$KUBECONFIG_FILE"
