#!/usr/bin/env python3
"""Static checks of the chart's dashboards, alerts and rendered objects
(run by scripts/check-chart.sh; each prints what it checked, exits 1 on the
first kind of failure with every offending item listed).

    check-chart.py dashboards   every dashboards/*.json: valid JSON,
                                     schemaVersion >= 39, every panel with a
                                     unit and a description, every $variable
                                     defined, every metric known
    check-chart.py rules        every alert: summary, description,
                                     runbook_url -> a docs/runbook.md section,
                                     every metric known
    check-chart.py rendered F   in `helm template` output F: the CRD is
                                     crds/raftkv.io_kvclusters.yaml (plus the
                                     chart's labels/annotations), the
                                     PrometheusRule is the rule file, the
                                     dashboard ConfigMaps hold the JSON files
    check-chart.py readme            every value is in the chart README's table
    check-chart.py examples F        in `helm template` output F (default
                                     values): the operator's RBAC rules, image,
                                     command, ports, probes, resources,
                                     security contexts and env are those of
                                     examples/operator.yaml (the raw manifests
                                     kubectl users apply), so the two never drift

"Known" metrics are those registered in node/src/metrics.rs and
operator/src/metrics.rs (histograms with their _bucket/_sum/_count series),
plus the connection metrics the node is adding (CONNECTION_METRICS).
"""
import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "raftkv-operator"
MIN_SCHEMA_VERSION = 39
CONNECTION_METRICS = {
    "raftkv_network_connections",
    "raftkv_network_connections_refused_total",
    "raftkv_network_connections_timed_out_total",
}
METRIC_SOURCES = [ROOT / "node" / "src" / "metrics.rs", ROOT / "operator" / "src" / "metrics.rs"]
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "and", "or", "unless", "offset", "inf", "nan", "Inf", "NaN"}
GRAFANA_BUILTINS = re.compile(r"^__")


def known_metrics():
    names = set(CONNECTION_METRICS)
    hist = set()
    for src in METRIC_SOURCES:
        text = src.read_text()
        for m in re.finditer(r'"(raftkv_[a-z0-9_]+)"', text):
            names.add(m.group(1))
        for m in re.finditer(r'(?:\bhist|\bhist_vec|HistogramOpts::new)\(\s*"(raftkv_[a-z0-9_]+)"', text):
            names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
            hist.add(m.group(1))
    # A histogram's own name selects nothing; only its _bucket/_sum/_count do.
    return names - hist


