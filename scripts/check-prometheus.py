#!/usr/bin/env python3
"""Helper of scripts/check-prometheus.sh (which starts the real nodes and the
real Prometheus; this file only talks to them).

    check-prometheus.py config OUT BASE N RULES   write a Prometheus config
        scraping N nodes' HTTP ports (BASE+10i+3) every 1s, with the labels
        the chart's PodMonitor gives: namespace="local", kvcluster="local",
        pod="node<i>"; RULES is loaded as a rule file (evaluated every 1s)
    check-prometheus.py wait-targets URL N SECS   until N targets are up
    check-prometheus.py connections BASE N        make the connection counters
        move on real nodes: 70 silent connections to each node's admin port
        (budget 64: the rest are refused on accept, port="admin"), and one
        silent connection to each client port, closed by the node after its
        10 s handshake timeout (port="client", timed out); returns once every
        node's /metrics shows both counters (or after ~23 s; the queries then
        report what is missing). Runs ~11 s, alongside the bench.
    check-prometheus.py wait-metric BASE N NAME SECS  until some node's
        /metrics has a sample of NAME
    check-prometheus.py check URL DASHBOARD RULES [--skip-operator REASON]
        query every panel target of DASHBOARD and every alert expression of
        RULES through /api/v1/query; print "ok"/"FAIL"/"skip" per query and
        the summary line; exit 1 on a failure

What "returns data" means:
  - dashboard target: template variables substituted as Grafana would with
    every option selected ($namespace, $cluster, $node -> their allValue
    ".*"; $__rate_interval -> 10s, i.e. 4 x the 1 s scrape interval plus
    margin, as Grafana computes it; $__interval -> 1s; $__range -> 1m), status
    success, at least one series, and every label its legendFormat names
    ({{pod}}, {{op}}, ...) present on every series (else the legend is blank);
  - alert expression: the full expression must evaluate (status success; on a
    healthy cluster its result is normally empty: not firing is reported, not
    required). Then the expression without its top-level comparison with a
    number (`X == 0`, `X > 0.5`, ... -> `X`) must return at least one series,
    each with every label of the expression's `by (...)` clauses except `le`
    (the labels the alert's description and routing use). An expression that
    is not "X <op> number" must return data itself;
  - Prometheus loaded RULES itself and every rule's last evaluation on the
    real series is health "ok";
  - dashboards/alerts that read only raftkv_operator_* metrics are skipped
    with the reason given (no operator runs here).
"""
import json
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

