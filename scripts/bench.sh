#!/usr/bin/env bash
# make bench: raftkv and etcd side by side, driven by the same load generator
# (`kvctl bench`, etcd through its v3 KV API). A fresh local 3-node raftkv
# (8 shards, replication 3) and a fresh 3-member etcd (the `etcd` binary
# `make k8s-bins` builds, default settings, fsync on), both on loopback with
# data on the same disk, in directories and ports of their own. Every row
# runs on raftkv, then on etcd, for RAFTKV_BENCH_SECONDS (10) after a 2 s
# warm-up; the server CPU-seconds per 100k operations come from /proc of the
# server processes. Then the failover time after kill -9 of the raftkv node
# leading the most shards. Prints a table; also writes it to $RAFTKV_BENCH_OUT
# (default ~/.cache/raftkv/bench/results.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${RAFTKV_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/raftkv/target}/debug}
dur=${RAFTKV_BENCH_SECONDS:-10}
root=${RAFTKV_BENCH_DIR:-$HOME/.cache/raftkv/bench}
export RAFTKV_LOCAL_DIR=$root/raftkv
export RAFTKV_LOCAL_PORT_BASE=${RAFTKV_BENCH_PORT_BASE:-25000}
etcd_base=$((RAFTKV_LOCAL_PORT_BASE + 500))
out=${RAFTKV_BENCH_OUT:-$root/results.txt}
rows=$root/rows.jsonl

