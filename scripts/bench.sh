#!/usr/bin/env bash
# Benchmarks a fresh local 3-node cluster (separate directory and ports from
# `make local-cluster`): writes and linearizable reads at 1, 64 and 256
# clients with 256-byte values, then the failover time after kill -9 of the
# node leading the most shards. Prints a table; also writes it to
# $RAFTKV_BENCH_OUT (default ~/.cache/raftkv/bench/results.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${RAFTKV_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/raftkv/target}/debug}
dur=${RAFTKV_BENCH_SECONDS:-10}
export RAFTKV_LOCAL_DIR=${RAFTKV_BENCH_DIR:-$HOME/.cache/raftkv/bench}
export RAFTKV_LOCAL_PORT_BASE=${RAFTKV_BENCH_PORT_BASE:-25000}
out=${RAFTKV_BENCH_OUT:-$RAFTKV_LOCAL_DIR/results.txt}

bash "$here/local-cluster.sh" down >/dev/null 2>&1 || true
rm -rf "$RAFTKV_LOCAL_DIR"
trap 'bash "$here/local-cluster.sh" down >/dev/null 2>&1 || true' EXIT
env_line=$(bash "$here/local-cluster.sh" up 3 | grep '^export KVCTL_ENDPOINTS=')
eval "$env_line"
K() { "$bin/kvctl" "$@"; }

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); fsync on; $(date -u +%F)"
  echo "duration per run: ${dur}s, 256-byte values, 10000 keys, 3 nodes x 8 shards, replication 3"
} | tee "$out"
for c in 1 64 256; do
  echo -n "write  " | tee -a "$out"; K bench --clients "$c" --duration "$dur" --read-ratio 0 --value-size 256 | tee -a "$out"
done
K bench --clients 64 --duration 3 --read-ratio 0 --prefill --value-size 256 >/dev/null
for c in 1 64 256; do
  echo -n "read   " | tee -a "$out"; K bench --clients "$c" --duration "$dur" --read-ratio 1 --consistency linearizable --value-size 256 | tee -a "$out"
done

# Failover: kill -9 the node leading most shards; time until a write to every shard succeeds again.
victim=$(K -o json cluster status | python3 -c '
import json,sys,collections
s=json.load(sys.stdin); c=collections.Counter()
for n in s["nodes"]:
    for sh in n.get("shards",[]):
        if sh["shard"]!="meta" and sh["role"]=="leader": c[n["node_id"]]+=1
print(c.most_common(1)[0][0])')
idx=$(K -o json cluster map | python3 -c "
import json,sys
m=json.load(sys.stdin)
for n in m['nodes']:
    if n['id']==$victim: print((n['client_port']-$RAFTKV_LOCAL_PORT_BASE)//10)")
survivors=$(echo "$KVCTL_ENDPOINTS" | tr ',' '\n' | grep -v ":$((RAFTKV_LOCAL_PORT_BASE + 10 * idx))\$" | paste -sd, -)
t0=$(date +%s.%N)
kill -9 "$(cat "$RAFTKV_LOCAL_DIR/pids/node$idx.pid")"
for i in $(seq 0 63); do
  until K --endpoints "$survivors" put "failover/$i" v >/dev/null 2>&1; do sleep 0.05; done
done
t1=$(date +%s.%N)
echo "failover after kill -9 of the leader of the most shards: writes to all shards succeed again after $(python3 -c "print(f'{$t1-$t0:.2f}')") s (election timeout 1-2 s)" | tee -a "$out"
echo "results in $out"
