#!/usr/bin/env bash
# The main job on an embedded default: a local 3-node cluster, then kvctl.
set -euo pipefail
bin=${RAFTKV_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/raftkv/target}/debug}
out=$(bash "$(dirname "$0")/local-cluster.sh" up 3)
echo "$out"
eval "$(echo "$out" | grep '^export KVCTL_ENDPOINTS=')"
run() { echo "+ kvctl $*"; "$bin/kvctl" "$@"; }
run put user:1 '{"name":"ada"}'
run put user:2 '{"name":"grace"}'
run get user:1 --consistency=linearizable; echo
run cas user:2 '{"name":"grace hopper"}' --expect-absent || echo "(cas refused: the key exists, as expected)"
run scan --prefix user:
run put session:42 token --ttl 60
run cluster status
echo
echo "The cluster keeps running: export KVCTL_ENDPOINTS=$KVCTL_ENDPOINTS and use $bin/kvctl; 'make local-cluster-down' stops it."