etcd=${ETCD_BIN:-}
if [ -z "$etcd" ]; then
  for candidate in "${K8S_BIN:-/nonexistent}/etcd" "$HOME"/.cache/raftkv/k8s/*/bin/etcd; do
    if [ -x "$candidate" ]; then etcd=$candidate; break; fi
  done
fi
[ -x "$etcd" ] || { echo "bench: no etcd binary (run make k8s-bins, or set ETCD_BIN)" >&2; exit 1; }

etcd_down() {
  for f in "$root"/etcd-pids/*.pid; do
    [ -f "$f" ] || continue
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}
cleanup() {
  bash "$here/local-cluster.sh" down >/dev/null 2>&1 || true
  etcd_down
}
cleanup
rm -rf "$root"
mkdir -p "$root/etcd-pids" "$root/etcd-logs"
trap cleanup EXIT

env_line=$(bash "$here/local-cluster.sh" up 3 | grep '^export KVCTL_ENDPOINTS=')
eval "$env_line"
raftkv_eps=$KVCTL_ENDPOINTS

# etcd: member i serves clients on etcd_base+10i and peers on etcd_base+10i+1.
cluster="" etcd_eps=""
for i in 0 1 2; do
  cluster+="${cluster:+,}e$i=http://127.0.0.1:$((etcd_base + 10 * i + 1))"
  etcd_eps+="${etcd_eps:+,}127.0.0.1:$((etcd_base + 10 * i))"
done
for i in 0 1 2; do
  c=$((etcd_base + 10 * i)) p=$((etcd_base + 10 * i + 1))
  nohup "$etcd" --name "e$i" --data-dir "$root/etcd/e$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token raftkv-bench \
    --log-level warn >"$root/etcd-logs/e$i.log" 2>&1 &
  echo $! >"$root/etcd-pids/e$i.pid"
  disown
done
for i in 0 1 2; do
  c=$((etcd_base + 10 * i))
  for _ in $(seq 1 100); do
    python3 -c "import json,sys,urllib.request; sys.exit(0 if json.load(urllib.request.urlopen('http://127.0.0.1:$c/health', timeout=1))['health']=='true' else 1)" 2>/dev/null && break
    sleep 0.2
  done
done

# CPU ticks (user + system) of a system's server processes so far.
ticks() {
  local files total=0
  if [ "$1" = raftkv ]; then files=("$RAFTKV_LOCAL_DIR"/pids/*.pid); else files=("$root"/etcd-pids/*.pid); fi
  for f in "${files[@]}"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$(cat "$f")/stat")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

# Requests the raftkv nodes forwarded to a shard's leader so far.
forwarded() {
  python3 - "$RAFTKV_LOCAL_PORT_BASE" <<'EOF'
import sys, urllib.request
base, total = int(sys.argv[1]), 0.0
for i in range(3):
    body = urllib.request.urlopen(f"http://127.0.0.1:{base + 10 * i + 3}/metrics", timeout=5).read().decode()
    total += sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith("raftkv_server_forwarded_requests_total"))
print(int(total))
EOF
}

# row NAME SYSTEM kvctl-bench-args...: one measured run, appended to $rows.
row() {
  local name=$1 system=$2 eps
  shift 2
  if [ "$system" = raftkv ]; then eps=$raftkv_eps; else eps=$etcd_eps; fi
  "$bin/kvctl" --endpoints "$eps" bench --backend "$system" --duration 2 "$@" >/dev/null
  local t0 t1 f0=0 f1=0 json
  if [ "$system" = raftkv ]; then f0=$(forwarded); fi
  t0=$(ticks "$system")
  json=$("$bin/kvctl" -o json --endpoints "$eps" bench --backend "$system" --duration "$dur" "$@")
  t1=$(ticks "$system")
  if [ "$system" = raftkv ]; then f1=$(forwarded); fi
  python3 -c "
import json, sys
r = json.loads(sys.argv[1]); r['row'] = sys.argv[2]; r['cpu_s'] = (int(sys.argv[4]) - int(sys.argv[3])) / int(sys.argv[5])
r['forwarded'] = int(sys.argv[7]) - int(sys.argv[6])
print(json.dumps(r))" "$json" "$name" "$t0" "$t1" "$hz" "$f0" "$f1" >>"$rows"
}

for system in raftkv etcd; do
  eps=$raftkv_eps
  [ "$system" = etcd ] && eps=$etcd_eps
  "$bin/kvctl" --endpoints "$eps" bench --backend "$system" --clients 64 --duration 1 --prefill --value-size 256 >/dev/null
done
while read -r name args; do
  for system in raftkv etcd; do
    # shellcheck disable=SC2086
    row "$name" "$system" --value-size 256 $args
  done
done <<'ROWS'
put/1 --clients 1 --read-ratio 0
put/16 --clients 16 --read-ratio 0
put/64 --clients 64 --read-ratio 0
put/256 --clients 256 --read-ratio 0
linearizable-get/1 --clients 1 --read-ratio 1 --consistency linearizable
linearizable-get/64 --clients 64 --read-ratio 1 --consistency linearizable
linearizable-get/256 --clients 256 --read-ratio 1 --consistency linearizable
lease-vs-serializable-get/64 --clients 64 --read-ratio 1 --consistency lease
mix-90-10/64 --clients 64 --read-ratio 0.9 --consistency linearizable
ROWS

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; $(date -u +%F)"
  echo "raftkv $("$bin/raftkv-node" --version | awk '{print $2}') (3 nodes x 8 shards, replication 3) vs etcd $("$etcd" --version | awk '/etcd Version/{print $3}') (3 members); fsync on; 256-byte values, 10000 keys; ${dur} s per run after 2 s warm-up"
  python3 - "$rows" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["row"], {})[r["backend"]] = r
print(f"{'workload':<30} {'raftkv ops/s':>12} {'p50/p99/p999 ms':>20} {'etcd ops/s':>11} {'p50/p99/p999 ms':>20} {'ratio':>6} {'CPU-s/100k raftkv/etcd':>24} {'raftkv forwarded':>16}")
for name, b in by.items():
    k, e = b["raftkv"], b["etcd"]
    lat = lambda r: f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f}/{r['p999_ms']:.2f}"
    cpu = lambda r: r["cpu_s"] / max(r["ops"], 1) * 100_000
    errors = "" if k["errors"] == 0 and e["errors"] == 0 else f"  errors raftkv {k['errors']}, etcd {e['errors']}"
    print(f"{name:<30} {k['ops_per_sec']:>12.0f} {lat(k):>20} {e['ops_per_sec']:>11.0f} {lat(e):>20} "
          f"{k['ops_per_sec'] / max(e['ops_per_sec'], 1e-9):>5.2f}x {cpu(k):>11.0f} / {cpu(e):<11.0f}"
          f"{k['forwarded'] / max(k['ops'], 1):>16.0%}{errors}")
EOF
} | tee "$out"
etcd_down

# Failover: kill -9 the node leading most shards; time until a write to every shard succeeds again.
K() { "$bin/kvctl" "$@"; }
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
echo "raftkv failover after kill -9 of the leader of the most shards: writes to all shards succeed again after $(python3 -c "print(f'{$t1-$t0:.2f}')") s (election timeout 1-2 s; a kvctl process per probe write; etcd's failover is not measured yet)" | tee -a "$out"
echo "results in $out"
