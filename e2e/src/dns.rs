//! Cluster DNS as a hosts file (pure).
//!
//! There is no DNS server: each pod's `/etc/hosts` carries the names a
//! cluster DNS would answer, computed from Services and EndpointSlices the
//! way CoreDNS's kubernetes plugin does:
//!
//! * a ClusterIP Service `s` in `n`: `s.n.svc.cluster.local` → its ClusterIP;
//! * a headless Service: its name → each ready endpoint (every endpoint when
//!   `publishNotReadyAddresses`), and `h.s.n.svc.cluster.local` → the
//!   endpoint whose `hostname` is `h` (StatefulSet pods).
//!
//! Search domains are emulated by also writing the short forms a pod in the
//! same namespace could use (`s`, `h.s`), since glibc applies `search` only to
//! DNS, never to the hosts file.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";

/// One address and the names that resolve to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub ip: String,
    /// Names valid from any namespace, FQDN first.
    pub names: Vec<String>,
    /// The namespace whose pods also get `short`.
    pub namespace: String,
    /// Names valid only through the namespace's search domain.
    pub short: Vec<String>,
}

fn record(ip: &str, rel: &str, ns: &str) -> Record {
    Record {
        ip: ip.to_string(),
        names: vec![
            format!("{rel}.{ns}.svc.{DOMAIN}"),
            format!("{rel}.{ns}.svc"),
            format!("{rel}.{ns}"),
        ],
        namespace: ns.to_string(),
        short: vec![rel.to_string()],
    }
}

/// Every record the cluster's Services and EndpointSlices define, sorted.
pub fn cluster_records(services: &[Service], slices: &[EndpointSlice]) -> Vec<Record> {
    let mut out = BTreeSet::new();
    let mut headless: BTreeMap<(String, String), bool> = BTreeMap::new();
    for svc in services {
        let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) else {
            continue;
        };
        let Some(spec) = &svc.spec else { continue };
        match spec.cluster_ip.as_deref() {
            Some("None") => {
                headless.insert(
                    (ns.clone(), name.clone()),
                    spec.publish_not_ready_addresses.unwrap_or(false),
                );
            }
            Some(ip) if !ip.is_empty() => {
                out.insert(record(ip, name, ns));
            }
            _ => {}
        }
    }
    for slice in slices {
        let Some(ns) = &slice.metadata.namespace else { continue };
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let Some(publish_not_ready) = headless.get(&(ns.clone(), svc.clone())) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            for ip in &ep.addresses {
                out.insert(record(ip, svc, ns));
                if let Some(h) = &ep.hostname {
                    out.insert(record(ip, &format!("{h}.{svc}"), ns));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The hosts file of one pod: localhost, the pod's own names, then the cluster's.
pub fn hosts_file(records: &[Record], pod_namespace: &str, own_ip: &str, own_names: &[String]) -> String {
    let mut s = String::from("# Kubernetes-managed hosts file (raftkv pod runner: cluster DNS as a hosts file).\n");
    s.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !own_names.is_empty() {
        s.push_str(&format!("{own_ip}\t{}\n", own_names.join(" ")));
    }
    for r in records {
        let mut names = r.names.clone();
        if r.namespace == pod_namespace {
            names.extend(r.short.iter().cloned());
        }
        s.push_str(&format!("{}\t{}\n", r.ip, names.join(" ")));
    }
    s
}

/// The pod's own names, as the kubelet writes them: `<fqdn> <hostname>`
/// when `hostname`+`subdomain` are set, else the pod name.
pub fn own_names(pod_name: &str, namespace: &str, hostname: Option<&str>, subdomain: Option<&str>) -> Vec<String> {
    let host = hostname.unwrap_or(pod_name).to_string();
    match subdomain {
        Some(sub) if !sub.is_empty() => vec![format!("{host}.{sub}.{namespace}.svc.{DOMAIN}"), host],
        _ => vec![host],
    }
}

/// resolv.conf for pods: search domains as in a cluster, and no nameserver
/// reachable from the pod (lookups not in the hosts file fail fast and no
/// query leaves the pod network).
pub fn resolv_conf(namespace: &str) -> String {
    format!(
        "search {namespace}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\nnameserver 127.0.0.1\noptions ndots:5 attempts:1 timeout:1\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_from_services_and_slices() {
        let svcs: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "web", "namespace": "a"}, "spec": {"clusterIP": "10.96.0.10"}},
            {"metadata": {"name": "db", "namespace": "a"}, "spec": {"clusterIP": "None"}},
            {"metadata": {"name": "peers", "namespace": "a"}, "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}}
        ]))
        .unwrap();
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {"metadata": {"name": "db-x", "namespace": "a", "labels": {"kubernetes.io/service-name": "db"}},
             "addressType": "IPv4",
             "endpoints": [
                {"addresses": ["10.200.0.2"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.200.0.3"], "hostname": "db-1", "conditions": {"ready": false}}]},
            {"metadata": {"name": "p-x", "namespace": "a", "labels": {"kubernetes.io/service-name": "peers"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": ["10.200.0.3"], "hostname": "db-1", "conditions": {"ready": false}}]},
            {"metadata": {"name": "w-x", "namespace": "a", "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": ["10.200.0.9"], "conditions": {"ready": true}}]}
        ]))
        .unwrap();
        let recs = cluster_records(&svcs, &slices);
        let lookup = |name: &str| -> Vec<String> {
            recs.iter()
                .filter(|r| r.names.iter().any(|n| n == name))
                .map(|r| r.ip.clone())
                .collect()
        };
        assert_eq!(lookup("web.a.svc.cluster.local"), vec!["10.96.0.10"]);
        assert_eq!(lookup("db-0.db.a.svc.cluster.local"), vec!["10.200.0.2"]);
        assert!(
            lookup("db-1.db.a.svc.cluster.local").is_empty(),
            "not ready and not published"
        );
        assert_eq!(lookup("db-1.peers.a.svc.cluster.local"), vec!["10.200.0.3"]);
        assert_eq!(lookup("db.a.svc.cluster.local"), vec!["10.200.0.2"]);
        // The ClusterIP Service's endpoints are not DNS records.
        assert!(recs.iter().all(|r| r.ip != "10.200.0.9"));

        let hosts = hosts_file(
            &recs,
            "a",
            "10.200.0.2",
            &own_names("db-0", "a", Some("db-0"), Some("db")),
        );
        assert!(
            hosts.contains("10.200.0.2\tdb-0.db.a.svc.cluster.local db-0\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("10.96.0.10\tweb.a.svc.cluster.local web.a.svc web.a web\n"),
            "{hosts}"
        );
        let other = hosts_file(&recs, "b", "10.200.0.7", &own_names("x", "b", None, None));
        assert!(
            other.contains("10.96.0.10\tweb.a.svc.cluster.local web.a.svc web.a\n"),
            "{other}"
        );
        assert!(other.contains("10.200.0.7\tx\n"));
    }

    #[test]
    fn resolv_conf_searches_the_namespace_first() {
        assert!(resolv_conf("ns").starts_with("search ns.svc.cluster.local svc.cluster.local cluster.local\n"));
    }
}
