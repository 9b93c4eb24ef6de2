#!/usr/bin/env bash
# Checks the Helm chart, its dashboards and its alerts without a cluster:
#
#   - helm lint --strict, with default values and with every optional part on;
#   - helm template with default values (operator, ClusterRole, CRD, no
#     optional part) and with every optional part on (monitoring forced, a
#     KVCluster, one watched namespace: Role instead of ClusterRole);
#     monitoring objects and the KVCluster follow the APIs the cluster serves;
#   - values.schema.json rejects wrong types, unknown keys and a second watched
#     namespace (helm template must fail, on the schema);
#   - the chart's operator matches examples/operator.yaml (RBAC rules, image,
#     command, args, env, ports, probes, resources, security contexts);
#   - CRD drift: files/crds/ is a byte copy of crds/raftkv.io_kvclusters.yaml
#     and the rendered CRD equals it; the PrometheusRule is the rule file; the
#     dashboard ConfigMaps are the JSON files; the JSON files are what
#     scripts/gen-dashboards.py generates;
#   - promtool check rules and promtool test rules (each alert firing and not);
#   - dashboards: valid JSON, schemaVersion >= 39, unit and description on
#     every panel, every $variable defined; every metric in panel queries and
#     alert expressions is one the node or operator registers
#     (scripts/check-chart.py);
#   - every value of values.yaml is in the chart README's values table;
#   - shellcheck of the chart's scripts, when shellcheck is installed.
#
# Tools: helm from $K8S_BIN, else ~/.cache/raftkv/k8s/<K8S_VERSION>/bin (make
# k8s-bins builds it), else any ~/.cache/raftkv/k8s/*/bin, else PATH; promtool
# from PATH, installed by scripts/install-monitoring.sh when missing.
#
# Usage: scripts/check-chart.sh        ends with "N passed, M failed"; exit 1 on a failure
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo/charts/raftkv-operator"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

