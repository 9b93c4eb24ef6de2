#!/usr/bin/env bash
# Proves on real components that the node dashboard's queries and the node
# alerts' expressions return data (scripts/check-chart.sh checks them only
# statically):
#
#   1. a fresh local 3-node cluster (scripts/local-cluster.sh, its own
#      directory and ports: base $RAFTKV_CHECK_PROM_PORT_BASE, default 27000),
#      snapshots every 100 entries so one can be sent, 5 s shutdown grace so
#      the last node to stop does not wait 25 s for a leadership hand-off;
#   2. the real Prometheus (Debian's package; scripts/install-monitoring.sh
#      installs it) on a free loopback port, scraping the nodes' /metrics every
#      1s with the labels the chart's PodMonitor gives (namespace="local",
#      kvcluster="local", pod="node0".."node2") and evaluating
#      rules/raftkv-alerts.yaml every 1s;
#   3. real traffic, so every series the dashboard draws exists and has a
#      rate: silent connections (refused past the admin port's budget, timed
#      out on the client port), node2 stopped while writes go on and started
#      again (leader changes, failed proposals, a snapshot sent and installed),
#      a put of an empty key (an error code), then `kvctl bench` writes and
#      reads for 15 s;
#   4. every panel target of dashboards/raftkv-cluster.json and every alert
#      expression through /api/v1/query (scripts/check-prometheus.py says
#      exactly what counts as data); the operator dashboard and the operator
#      alert are skipped: raftkv-operator builds its Kubernetes client
#      (kube::Client::try_default) before it serves /metrics and exits
#      without an API server.
#
# Everything lives in ${RAFTKV_CACHE_DIR:-~/.cache/raftkv}/check-prometheus,
# removed at start and at exit with every process started here.
#
#   RAFTKV_CHECK_PROM_DASHBOARD   node dashboard to check (default the chart's)
#   RAFTKV_CHECK_PROM_RULES       alert rule file to check (default the chart's)
#   RAFTKV_CHECK_PROM_KEEP=1      keep the directory (logs, TSDB) at exit
#
# Usage: scripts/check-prometheus.sh   ends with "check-prometheus: N passed,
# M failed, K skipped"; exit 1 on a failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
here="$repo/scripts"
chart="$repo/charts/raftkv-operator"
bin=${RAFTKV_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/raftkv/target}/debug}
dir="${RAFTKV_CACHE_DIR:-$HOME/.cache/raftkv}/check-prometheus"
dashboard="${RAFTKV_CHECK_PROM_DASHBOARD:-$chart/dashboards/raftkv-cluster.json}"
operator_dashboard="$chart/dashboards/raftkv-operator.json"
rules="${RAFTKV_CHECK_PROM_RULES:-$chart/rules/raftkv-alerts.yaml}"
base="${RAFTKV_CHECK_PROM_PORT_BASE:-27000}"
nodes=3
helper() { python3 "$here/check-prometheus.py" "$@"; }

export RAFTKV_LOCAL_DIR="$dir/cluster"
export RAFTKV_LOCAL_PORT_BASE="$base"
export RAFTKV_BIN_DIR="$bin"
export RAFTKV_LOCAL_NODE_ARGS="--snapshot-entries 100 --keep-entries 10 --shutdown-grace-seconds 5"

for tool in prometheus python3; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		if [[ $tool == prometheus ]]; then bash "$here/install-monitoring.sh"; fi
		command -v "$tool" >/dev/null 2>&1 || { echo "check-prometheus: $tool is missing" >&2; exit 1; }
	fi
done
for b in raftkv-node kvctl; do
	[[ -x "$bin/$b" ]] || { echo "check-prometheus: no $bin/$b (make build)" >&2; exit 1; }
done

