#!/usr/bin/env bash
# A local raftkv cluster on loopback.
#   local-cluster.sh up [N]   start N nodes (default 3) and bootstrap them (once)
#   local-cluster.sh down     stop them (SIGTERM, then SIGKILL); data is kept
#   RAFTKV_LOCAL_DIR          where data, logs and pids live (default ~/.cache/raftkv/local-cluster)
#   RAFTKV_LOCAL_PORT_BASE    node i uses base+10i (client), +1 (peer), +2 (admin), +3 (http); default 24000
#   RAFTKV_LOCAL_SHARDS       shards at bootstrap (default 8)
set -euo pipefail

cmd=${1:-up}
n=${2:-3}
dir=${RAFTKV_LOCAL_DIR:-$HOME/.cache/raftkv/local-cluster}
base=${RAFTKV_LOCAL_PORT_BASE:-24000}
shards=${RAFTKV_LOCAL_SHARDS:-8}
bin=${RAFTKV_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/raftkv/target}/debug}
extra=${RAFTKV_LOCAL_NODE_ARGS:-}

port() { echo $((base + 10 * $1 + $2)); }

down() {
  shopt -s nullglob
  local pids=()
  for f in "$dir"/pids/*.pid; do
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
    rm -f "$f"
  done
  for _ in $(seq 1 150); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  echo "local cluster stopped (data kept in $dir/data; remove it to start afresh)"
}

up() {
  mkdir -p "$dir/data" "$dir/logs" "$dir/pids"
  local admins=() clients=()
  for i in $(seq 0 $((n - 1))); do
    clients+=("127.0.0.1:$(port "$i" 0)")
    admins+=("127.0.0.1:$(port "$i" 2)")
    pidf="$dir/pids/node$i.pid"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then continue; fi
    # shellcheck disable=SC2086
    nohup "$bin/raftkv-node" --data-dir "$dir/data/node$i" --listen-host 127.0.0.1 --advertise-host 127.0.0.1 \
      --client-port "$(port "$i" 0)" --peer-port "$(port "$i" 1)" --admin-port "$(port "$i" 2)" --http-port "$(port "$i" 3)" \
      $extra >>"$dir/logs/node$i.log" 2>&1 &
    echo $! >"$pidf"
  done
  local eps
  eps=$(IFS=,; echo "${admins[*]}")
  for a in "${admins[@]}"; do
    for _ in $(seq 1 100); do
      "$bin/kvctl" --admin-endpoints "$a" admin node-status >/dev/null 2>&1 && break
      sleep 0.2
    done
    "$bin/kvctl" --admin-endpoints "$a" admin node-status >/dev/null || { echo "node at $a did not start; see $dir/logs" >&2; exit 1; }
  done
  if "$bin/kvctl" --admin-endpoints "${admins[0]}" -o json admin node-status | grep '"joined": true' >/dev/null; then
    echo "nodes already joined: not bootstrapping again"
  else
    "$bin/kvctl" --admin-endpoints "$eps" admin bootstrap --cluster-id local --shards "$shards" --replication-factor $((n < 3 ? n : 3))
  fi
  local ceps
  ceps=$(IFS=,; echo "${clients[*]}")
  for _ in $(seq 1 100); do
    rc=0
    "$bin/kvctl" --endpoints "$ceps" get __probe__ >/dev/null 2>&1 || rc=$?
    [ $rc -eq 1 ] && break   # "not found" means every hop worked
    sleep 0.2
  done
  echo "local cluster: $n nodes, data in $dir/data, logs in $dir/logs"
  echo "stop it with: make local-cluster-down"
  echo "export KVCTL_ENDPOINTS=$ceps"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up [N] | down" >&2; exit 2 ;;
esac