RATE_INTERVAL = "10s"
SUBST = {
    "__rate_interval": RATE_INTERVAL,
    "__interval": "1s",
    "__range": "1m",
    "__range_s": "60",
    "__interval_ms": "1000",
}
# A top-level comparison with a number at the end of an alert expression.
COMPARISON = re.compile(r"^(?P<lhs>.*?)\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$", re.S)
BY = re.compile(r"\bby\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def cmd_config(out, base, n, rules):
    base, n = int(base), int(n)
    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules],
        "scrape_configs": [{
            "job_name": "raftkv-nodes",
            "metrics_path": "/metrics",
            "static_configs": [
                {"targets": [f"127.0.0.1:{base + 10 * i + 3}"],
                 "labels": {"namespace": "local", "kvcluster": "local", "pod": f"node{i}"}}
                for i in range(n)
            ],
        }],
    }
    with open(out, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def cmd_wait_targets(url, n, secs):
    deadline = time.time() + float(secs)
    up = 0
    while time.time() < deadline:
        try:
            t = json.loads(http_get(url + "/api/v1/targets"))["data"]["activeTargets"]
            up = sum(1 for x in t if x["health"] == "up")
            if up >= int(n):
                return 0
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    print(f"check-prometheus: only {up} of {n} targets up after {secs}s", file=sys.stderr)
    return 1


def node_metrics(base, i):
    return http_get(f"http://127.0.0.1:{base + 10 * i + 3}/metrics")


def cmd_connections(base, n):
    base, n = int(base), int(n)
    held = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", base + 10 * i), timeout=5)
        held.append(c)  # silent: the node times it out after 10 s
    admin = []
    for i in range(n):
        for _ in range(70):
            try:
                admin.append(socket.create_connection(("127.0.0.1", base + 10 * i + 2), timeout=5))
            except OSError:
                pass
    deadline = time.time() + 10
    while time.time() < deadline:
        if all('raftkv_network_connections_refused_total{port="admin"}' in node_metrics(base, i) for i in range(n)):
            break
        time.sleep(0.2)
    for s in admin:
        s.close()
    # Keep the silent client connections until the nodes time them out.
    deadline = time.time() + 13
    while time.time() < deadline:
        if all('raftkv_network_connections_timed_out_total{port="client"}' in node_metrics(base, i) for i in range(n)):
            break
        time.sleep(0.5)
    for s in held:
        s.close()
    return 0


def cmd_wait_metric(base, n, name, secs):
    base, n = int(base), int(n)
    deadline = time.time() + float(secs)
    while time.time() < deadline:
        for i in range(n):
            try:
                if re.search(r"^" + re.escape(name) + r"[{ ]", node_metrics(base, i), re.M):
                    return 0
            except OSError:
                pass
        time.sleep(0.3)
    print(f"check-prometheus: no node exported {name} within {secs}s", file=sys.stderr)
    return 1


def substitute(expr, variables):
    def rep(m):
        name = m.group(1) or m.group(2)
        if name in SUBST:
            return SUBST[name]
        if name in variables:
            return variables[name]
        return m.group(0)
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", rep, expr)


def query(url, expr):
    u = url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = http_get(u)
    except urllib.error.HTTPError as e:
        body = e.read().decode()
    except OSError as e:
        return {"status": "error", "error": str(e)}
    try:
        return json.loads(body)
    except ValueError:
        return {"status": "error", "error": body[:200]}


def series(resp):
    d = resp.get("data", {})
    r = d.get("result", [])
    if d.get("resultType") in ("scalar", "string"):
        return [{"metric": {}, "value": r}]
    return r


def panels(d):
    for p in d.get("panels", []):
        yield p
        yield from panels(p)


def is_operator(expr):
    names = set(re.findall(r"\braftkv_[a-z0-9_]+", expr))
    return bool(names) and all(n.startswith("raftkv_operator_") for n in names)


class Report:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.failures = []

    def ok(self, what, detail=""):
        self.passed += 1
        print(f"ok   {what}" + (f" ({detail})" if detail else ""))

    def fail(self, what, detail, expr):
        self.failed += 1
        self.failures.append(what)
        print(f"FAIL {what}: {detail}\n     | {expr}")

    def skip(self, what, why):
        self.skipped += 1
        print(f"skip {what}: {why}")


def describe(s):
    return f"{len(s)} series"


def check_dashboard(url, path, rep, skip_operator):
    d = json.load(open(path))
    variables = {}
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "datasource":
            continue
        variables[v["name"]] = v.get("allValue") or ".*"
    title = d.get("title", path)
    for p in panels(d):
        for t in p.get("targets", []):
            expr = t.get("expr")
            if not expr:
                continue
            what = f"dashboard {title!r} panel {p.get('title')!r}"
            if t.get("legendFormat"):
                what += f" [{t['legendFormat']}]"
            if skip_operator and is_operator(expr):
                rep.skip(what, skip_operator)
                continue
            q = substitute(expr, variables)
            if "$" in q:
                rep.fail(what, "unsubstituted variable", q)
                continue
            r = query(url, q)
            if r.get("status") != "success":
                rep.fail(what, f"status {r.get('status')}: {r.get('error')}", q)
                continue
            s = series(r)
            if not s:
                rep.fail(what, "no data", q)
                continue
            need = set(LEGEND.findall(t.get("legendFormat", "")))
            missing = sorted({l for x in s for l in need if not x["metric"].get(l)})
            if missing:
                rep.fail(what, f"series without legend label(s) {missing}", q)
                continue
            rep.ok(what, describe(s))


def check_rules(url, path, rep, skip_operator):
    rules = yaml.safe_load(open(path))
    for g in rules["groups"]:
        for rule in g["rules"]:
            if "alert" not in rule:
                continue
            expr = rule["expr"].strip()
            sev = rule.get("labels", {}).get("severity", "")
            what = f"alert {rule['alert']}" + (f" ({sev})" if sev else "")
            if skip_operator and is_operator(expr):
                rep.skip(what, skip_operator)
                continue
            r = query(url, expr)
            if r.get("status") != "success":
                rep.fail(what, f"status {r.get('status')}: {r.get('error')}", expr)
                continue
            firing = len(series(r))
            m = COMPARISON.match(expr)
            inner = m.group("lhs").strip() if m else expr
            if m:
                r = query(url, inner)
                if r.get("status") != "success":
                    rep.fail(what, f"without its comparison: status {r.get('status')}: {r.get('error')}", inner)
                    continue
            s = series(r)
            if not s:
                rep.fail(what, "no data" + (" without its comparison" if m else ""), inner)
                continue
            need = {l.strip() for b in BY.findall(inner) for l in b.split(",")} - {"le", ""}
            missing = sorted({l for x in s for l in need if not x["metric"].get(l)})
            if missing:
                rep.fail(what, f"series without grouping label(s) {missing}", inner)
                continue
            state = f"firing now: {firing} series" if firing else "not firing"
            rep.ok(what, f"{describe(s)} without the comparison; {state}")


def check_loaded_rules(url, path, rep):
    what = f"Prometheus evaluates every rule of {path.split('/')[-1]} on the real series (health ok)"
    try:
        groups = json.loads(http_get(url + "/api/v1/rules"))["data"]["groups"]
    except (OSError, ValueError, KeyError) as e:
        rep.fail(what, str(e), "/api/v1/rules")
        return
    rules = [r for g in groups for r in g["rules"]]
    want = sum(1 for g in yaml.safe_load(open(path))["groups"] for r in g["rules"])
    bad = [f"{r.get('name')}: {r.get('health')} {r.get('lastError', '')}".strip() for r in rules if r.get("health") != "ok"]
    if len(rules) != want:
        rep.fail(what, f"{len(rules)} rules loaded, the file has {want}", "/api/v1/rules")
    elif bad:
        rep.fail(what, "; ".join(bad), "/api/v1/rules")
    else:
        rep.ok(what, f"{len(rules)} rules")


def cmd_check(url, rules, dashboards, skip_operator):
    rep = Report()
    for d in dashboards:
        check_dashboard(url, d, rep, skip_operator)
    check_rules(url, rules, rep, skip_operator)
    check_loaded_rules(url, rules, rep)
    print()
    if rep.failures:
        print("check-prometheus: failed: " + "; ".join(rep.failures))
    print(f"check-prometheus: {rep.passed} passed, {rep.failed} failed, {rep.skipped} skipped")
    return 1 if rep.failed else 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "config":
        return cmd_config(*args) or 0
    if cmd == "wait-targets":
        return cmd_wait_targets(*args)
    if cmd == "connections":
        return cmd_connections(*args)
    if cmd == "wait-metric":
        return cmd_wait_metric(*args)
    if cmd == "check":
        skip = None
        if "--skip-operator" in args:
            i = args.index("--skip-operator")
            skip = args[i + 1]
            args = args[:i] + args[i + 2:]
        url, rules, *dashboards = args
        return cmd_check(url, rules, dashboards, skip)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