prom_pid=""
checking="" # set once the queries run: a failed query needs no log tails
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$?
	if [[ -n "$prom_pid" ]] && kill -0 "$prom_pid" 2>/dev/null; then
		kill -TERM "$prom_pid" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$prom_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$prom_pid" 2>/dev/null || true
		wait "$prom_pid" 2>/dev/null || true
	fi
	bash "$here/local-cluster.sh" down >/dev/null 2>&1 || true
	if ((rc != 0)) && [[ -z "$checking" && -d "$dir" ]]; then
		for f in "$dir"/cluster/logs/*.log "$dir"/prometheus.log; do
			[[ -f "$f" ]] && { echo "--- tail of $f"; tail -n 5 "$f"; }
		done
	fi
	if [[ "${RAFTKV_CHECK_PROM_KEEP:-}" == 1 ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start))s"; }

bash "$here/local-cluster.sh" down >/dev/null 2>&1 || true
rm -rf "$dir"
mkdir -p "$dir/prometheus-data"

# 1. the cluster
env_line=$(bash "$here/local-cluster.sh" up "$nodes" | grep '^export KVCTL_ENDPOINTS=')
eval "$env_line"
export KVCTL_ENDPOINTS
echo "check-prometheus: $nodes nodes up (ports $base-$((base + 10 * nodes - 1))) after $(elapsed)"

# 2. Prometheus, on a port nothing listens on
prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
prom="http://127.0.0.1:$prom_port"
helper config "$dir/prometheus.yml" "$base" "$nodes" "$rules"
promtool check config "$dir/prometheus.yml" >/dev/null
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus-data" \
	--web.listen-address="127.0.0.1:$prom_port" --storage.tsdb.retention.time=1h \
	>"$dir/prometheus.log" 2>&1 &
prom_pid=$!
helper wait-targets "$prom" "$nodes" 30
echo "check-prometheus: $(prometheus --version 2>&1 | head -n1 | cut -d' ' -f1-3) on $prom, $nodes targets up after $(elapsed)"

# 3. traffic
K() { "$bin/kvctl" "$@"; }
# A request the node refuses (empty key: InvalidArgument), for "Errors by code".
rc=0
K put "" v >/dev/null 2>&1 || rc=$?
((rc == 3)) || { echo "check-prometheus: a put of an empty key exited $rc, not 3 (invalid argument)" >&2; exit 1; }
# node2 down while writes go on: its shards' logs are compacted past it, so
# it gets snapshots when it is back.
survivors="127.0.0.1:$base,127.0.0.1:$((base + 10))"
node2_pid=$(cat "$RAFTKV_LOCAL_DIR/pids/node2.pid")
kill -TERM "$node2_pid"
for _ in $(seq 1 150); do kill -0 "$node2_pid" 2>/dev/null || break; sleep 0.2; done
K bench --endpoints "$survivors" --clients 32 --duration 4 --read-ratio 0 --key-prefix check-prometheus/down/ >/dev/null
# (local-cluster.sh's `kvctl ... | grep -q` can make kvctl panic on a broken
# pipe; it then re-sends the bootstrap, which a joined node takes as a retry.)
bash "$here/local-cluster.sh" up "$nodes" >"$dir/restart.log" 2>&1 || { cat "$dir/restart.log"; exit 1; }
helper wait-metric "$base" "$nodes" raftkv_network_snapshot_receive_success_total 30
echo "check-prometheus: node2 restarted and received a snapshot after $(elapsed)"
python3 "$here/check-prometheus.py" connections "$base" "$nodes" &
conn_pid=$!
echo -n "check-prometheus: bench "
K bench --clients 32 --duration 15 --read-ratio 0.5 --prefill --key-prefix check-prometheus/bench/
wait "$conn_pid"
sleep 2 # two more scrapes after the last request

# 4. the queries
status=0
checking=1
helper check "$prom" "$rules" "$dashboard" "$operator_dashboard" \
	--skip-operator "needs a running raftkv-operator, which needs a Kubernetes API before it serves /metrics" || status=$?
echo "check-prometheus: took $(elapsed)"
exit "$status"
