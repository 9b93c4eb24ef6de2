#!/usr/bin/env bash
# Stop the control plane cluster-up.sh started: every component in reverse
# start order (SIGTERM to its process group, SIGKILL after a grace period),
# then a sweep for any process of ours whose pid file was lost, then unmount
# anything mounted under the state dir. etcd data is removed, so the next
# cluster-up is a fresh cluster; pki/ and logs/ are kept (logs for debugging).
# Safe to run when nothing is up.
#
# Usage: e2e/k8s/cluster-down.sh [--purge]   --purge also removes the state dir
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

GRACE="${RAFTKV_STOP_GRACE:-10}"

# stop_pid <pid> <label>: TERM its process group (it is a session leader
# started by setsid) and the pid itself, wait, then KILL.
stop_pid() {
	local pid="$1" label="$2" deadline
	is_ours "$pid" || return 0
	log "stopping $label (pid $pid)"
	kill -TERM -- "-$pid" 2>/dev/null || true
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + GRACE))
	while is_ours "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
	if is_ours "$pid"; then
		log "$label did not exit in ${GRACE}s: SIGKILL"
		kill -KILL -- "-$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
		while is_ours "$pid"; do sleep 0.1; done
	fi
}

if [[ ! -d "$STATE" ]]; then
	log "nothing to stop ($STATE does not exist)"
	exit 0
fi

lock_state
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
	c="${COMPONENTS[$i]}"
	if pid="$(component_pid "$c")"; then
		stop_pid "$pid" "$c"
	fi
	rm -f "$(pidfile "$c")"
done
# Pid files of components no longer in COMPONENTS, or lost: sweep by argv.
for f in "$STATE"/pids/*.pid; do
	[[ -e "$f" ]] || continue
	pid="$(<"$f")"
	[[ "$pid" =~ ^[0-9]+$ ]] && stop_pid "$pid" "$(basename "$f" .pid)"
	rm -f "$f"
done
for pid in $(our_pids); do stop_pid "$pid" "stray process"; done

# Mounts under the state dir (none today; pod volumes later), deepest first.
awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
	log "unmounting $m"
	umount "$m" 2>/dev/null || umount -l "$m"
done

left="$(our_pids)"
if [[ -n "$left" ]]; then
	log "processes still running: $left"
	exit 1
fi

# etcd data and what describes that cluster's contents (discovery cache)
rm -rf "$STATE/etcd" "$STATE/apiserver-certs" "$STATE/kube-cache"
if [[ "${1:-}" == "--purge" ]]; then
	rm -rf "${STATE:?}"
	log "stopped; removed $STATE"
else
	log "stopped (pki/ and logs/ kept in $STATE)"
fi
