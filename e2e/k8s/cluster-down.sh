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

# The pod network: every process still in one of our network namespaces (pod
# processes of a runner that died, probes), the namespaces, the host link (its
# routes go with it) and the slot.
if load_net; then
	for ns in $(our_netns); do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			log "killing pid $pid left in netns $ns"
			kill -KILL "$pid" 2>/dev/null || true
		done
	done
	for ns in $(our_netns); do
		ip netns del "$ns" 2>/dev/null || log "could not delete netns $ns"
	done
	if ip link show "$HOST_IF" >/dev/null 2>&1; then
		ip link del "$HOST_IF" || log "could not delete interface $HOST_IF"
	fi
	if [[ "$(cat "$SLOT_DIR/slot-$SLOT" 2>/dev/null)" == "$STATE" ]]; then
		rm -f "$SLOT_DIR/slot-$SLOT"
	fi
	rmdir "$SLOT_DIR" 2>/dev/null || true
fi

# Mounts under the state dir (pods' mounts live in their own mount
# namespaces and vanish with them; this is a safety net), deepest first.
awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
	log "unmounting $m"
	umount "$m" 2>/dev/null || umount -l "$m"
done

left="$(leftovers)"
if [[ -n "$left" ]]; then
	log "still present after cluster-down:"
	echo "$left" >&2
	exit 1
fi

# etcd data and what describes that cluster's contents (discovery cache,
# volumes of its claims, pod records and pod logs)
rm -rf "${STATE:?}/etcd" "$STATE/apiserver-certs" "$STATE/kube-cache" "$STATE/volumes" "$STATE/runner" \
	"${STATE:?}/pod-logs" "${STATE:?}/bin"
if [[ "${1:-}" == "--purge" ]]; then
	rm -rf "${STATE:?}"
	log "stopped; removed $STATE"
else
	log "stopped (pki/ and logs/ kept in $STATE)"
fi
