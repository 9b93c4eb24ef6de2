#!/usr/bin/env python3
"""Generates the Grafana dashboards of charts/raftkv-operator/dashboards/.

    python3 scripts/gen-dashboards.py          # (re)write the JSON files
    python3 scripts/gen-dashboards.py --check  # exit 1 when a file drifted

The dashboards are written as code so every panel gets the same datasource,
unit, description and label selector; the JSON files are committed (the chart
ships them as ConfigMaps) and scripts/check-chart.sh fails when they drift.

Labels the queries use, set by the chart's PodMonitor (or an equivalent scrape
config): namespace, kvcluster (the KVCluster name, from the pod label
app.kubernetes.io/instance), pod. Template variables: datasource, namespace,
cluster (-> kvcluster), node (-> pod); the operator dashboard: datasource,
namespace, pod (operator metrics carry no KVCluster label).
"""
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "charts" / "raftkv-operator" / "dashboards"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


class Board:
    """Lays panels out left to right, top to bottom on Grafana's 24-column grid."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({
            "type": "row",
            "title": title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "id": len(self.panels) + 1,
            "panels": [],
        })
        self.y += 1

    def _panel(self, kind, title, description, unit, targets, w, h, options, defaults):
        fc = {"unit": unit}
        fc.update(defaults)
        self.panels.append({
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "id": len(self.panels) + 1,
            "fieldConfig": {"defaults": fc, "overrides": []},
            "options": options,
            "targets": [
                {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                for i, (expr, legend) in enumerate(targets)
            ],
        })

    def stat(self, title, description, unit, expr, red_at=None, w=4, h=4):
        steps = [{"color": "green", "value": None}]
        if red_at is not None:
            steps.append({"color": "red", "value": red_at})
        self._panel(
            "stat", title, description, unit, [(expr, "")], w, h,
            {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "area",
                "justifyMode": "auto",
                "textMode": "auto",
                "orientation": "auto",
            },
            {"thresholds": {"mode": "absolute", "steps": steps}, "color": {"mode": "thresholds"}},
        )

    def ts(self, title, description, unit, targets, w=12, h=8):
        self._panel(
            "timeseries", title, description, unit, targets, w, h,
            {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
            {"custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"},
             "color": {"mode": "palette-classic"}},
        )


def datasource_var():
    return {
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "",
    }


def query_var(name, label, query):
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {}, "hide": 0, "includeAll": True, "multi": True, "allValue": ".*",
        "options": [], "refresh": 2, "regex": "", "sort": 1,
    }


def dashboard(uid, title, description, board, variables):
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": board.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["raftkv"],
        "templating": {"list": variables},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def cluster_dashboard():
    s = 'namespace=~"$namespace", kvcluster=~"$cluster", pod=~"$node"'
    b = Board()
    b.row("Overview")
    b.stat("Nodes reporting",
           "raftkv nodes whose /metrics was scraped last (count of raftkv_server_shards_hosted series).",
           "short", f"count(raftkv_server_shards_hosted{{{s}}})")
    b.stat("Shards with a leader",
           "Shards (and the metadata group, shard=\"meta\") where at least one replica knows a leader.",
           "short", f"count(max by (namespace, kvcluster, shard) (raftkv_server_has_leader{{{s}}}) == 1) or vector(0)")
    b.stat("Shards without a leader",
           "Shards where no replica knows a leader: their keys can be neither written nor read linearizably.",
           "short", f"count(max by (namespace, kvcluster, shard) (raftkv_server_has_leader{{{s}}}) == 0) or vector(0)",
           red_at=1)
    b.stat("Nodes with disk full",
           "Nodes that refuse writes for lack of disk space (raftkv_disk_full = 1).",
           "short", f"sum(raftkv_disk_full{{{s}}}) or vector(0)", red_at=1)
    b.stat("Nodes draining",
           "Nodes carrying the drain mark (they give up and refuse leadership): normal during a rolling restart.",
           "short", f"sum(raftkv_server_draining{{{s}}}) or vector(0)")
    b.stat("Client requests",
           "Client gRPC requests per second, all operations and outcomes.",
           "reqps", f"sum(rate(raftkv_grpc_requests_total{{{s}}}[{RATE}]))")

    b.row("Raft")
    b.ts("Leader changes by shard",
         "Leader changes each shard saw in the interval (highest count among its replicas). "
         "Frequent changes point at overloaded nodes, slow disks or a flaky network.",
         "short", [(f"max by (kvcluster, shard) (increase(raftkv_server_leader_changes_seen_total{{{s}}}[{RATE}]))",
                    "{{kvcluster}} shard {{shard}}")])
    b.ts("Leaders per node",
         "Shard replicas each node currently leads. The operator evens leaders out after scale-up and restarts.",
         "short", [(f"sum by (pod) (raftkv_server_is_leader{{{s}}})", "{{pod}}")])
    b.ts("Proposals committed / applied",
         "Raft log entries committed and applied per second on each node, summed over the shard replicas it hosts.",
         "ops", [(f"sum by (pod) (rate(raftkv_server_proposals_committed_total{{{s}}}[{RATE}]))", "committed {{pod}}"),
                 (f"sum by (pod) (rate(raftkv_server_proposals_applied_total{{{s}}}[{RATE}]))", "applied {{pod}}")])
    b.ts("Proposals failed",
         "Proposals per second that failed on each node (not leader, shutting down, storage error).",
         "ops", [(f"sum by (pod) (rate(raftkv_server_proposals_failed_total{{{s}}}[{RATE}]))", "{{pod}}")])
    b.ts("Proposals pending",
         "Proposals each node has accepted and not yet applied, summed over its shards.",
         "short", [(f"sum by (pod) (raftkv_server_proposals_pending{{{s}}})", "{{pod}}")])
    b.ts("Replica lag",
         "Largest number of entries committed but not yet applied, over the shard replicas of each node.",
         "short", [(f"max by (pod) (raftkv_server_replica_lag_entries{{{s}}})", "{{pod}}")])
    b.ts("Shards hosted per node",
         "Shard replicas each node hosts (placement); rebalancing moves them between nodes.",
         "short", [(f"sum by (pod) (raftkv_server_shards_hosted{{{s}}})", "{{pod}}")])
    b.ts("Drain mark",
         "1 while a node refuses leadership (drain mark set), e.g. before the operator restarts it.",
         "bool_yes_no", [(f"max by (pod) (raftkv_server_draining{{{s}}})", "{{pod}}")])

    b.row("Client requests")
    b.ts("Request rate by operation",
         "Client gRPC requests per second by operation (put, get, delete, cas, scan).",
         "reqps", [(f"sum by (op) (rate(raftkv_grpc_requests_total{{{s}}}[{RATE}]))", "{{op}}")])
    b.ts("Request latency p50 / p99 by operation",
         "Median and 99th percentile of client request latency by operation, as the serving node measured it.",
         "s", [(f"histogram_quantile(0.5, sum by (op, le) (rate(raftkv_grpc_request_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "p50 {{op}}"),
               (f"histogram_quantile(0.99, sum by (op, le) (rate(raftkv_grpc_request_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "p99 {{op}}")])
    b.ts("Errors by code",
         "Client requests per second that ended with a gRPC code other than Ok, by operation and code.",
         "reqps", [(f"sum by (op, code) (rate(raftkv_grpc_requests_total{{{s}, code!=\"Ok\"}}[{RATE}]))",
                    "{{op}} {{code}}")], w=24)

    b.row("Disk")
    b.ts("WAL fsync latency p50 / p99",
         "Median and 99th percentile of write-ahead-log fsync durations per node; one fsync covers every shard (group commit).",
         "s", [(f"histogram_quantile(0.5, sum by (pod, le) (rate(raftkv_disk_wal_fsync_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "p50 {{pod}}"),
               (f"histogram_quantile(0.99, sum by (pod, le) (rate(raftkv_disk_wal_fsync_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "p99 {{pod}}")])
    b.ts("WAL fsync batch size",
         "Appends and votes made durable by one fsync, on average: how much group commit saves.",
         "short", [(f"sum by (pod) (rate(raftkv_disk_wal_fsync_batch_size_sum{{{s}}}[{RATE}])) / "
                    f"sum by (pod) (rate(raftkv_disk_wal_fsync_batch_size_count{{{s}}}[{RATE}]))", "{{pod}}")])
    b.ts("WAL fsyncs",
         "WAL fsyncs per second on each node.",
         "ops", [(f"sum by (pod) (rate(raftkv_disk_wal_fsync_duration_seconds_count{{{s}}}[{RATE}]))", "{{pod}}")])
    b.ts("Disk full",
         "1 while a node refuses writes for lack of disk space.",
         "bool_yes_no", [(f"max by (pod) (raftkv_disk_full{{{s}}})", "{{pod}}")])

    b.row("Snapshots")
    b.ts("Snapshots sent / received",
         "Shard snapshots sent and received (installed) in the interval: replicas catching up after the log was compacted, "
         "or new replicas during scale-up.",
         "short", [(f"sum by (pod) (increase(raftkv_network_snapshot_send_success_total{{{s}}}[{RATE}]))", "sent {{pod}}"),
                   (f"sum by (pod) (increase(raftkv_network_snapshot_receive_success_total{{{s}}}[{RATE}]))",
                    "received {{pod}}")], w=8)
    b.ts("Snapshot bytes sent / received",
         "Snapshot bytes per second sent and received by each node.",
         "Bps", [(f"sum by (pod) (rate(raftkv_network_snapshot_send_bytes_total{{{s}}}[{RATE}]))", "sent {{pod}}"),
                 (f"sum by (pod) (rate(raftkv_network_snapshot_receive_bytes_total{{{s}}}[{RATE}]))", "received {{pod}}")],
         w=8)
    b.ts("Snapshot duration p99",
         "99th percentile of the time to send a snapshot, and to receive and install one.",
         "s", [(f"histogram_quantile(0.99, sum by (le) (rate(raftkv_network_snapshot_send_total_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "send"),
               (f"histogram_quantile(0.99, sum by (le) (rate(raftkv_network_snapshot_receive_total_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "receive")], w=8)

    b.row("Connections")
    b.ts("Open connections by port",
         "Open TCP connections on each node by listener (port label: client, peer, admin).",
         "short", [(f"sum by (pod, port) (raftkv_network_connections{{{s}}})", "{{pod}} {{port}}")])
    b.ts("Connections refused / timed out",
         "Connections per second each node closed on accept because the listener's connection budget was full (refused), "
         "or for sending too little within the handshake timeout or idling (timed out), by listener.",
         "cps", [(f"sum by (pod, port) (rate(raftkv_network_connections_refused_total{{{s}}}[{RATE}]))",
                  "refused {{pod}} {{port}}"),
                 (f"sum by (pod, port) (rate(raftkv_network_connections_timed_out_total{{{s}}}[{RATE}]))",
                  "timed out {{pod}} {{port}}")])

    variables = [
        datasource_var(),
        query_var("namespace", "Namespace", "label_values(raftkv_server_shards_hosted, namespace)"),
        query_var("cluster", "KVCluster", 'label_values(raftkv_server_shards_hosted{namespace=~"$namespace"}, kvcluster)'),
        query_var("node", "Node",
                  'label_values(raftkv_server_shards_hosted{namespace=~"$namespace", kvcluster=~"$cluster"}, pod)'),
    ]
    return dashboard("raftkv-cluster", "raftkv / cluster",
                     "A raftkv KVCluster: leaders, requests, Raft proposals, WAL, snapshots, placement.", b, variables)


def operator_dashboard():
    s = 'namespace=~"$namespace", pod=~"$pod"'
    b = Board()
    b.row("Overview")
    b.stat("Operator replicas reporting",
           "Operator pods whose /metrics was scraped last; one of them holds the Lease and reconciles.",
           "short", f"count(raftkv_operator_reconciles_total{{{s}}})", w=6)
    b.stat("Reconciles",
           "Reconciles started per second, all KVClusters.",
           "ops", f"sum(rate(raftkv_operator_reconciles_total{{{s}}}[{RATE}]))", w=6)
    b.stat("Reconcile errors",
           "Reconciles per second that failed, all reasons.",
           "ops", f"sum(rate(raftkv_operator_reconcile_errors_total{{{s}}}[{RATE}])) or vector(0)", red_at=0.01, w=6)
    b.stat("Reconcile p99",
           "99th percentile of the time one reconcile took.",
           "s", f"histogram_quantile(0.99, sum by (le) (rate(raftkv_operator_reconcile_duration_seconds_bucket{{{s}}}[{RATE}])))",
           w=6)

    b.row("Reconciles")
    b.ts("Reconciles by replica",
         "Reconciles started per second by each operator pod: the one with a non-zero rate is the Lease holder.",
         "ops", [(f"sum by (pod) (rate(raftkv_operator_reconciles_total{{{s}}}[{RATE}]))", "{{pod}}")])
    b.ts("Reconcile errors by reason",
         "Failed reconciles per second by reason (the operator's error kind).",
         "ops", [(f"sum by (reason) (rate(raftkv_operator_reconcile_errors_total{{{s}}}[{RATE}]))", "{{reason}}")])
    b.ts("Reconcile duration p50 / p99",
         "Median and 99th percentile of the time one reconcile took (observe, plan, apply, report status).",
         "s", [(f"histogram_quantile(0.5, sum by (le) (rate(raftkv_operator_reconcile_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "p50"),
               (f"histogram_quantile(0.99, sum by (le) (rate(raftkv_operator_reconcile_duration_seconds_bucket{{{s}}}[{RATE}])))",
                "p99")])
    b.ts("Reconcile error ratio",
         "Share of reconciles that failed.",
         "percentunit", [(f"(sum(rate(raftkv_operator_reconcile_errors_total{{{s}}}[{RATE}])) or vector(0)) / "
                          f"sum(rate(raftkv_operator_reconciles_total{{{s}}}[{RATE}]))", "errors / reconciles")])

    variables = [
        datasource_var(),
        query_var("namespace", "Namespace", "label_values(raftkv_operator_reconciles_total, namespace)"),
        query_var("pod", "Operator pod", 'label_values(raftkv_operator_reconciles_total{namespace=~"$namespace"}, pod)'),
    ]
    return dashboard("raftkv-operator", "raftkv / operator",
                     "The raftkv operator: reconciles, errors by reason, reconcile duration.", b, variables)


def render(d):
    return json.dumps(d, indent=2, sort_keys=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    files = {"raftkv-cluster.json": cluster_dashboard(), "raftkv-operator.json": operator_dashboard()}
    drifted = []
    for name, d in files.items():
        path = OUT / name
        text = render(d)
        if check:
            if not path.exists() or path.read_text() != text:
                drifted.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if drifted:
        print("gen-dashboards: out of date (run python3 scripts/gen-dashboards.py): " + ", ".join(drifted),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