def metric_names(expr):
    """Metric names a PromQL expression selects (a small lexer, enough for ours)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    out = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        tok, before = m.group(0), e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in ".$":
            continue
        if e[m.end():].lstrip().startswith("(") or tok in PROMQL_KEYWORDS:
            continue
        out.add(tok)
    return out


def fail(problems, what):
    if problems:
        for p in problems:
            print(f"  FAIL {p}", file=sys.stderr)
        print(f"{what}: {len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboards():
    known = known_metrics()
    problems = []
    files = sorted((CHART / "dashboards").glob("*.json"))
    if not files:
        problems.append("no dashboards in charts/raftkv-operator/dashboards/")
    npanels = 0
    for f in files:
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            problems.append(f"{f.name}: not valid JSON: {e}")
            continue
        if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < MIN_SCHEMA_VERSION:
            problems.append(f"{f.name}: schemaVersion {d.get('schemaVersion')!r} < {MIN_SCHEMA_VERSION}")
        for k in ("uid", "title", "panels", "templating"):
            if k not in d:
                problems.append(f"{f.name}: no {k}")
        variables = {v.get("name") for v in d.get("templating", {}).get("list", [])}
        used = []  # (where, text) pairs that may reference $variables
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            used.append((f"variable {v.get('name')}", q.get("query", "") if isinstance(q, dict) else str(q or "")))
            used.append((f"variable {v.get('name')} datasource", json.dumps(v.get("datasource", ""))))
        ids = set()
        for p in walk_panels(d.get("panels", [])):
            title = f"{f.name}: panel {p.get('title')!r}"
            if p.get("id") in ids:
                problems.append(f"{title}: duplicate id {p.get('id')}")
            ids.add(p.get("id"))
            if p.get("type") == "row":  # a row is a heading: no queries, no field config
                continue
            npanels += 1
            if not (p.get("description") or "").strip():
                problems.append(f"{title}: no description")
            if not (p.get("fieldConfig", {}).get("defaults", {}).get("unit") or "").strip():
                problems.append(f"{title}: no fieldConfig.defaults.unit")
            targets = p.get("targets") or []
            if not targets:
                problems.append(f"{title}: no queries")
            used.append((f"{title} datasource", json.dumps(p.get("datasource", ""))))
            for t in targets:
                expr = t.get("expr") or ""
                if not expr.strip():
                    problems.append(f"{title}: target {t.get('refId')} has no expr")
                used.append((f"{title} target {t.get('refId')}", expr))
                used.append((f"{title} target {t.get('refId')} datasource", json.dumps(t.get("datasource", ""))))
                for name in sorted(metric_names(expr) - known):
                    problems.append(f"{title}: unknown metric {name} in {expr}")
        for where, text in used:
            for m in re.finditer(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]", text):
                name = next(g for g in m.groups() if g)
                if not GRAFANA_BUILTINS.match(name) and name not in variables:
                    problems.append(f"{f.name}: {where} uses undefined variable ${name}")
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") != "query":
                continue
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else str(q or "")
            # label_values(<selector>, <label>): the label is not a metric.
            q = re.sub(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", r"\1", q)
            for name in sorted(metric_names(q) - known):
                problems.append(f"{f.name}: variable {v.get('name')} uses unknown metric {name}")
    fail(problems, "dashboards")
    print(f"dashboards: {len(files)} files, {npanels} panels: JSON, schemaVersion >= {MIN_SCHEMA_VERSION}, "
          f"unit + description on every panel, variables defined, metrics known")


def anchors(markdown):
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(a)
    return out


def check_rules():
    known = known_metrics()
    problems = []
    doc = ROOT / "docs" / "runbook.md"
    sections = anchors(doc.read_text()) if doc.exists() else set()
    if not doc.exists():
        problems.append("docs/runbook.md is missing")
    rules = yaml.safe_load((CHART / "rules" / "raftkv-alerts.yaml").read_text())
    nalerts = 0
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            if "alert" in r:
                nalerts += 1
                a = r.get("annotations", {})
                for k in ("summary", "description", "runbook_url"):
                    if not (a.get(k) or "").strip():
                        problems.append(f"alert {name}: no {k}")
                url = a.get("runbook_url", "")
                if "#" not in url or not url.split("#")[0].endswith("docs/runbook.md"):
                    problems.append(f"alert {name}: runbook_url {url!r} is not a docs/runbook.md section")
                elif url.split("#", 1)[1] not in sections:
                    problems.append(f"alert {name}: docs/runbook.md has no section #{url.split('#', 1)[1]}")
                if not r.get("labels", {}).get("severity"):
                    problems.append(f"alert {name}: no severity label")
            for m in sorted(metric_names(r.get("expr", "")) - known):
                problems.append(f"rule {name}: unknown metric {m}")
    fail(problems, "rules")
    print(f"rules: {nalerts} alerts: summary, description, runbook_url -> docs/runbook.md section, metrics known")


def check_rendered(path):
    docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    problems = []
    checked = []

    crds = by_kind.get("CustomResourceDefinition", [])
    ref = yaml.safe_load((ROOT / "crds" / "raftkv.io_kvclusters.yaml").read_text())
    if len(crds) != 1:
        problems.append(f"expected 1 CRD, rendered {len(crds)}")
    else:
        crd = json.loads(json.dumps(crds[0]))
        meta = crd["metadata"]
        meta.pop("labels", None)
        ann = meta.pop("annotations", {}) or {}
        extra = set(ann) - {"helm.sh/resource-policy"}
        if extra:
            problems.append(f"CRD: unexpected annotations {sorted(extra)}")
        if crd != ref:
            problems.append("CRD: rendered CRD differs from crds/raftkv.io_kvclusters.yaml "
                            "(copy it to charts/raftkv-operator/files/crds/)")
        checked.append("CRD = crds/raftkv.io_kvclusters.yaml")

    rules = by_kind.get("PrometheusRule", [])
    if rules:
        want = yaml.safe_load((CHART / "rules" / "raftkv-alerts.yaml").read_text())
        if rules[0]["spec"] != want:
            problems.append("PrometheusRule: spec differs from rules/raftkv-alerts.yaml")
        checked.append("PrometheusRule = rules/raftkv-alerts.yaml")

    boards = {p.name: json.loads(p.read_text()) for p in (CHART / "dashboards").glob("*.json")}
    seen = {}
    for cm in by_kind.get("ConfigMap", []):
        for k, v in (cm.get("data") or {}).items():
            if k in boards:
                seen[k] = json.loads(v)
    if seen:
        for k, want in boards.items():
            if seen.get(k) != want:
                problems.append(f"dashboard ConfigMap {k}: missing or differs from dashboards/{k}")
        checked.append(f"{len(seen)} dashboard ConfigMaps = dashboards/*.json")
    fail(problems, f"rendered {path}")
    print(f"rendered {pathlib.Path(path).name}: " + "; ".join(checked))


def check_examples(path):
    rendered = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
    example = [d for d in yaml.safe_load_all((ROOT / "examples" / "operator.yaml").read_text()) if d]

    def one(docs, kind, suffix=""):
        found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
        return found[0] if len(found) == 1 else None

    problems = []
    for kind, suffix in (("ClusterRole", "raftkv-operator"), ("Role", "-leader-election")):
        a, b = one(rendered, kind, suffix), one(example, kind, suffix)
        if a is None or b is None:
            problems.append(f"{kind} *{suffix}: rendered {a is not None}, in examples {b is not None}")
        elif a["rules"] != b["rules"]:
            problems.append(f"{kind} *{suffix}: rules differ from examples/operator.yaml")
    a, b = one(rendered, "Deployment"), one(example, "Deployment")
    if a is None or b is None:
        problems.append("Deployment: missing")
    else:
        pa, pb = a["spec"]["template"]["spec"], b["spec"]["template"]["spec"]
        ca, cb = pa["containers"][0], pb["containers"][0]
        for k in ("securityContext", "terminationGracePeriodSeconds"):
            if pa.get(k) != pb.get(k):
                problems.append(f"Deployment pod {k}: {pa.get(k)!r} != example {pb.get(k)!r}")
        for k in ("image", "command", "livenessProbe", "readinessProbe", "resources", "securityContext"):
            if ca.get(k) != cb.get(k):
                problems.append(f"Deployment container {k}: {ca.get(k)!r} != example {cb.get(k)!r}")
        if [(p["name"], p["containerPort"]) for p in ca["ports"]] != [(p["name"], p["containerPort"]) for p in cb["ports"]]:
            problems.append(f"Deployment ports: {ca['ports']!r} != example {cb['ports']!r}")
        env_a = {e["name"]: e for e in ca.get("env", [])}
        for e in cb.get("env", []):
            if env_a.get(e["name"]) != e:
                problems.append(f"Deployment env {e['name']}: {env_a.get(e['name'])!r} != example {e!r}")
        if not set(cb.get("args", [])) <= set(ca.get("args", [])):
            problems.append(f"Deployment args: example's {cb.get('args')} not all in {ca.get('args')}")
        if a["spec"]["replicas"] != b["spec"]["replicas"]:
            problems.append("Deployment replicas differ from the example")
    fail(problems, f"examples/operator.yaml vs {path}")
    print("examples/operator.yaml: same RBAC rules, image, command, args, env, ports, probes, resources, "
          "security contexts and replicas as the chart's defaults")


def check_readme():
    """Every value is in the chart README's table: top-level keys and, for
    the chart's own objects, their keys (`parent.key` or `.key` shorthand)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    table = "\n".join(l for l in readme.splitlines() if l.startswith("| `"))
    open_objects = {"podSecurityContext", "securityContext", "resources", "podAnnotations", "podLabels",
                    "nodeSelector", "affinity"}
    problems = []
    for key, v in values.items():
        if f"`{key}" not in table and f", `{key}" not in table:
            problems.append(f"values.yaml key {key} is not in README.md's values table")
        if isinstance(v, dict) and key not in open_objects:
            for sub, w in v.items():
                if isinstance(w, dict) and sub not in ("spec", "annotations", "labels"):
                    for leaf in w:
                        if f"{key}.{sub}.{leaf}" not in table and f"`.{leaf}`" not in table:
                            problems.append(f"values.yaml key {key}.{sub}.{leaf} is not in README.md's values table")
                elif f"`{key}.{sub}`" not in table and f"`{key}.{sub} " not in table and f"`.{sub}`" not in table:
                    problems.append(f"values.yaml key {key}.{sub} is not in README.md's values table")
    fail(problems, "chart README")
    print(f"chart README: all {len(values)} top-level values and their keys are in the values table")


def main(argv):
    if argv[:1] == ["dashboards"]:
        check_dashboards()
    elif argv[:1] == ["rules"]:
        check_rules()
    elif argv[:1] == ["rendered"] and len(argv) == 2:
        check_rendered(argv[1])
    elif argv[:1] == ["readme"]:
        check_readme()
    elif argv[:1] == ["examples"] and len(argv) == 2:
        check_examples(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