find_helm() {
	local cache="${RAFTKV_CACHE_DIR:-$HOME/.cache/raftkv}" version="" h
	if [[ -n "${K8S_BIN:-}" && -x "$K8S_BIN/helm" ]]; then
		echo "$K8S_BIN/helm"
		return
	fi
	version="$(sed -n 's/^K8S_VERSION=//p' "$repo/e2e/k8s/versions.env" 2>/dev/null || true)"
	if [[ -n "$version" && -x "$cache/k8s/$version/bin/helm" ]]; then
		echo "$cache/k8s/$version/bin/helm"
		return
	fi
	for h in "$cache"/k8s/*/bin/helm; do
		if [[ -x "$h" ]]; then
			echo "$h"
			return
		fi
	done
	command -v helm || true
}

helm="$(find_helm)"
if [[ -z "$helm" ]]; then
	echo "check-chart: no helm: run 'make k8s-bins' (builds ~/.cache/raftkv/k8s/<version>/bin/helm) or set K8S_BIN" >&2
	exit 1
fi
if ! command -v promtool >/dev/null 2>&1; then
	bash "$repo/scripts/install-monitoring.sh" || exit 1
fi
echo "check-chart: $("$helm" version --short) ($helm); $(promtool --version 2>&1 | head -n1)"

passed=0
failed=0
failures=()
ok() {
	passed=$((passed + 1))
	echo "ok   $1"
}
not_ok() {
	failed=$((failed + 1))
	failures+=("$1")
	echo "FAIL $1"
	if [[ -s "$work/out" ]]; then sed 's/^/     | /' "$work/out" | tail -n 25; fi
}
# check NAME CMD...: CMD must succeed.
check() {
	local name="$1"
	shift
	if "$@" >"$work/out" 2>&1; then ok "$name"; else not_ok "$name"; fi
}
# refuse NAME PATTERN CMD...: CMD must fail, with PATTERN (ERE) in its output.
refuse() {
	local name="$1" pattern="$2"
	shift 2
	if "$@" >"$work/out" 2>&1; then
		echo "(it succeeded)" >>"$work/out"
		not_ok "$name"
	elif grep -Eq -- "$pattern" "$work/out"; then
		ok "$name"
	else
		echo "(failed without /$pattern/)" >>"$work/out"
		not_ok "$name"
	fi
}

# Every optional part on: monitoring forced, dashboards, a KVCluster, one
# watched namespace (a Role there instead of the ClusterRole).
all_on=(
	--set monitoring.enabled=true --set monitoring.force=true
	--set dashboards.enabled=true
	--set kvcluster.enabled=true --set kvcluster.force=true --set kvcluster.namespace=db
	--set "watchNamespaces={db}"
)
template() { "$helm" template raftkv-operator "$chart" --namespace raftkv-system "$@"; }
# objects FILE: "Kind namespace name" for each rendered object, sorted.
objects() {
	python3 - "$1" <<-'EOF'
		import sys, yaml
		for d in yaml.safe_load_all(open(sys.argv[1])):
		    if d:
		        m = d["metadata"]
		        print(d["kind"], m.get("namespace", "-"), m["name"])
	EOF
}
# has FILE LINE... / lacks FILE KIND...: assertions on objects FILE.
has() {
	local file="$1" line
	shift
	objects "$file" >"$work/objects" || return 1
	for line in "$@"; do
		grep -qx -- "$line" "$work/objects" || { echo "missing: $line"; cat "$work/objects"; return 1; }
	done
}
lacks() {
	local file="$1" kind
	shift
	objects "$file" >"$work/objects" || return 1
	for kind in "$@"; do
		if grep -q "^$kind " "$work/objects"; then echo "unexpected: $kind"; cat "$work/objects"; return 1; fi
	done
}
render() {
	local out="$1"
	shift
	template "$@" >"$out"
}

# --- lint ---------------------------------------------------------------------
check "helm lint --strict (default values)" "$helm" lint --strict "$chart"
check "helm lint --strict (every optional part on)" "$helm" lint --strict "$chart" "${all_on[@]}"

# --- template: default values ---------------------------------------------------
default="$work/default.yaml"
if render "$default" 2>"$work/out"; then
	check "template default: operator, ServiceAccount, ClusterRole(Binding), leader-election Role, metrics Service, CRD" \
		has "$default" \
		"Deployment raftkv-system raftkv-operator" \
		"ServiceAccount raftkv-system raftkv-operator" \
		"ClusterRole - raftkv-operator" \
		"ClusterRoleBinding - raftkv-operator" \
		"Role raftkv-system raftkv-operator-leader-election" \
		"RoleBinding raftkv-system raftkv-operator-leader-election" \
		"Service raftkv-system raftkv-operator-metrics" \
		"CustomResourceDefinition - kvclusters.raftkv.io"
	check "template default: no optional part (KVCluster, monitors, rules, dashboards, test Pod)" \
		lacks "$default" KVCluster PodMonitor ServiceMonitor PrometheusRule ConfigMap Pod
	check "template default: operator pod non-root, read-only root fs, ALL capabilities dropped, --log-json" \
		python3 - "$default" <<-'EOF'
			import sys, yaml
			d = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
			pod = d["spec"]["template"]["spec"]
			c = pod["containers"][0]
			assert pod["securityContext"]["runAsNonRoot"] is True, pod["securityContext"]
			assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["securityContext"]
			assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["securityContext"]
			assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["securityContext"]
			assert c["command"] == ["raftkv-operator"], c["command"]
			assert "--log-json" in c["args"] and "--leader-elect=true" in c["args"], c["args"]
			assert not any(a.startswith("--namespace") for a in c["args"]), c["args"]
			assert c["image"] == "raftkv/raftkv-operator:0.1.0", c["image"]
			assert d["spec"]["replicas"] == 2
		EOF
	check "template default: rendered CRD equals crds/raftkv.io_kvclusters.yaml (plus the chart's labels, keep annotation)" \
		python3 "$repo/scripts/check-chart.py" rendered "$default"
	check "template default: CRD has helm.sh/resource-policy: keep" grep -q 'helm.sh/resource-policy: keep' "$default"
	check "template default: RBAC, image, command, args, env, ports, probes, security = examples/operator.yaml" \
		python3 "$repo/scripts/check-chart.py" examples "$default"
else
	not_ok "helm template (default values)"
fi

# --- template: every optional part on --------------------------------------------
full="$work/full.yaml"
if render "$full" "${all_on[@]}" >"$work/out" 2>&1; then
	check "template all-on: PodMonitor, ServiceMonitor, PrometheusRule, KVCluster, 2 dashboards, test Pod" \
		has "$full" \
		"PodMonitor raftkv-system raftkv-operator-nodes" \
		"ServiceMonitor raftkv-system raftkv-operator" \
		"PrometheusRule raftkv-system raftkv-operator" \
		"KVCluster db example" \
		"ConfigMap raftkv-system raftkv-operator-cluster-dashboard" \
		"ConfigMap raftkv-system raftkv-operator-operator-dashboard" \
		"Pod raftkv-system raftkv-operator-test-kv"
	check "template all-on: one watched namespace -> Role/RoleBinding in it, no ClusterRole, --namespace=db" \
		python3 - "$full" <<-'EOF'
			import sys, yaml
			docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
			kinds = {(d["kind"], d["metadata"].get("namespace")) for d in docs}
			assert ("Role", "db") in kinds and ("RoleBinding", "db") in kinds, kinds
			assert not any(k in ("ClusterRole", "ClusterRoleBinding") for k, _ in kinds), kinds
			dep = next(d for d in docs if d["kind"] == "Deployment")
			assert "--namespace=db" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
			pm = next(d for d in docs if d["kind"] == "PodMonitor")
			assert pm["spec"]["namespaceSelector"] == {"matchNames": ["db"]}, pm["spec"]["namespaceSelector"]
		EOF
	check "template all-on: dashboards labelled grafana_dashboard=\"1\", test Pod is a helm test hook on the client Service" \
		python3 - "$full" <<-'EOF'
			import sys, yaml
			docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
			cms = [d for d in docs if d["kind"] == "ConfigMap"]
			assert cms and all(c["metadata"]["labels"].get("grafana_dashboard") == "1" for c in cms), cms
			pod = next(d for d in docs if d["kind"] == "Pod")
			assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
			env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
			assert env["KVCTL_ENDPOINTS"] == "example.db.svc.cluster.local:2379", env
			assert pod["spec"]["containers"][0]["image"] == "raftkv/raftkv-node:0.1.0"
			kvc = next(d for d in docs if d["kind"] == "KVCluster")
			assert kvc["spec"]["version"] == "0.1.0" and kvc["spec"]["replicas"] == 3, kvc["spec"]
		EOF
	check "template all-on: PrometheusRule = rules file, dashboard ConfigMaps = JSON files, CRD = crds/" \
		python3 "$repo/scripts/check-chart.py" rendered "$full"
else
	not_ok "helm template (every optional part on)"
fi

# --- APIs the cluster serves decide what is rendered -------------------------------
detect="$work/detect.yaml"
rendered_kind() { grep -q "^kind: $1\$" "$detect"; }
monitors_need_api() {
	template --set monitoring.enabled=true --set dashboards.enabled=true >"$detect" || return 1
	for k in PodMonitor ServiceMonitor PrometheusRule; do
		if rendered_kind "$k"; then echo "rendered a $k"; return 1; fi
	done
}
monitors_with_api() {
	template --set monitoring.enabled=true --api-versions monitoring.coreos.com/v1 >"$detect" || return 1
	for k in PodMonitor ServiceMonitor PrometheusRule; do
		rendered_kind "$k" || { echo "no $k"; return 1; }
	done
}
kvcluster_with_api() {
	template --set kvcluster.enabled=true --api-versions raftkv.io/v1alpha1/KVCluster >"$detect" || return 1
	rendered_kind KVCluster
}
crd_switches() {
	template --set crds.install=false >"$detect" || return 1
	if rendered_kind CustomResourceDefinition; then echo "crds.install=false rendered the CRD"; return 1; fi
	template --set crds.keep=false >"$detect" || return 1
	rendered_kind CustomResourceDefinition || { echo "crds.keep=false dropped the CRD"; return 1; }
	if grep -q "helm.sh/resource-policy" "$detect"; then echo "crds.keep=false kept the annotation"; return 1; fi
}
check "monitoring.enabled without the monitoring.coreos.com/v1 API renders no monitor" monitors_need_api
check "monitoring.enabled with the monitoring.coreos.com/v1 API renders PodMonitor, ServiceMonitor, PrometheusRule" \
	monitors_with_api
refuse "kvcluster.enabled before the KVCluster CRD is served fails, saying how to install" \
	"helm upgrade .*kvcluster.enabled=true" \
	template --set kvcluster.enabled=true
check "kvcluster.enabled with raftkv.io/v1alpha1 served renders the KVCluster" kvcluster_with_api
refuse "a KVCluster outside the one watched namespace fails" "operator watches only db" \
	template --set kvcluster.enabled=true --set kvcluster.force=true --set "watchNamespaces={db}"
check "crds.install=false renders no CRD; crds.keep=false drops the keep annotation" crd_switches

# --- values.schema.json ------------------------------------------------------------
schema_error="values don.t meet the specifications of the schema"
refuse "schema rejects a wrong type (replicaCount=two)" "$schema_error" template --set replicaCount=two
refuse "schema rejects a wrong type (crds.install=\"yes\" as a string)" "$schema_error" template --set-string crds.install=yes
refuse "schema rejects an unknown top-level key (replicas=3)" "$schema_error" template --set replicas=3
refuse "schema rejects an unknown nested key (image.name=x)" "$schema_error" template --set image.name=x
refuse "schema rejects a bad enum (logFormat=xml)" "$schema_error" template --set logFormat=xml
refuse "schema rejects two watched namespaces (the operator watches all or one)" "$schema_error" \
	template --set "watchNamespaces={a,b}"

# --- drift ---------------------------------------------------------------------
check "CRD drift: charts/raftkv-operator/files/crds/ is a copy of crds/raftkv.io_kvclusters.yaml" \
	cmp "$repo/crds/raftkv.io_kvclusters.yaml" "$chart/files/crds/raftkv.io_kvclusters.yaml"
check "dashboard drift: dashboards/*.json are what scripts/gen-dashboards.py generates" \
	python3 "$repo/scripts/gen-dashboards.py" --check

# --- alerts ----------------------------------------------------------------------
promtool_tests() { (cd "$chart/rules" && promtool test rules tests/*.yaml); }
check "promtool check rules rules/raftkv-alerts.yaml" promtool check rules "$chart/rules/raftkv-alerts.yaml"
check "promtool test rules rules/tests/*.yaml (each alert firing and not firing)" \
	promtool_tests
check "every alert has a firing and a not-firing promtool case" \
	python3 - "$chart/rules" <<-'EOF'
		import glob, os, sys, yaml
		rules = yaml.safe_load(open(os.path.join(sys.argv[1], "raftkv-alerts.yaml")))
		alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
		fired, quiet = set(), set()
		for f in glob.glob(os.path.join(sys.argv[1], "tests", "*.yaml")):
		    for t in yaml.safe_load(open(f))["tests"]:
		        for a in t.get("alert_rule_test", []):
		            (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
		assert not alerts - fired, f"never tested firing: {sorted(alerts - fired)}"
		assert not alerts - quiet, f"never tested not firing: {sorted(alerts - quiet)}"
	EOF
check "alerts: summary, description, runbook section, known metrics" \
	python3 "$repo/scripts/check-chart.py" rules

# --- dashboards ------------------------------------------------------------------
check "dashboards: JSON, schemaVersion >= 39, unit + description, variables, known metrics" \
	python3 "$repo/scripts/check-chart.py" dashboards

check "chart README: every value is in the values table" python3 "$repo/scripts/check-chart.py" readme

# --- the scripts themselves ------------------------------------------------------
if command -v shellcheck >/dev/null 2>&1; then
	check "shellcheck scripts/check-chart.sh scripts/install-monitoring.sh" \
		shellcheck "$repo/scripts/check-chart.sh" "$repo/scripts/install-monitoring.sh"
else
	echo "skip shellcheck: not installed (scripts/install-deps.sh installs it)"
fi

echo
if ((failed > 0)); then
	printf 'check-chart: failed: %s\n' "${failures[@]}"
fi
echo "check-chart: $passed passed, $failed failed"
((failed == 0))
