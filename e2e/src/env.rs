//! A container's process: its environment and argv, as the kubelet computes
//! them (pure; the runner fetches the ConfigMaps, Secrets and Services first).
//!
//! Order, as in the kubelet: Service links, then `envFrom`, then `env`; a
//! later variable overrides an earlier one, and `$(VAR)` in `env` values,
//! `command` and `args` expands to variables defined before it (`$$` is a
//! literal `$`; an undefined `$(VAR)` stays as written).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Service};

use crate::error::{Error, Result};

/// Everything outside the pod spec that env resolution reads.
#[derive(Debug, Default, Clone)]
pub struct EnvSources {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
    pub pod_ip: String,
    pub host_ip: String,
    /// Service-link variables (see [`service_links`]).
    pub service_env: Vec<(String, String)>,
    /// What `limits.cpu` / `limits.memory` report when the container sets no limit
    /// (the kubelet reports node allocatable).
    pub node_cpu: u64,
    pub node_memory_bytes: u64,
}

/// Expands `$(VAR)` references against `vars`, kubelet style.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'('
                && let Some(end) = input[i + 2..].find(')')
            {
                let name = &input[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&input[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Service-link variables for the Services visible to a pod (`FOO_SERVICE_HOST`, ...).
pub fn service_links(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = &p.name {
                out.push((
                    format!("{name}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")),
                    p.port.to_string(),
                ));
            }
        }
        let proto = first.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto.to_lowercase(), first.port),
        ));
        for p in &ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((prefix.clone(), format!("{}://{ip}:{}", proto.to_lowercase(), p.port)));
            out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// A downward-API `fieldRef` value.
pub fn field_value(pod: &Pod, path: &str, src: &EnvSources) -> Result<String> {
    let m = &pod.metadata;
    let bracket_key = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => src.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => src.host_ip.clone(),
        _ => {
            if let Some(k) = bracket_key("metadata.labels['") {
                m.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = bracket_key("metadata.annotations['") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(Error::UnsupportedField(path.to_string()));
            }
        }
    })
}

/// Parses a CPU quantity to whole cores, rounded up as the kubelet does for env.
fn cpu_cores(q: &str) -> u64 {
    if let Some(m) = q.strip_suffix('m') {
        m.parse::<u64>().map(|v| v.div_ceil(1000)).unwrap_or(1)
    } else {
        q.parse::<f64>().map(|v| v.ceil() as u64).unwrap_or(1)
    }
}

/// Parses a memory quantity to bytes.
fn memory_bytes(q: &str) -> u64 {
    const UNITS: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().map(|v| v * mult).unwrap_or(0);
        }
    }
    q.parse().unwrap_or(0)
}

fn resource_value(container: &Container, resource: &str, src: &EnvSources) -> Result<String> {
    let res = container.resources.as_ref();
    let (map, key) = match resource.split_once('.') {
        Some(("limits", k)) => (res.and_then(|r| r.limits.as_ref()), k),
        Some(("requests", k)) => (res.and_then(|r| r.requests.as_ref()), k),
        _ => return Err(Error::UnsupportedField(resource.to_string())),
    };
    let q = map.and_then(|m| m.get(key)).map(|q| q.0.clone());
    Ok(match (key, q) {
        ("cpu", Some(q)) => cpu_cores(&q).to_string(),
        ("cpu", None) if resource.starts_with("limits") => src.node_cpu.to_string(),
        ("cpu", None) => "0".into(),
        ("memory", Some(q)) => memory_bytes(&q).to_string(),
        ("memory", None) if resource.starts_with("limits") => src.node_memory_bytes.to_string(),
        ("memory", None) => "0".into(),
        _ => return Err(Error::UnsupportedField(resource.to_string())),
    })
}

fn config_map_key(src: &EnvSources, name: &str, key: &str, optional: bool) -> Result<Option<String>> {
    let Some(cm) = src.config_maps.get(name) else {
        return if optional {
            Ok(None)
        } else {
            Err(Error::MissingObject {
                kind: "ConfigMap",
                name: name.into(),
            })
        };
    };
    match cm.data.as_ref().and_then(|d| d.get(key)) {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(Error::MissingKey {
            kind: "ConfigMap",
            name: name.into(),
            key: key.into(),
        }),
    }
}

fn secret_key(src: &EnvSources, name: &str, key: &str, optional: bool) -> Result<Option<String>> {
    let Some(s) = src.secrets.get(name) else {
        return if optional {
            Ok(None)
        } else {
            Err(Error::MissingObject {
                kind: "Secret",
                name: name.into(),
            })
        };
    };
    match s.data.as_ref().and_then(|d| d.get(key)) {
        Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
        None if optional => Ok(None),
        None => Err(Error::MissingKey {
            kind: "Secret",
            name: name.into(),
            key: key.into(),
        }),
    }
}

fn env_var_value(pod: &Pod, container: &Container, var: &EnvVar, src: &EnvSources) -> Result<Option<String>> {
    let Some(from) = &var.value_from else {
        return Ok(Some(var.value.clone().unwrap_or_default()));
    };
    if let Some(f) = &from.field_ref {
        return field_value(pod, &f.field_path, src).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        return resource_value(container, &r.resource, src).map(Some);
    }
    if let Some(k) = &from.config_map_key_ref {
        return config_map_key(src, &k.name, &k.key, k.optional.unwrap_or(false));
    }
    if let Some(k) = &from.secret_key_ref {
        return secret_key(src, &k.name, &k.key, k.optional.unwrap_or(false));
    }
    Err(Error::UnsupportedField(format!("env {}", var.name)))
}

/// The container's environment, in definition order, last definition winning.
pub fn container_env(pod: &Pod, container: &Container, src: &EnvSources) -> Result<Vec<(String, String)>> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in &src.service_env {
        set(&mut vars, k.clone(), v.clone());
    }
    for from in container.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match src.config_maps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.clone().unwrap_or_default() {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => {
                    return Err(Error::MissingObject {
                        kind: "ConfigMap",
                        name: r.name.clone(),
                    });
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            match src.secrets.get(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.clone().unwrap_or_default() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => {
                    return Err(Error::MissingObject {
                        kind: "Secret",
                        name: r.name.clone(),
                    });
                }
            }
        }
    }
    for var in container.env.clone().unwrap_or_default() {
        if let Some(v) = env_var_value(pod, container, &var, src)? {
            let v = if var.value_from.is_none() { expand(&v, &vars) } else { v };
            set(&mut vars, var.name.clone(), v);
        }
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect())
}

/// argv for the container: the image's binary stands for the image
/// entrypoint. With `command` set, a first word naming the image's binary
/// (by basename) runs that binary; any other first word (`sh`, `/bin/true`)
/// runs as written from the host's filesystem, which the pod sees.
/// Returns (program, argv including argv[0]).
pub fn container_argv(
    container: &Container,
    image_binary: &std::path::Path,
    env: &[(String, String)],
) -> Result<(std::path::PathBuf, Vec<String>)> {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let command: Vec<String> = container
        .command
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &vars))
        .collect();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &vars))
        .collect();
    let image_name = image_binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(first) = command.first() else {
        let mut argv = vec![image_binary.display().to_string()];
        argv.extend(args);
        return Ok((image_binary.to_path_buf(), argv));
    };
    let first_base = first.rsplit('/').next().unwrap_or(first);
    let program = if first_base == image_name {
        image_binary.to_path_buf()
    } else if first.contains('/') {
        std::path::PathBuf::from(first)
    } else {
        let path = vars.get("PATH").cloned().unwrap_or_else(|| DEFAULT_PATH.to_string());
        path.split(':')
            .map(|d| std::path::Path::new(d).join(first))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::BadContainer {
                container: container.name.clone(),
                reason: format!("command {first:?} is neither the image's binary ({image_name}) nor found in PATH"),
            })?
    };
    let mut argv = command;
    argv.extend(args);
    Ok((program, argv))
}

/// PATH given to containers that set none (what images usually have).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "ns1", "uid": "u-1", "labels": {"app": "db"}},
            "spec": {"nodeName": "n1", "containers": []}
        }))
        .unwrap()
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn expands_like_the_kubelet() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A).$(B)-$$(A)-$", &vars), "x.$(B)-$(A)-$");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("é$(A)", &vars), "éx");
    }

    #[test]
    fn downward_api_config_maps_secrets_and_order() {
        let c = container(json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "ADV", "value": "$(POD_NAME).svc.$(POD_NAMESPACE)"},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "CM_k", "value": "override"}
            ]
        }));
        let mut src = EnvSources {
            pod_ip: "10.200.0.2".into(),
            node_cpu: 16,
            ..Default::default()
        };
        src.config_maps.insert(
            "cm".into(),
            serde_json::from_value(json!({"data": {"k": "v", "j": "w"}})).unwrap(),
        );
        src.secrets.insert(
            "s".into(),
            serde_json::from_value(json!({"data": {"pw": "aHVudGVyMg=="}})).unwrap(),
        );
        src.service_env = vec![("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into())];
        let env: BTreeMap<_, _> = container_env(&pod(), &c, &src).unwrap().into_iter().collect();
        assert_eq!(env["POD_NAME"], "db-0");
        assert_eq!(env["POD_NAMESPACE"], "ns1");
        assert_eq!(env["POD_IP"], "10.200.0.2");
        assert_eq!(env["APP"], "db");
        assert_eq!(env["ADV"], "db-0.svc.ns1");
        assert_eq!(env["PW"], "hunter2");
        assert_eq!(env["CPU"], "16");
        assert_eq!(env["CM_k"], "override");
        assert_eq!(env["CM_j"], "w");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    }

    #[test]
    fn missing_references_fail_unless_optional() {
        let c = container(json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}));
        assert!(matches!(
            container_env(&pod(), &c, &EnvSources::default()),
            Err(Error::MissingObject { .. })
        ));
        let c = container(json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}]}));
        assert!(container_env(&pod(), &c, &EnvSources::default()).unwrap().is_empty());
    }

    #[test]
    fn service_links_follow_the_kubelet_names() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "my-svc"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}),
        )
        .unwrap();
        let env: BTreeMap<_, _> = service_links(&[svc, headless]).into_iter().collect();
        assert_eq!(env["MY_SVC_SERVICE_HOST"], "10.96.3.4");
        assert_eq!(env["MY_SVC_SERVICE_PORT"], "80");
        assert_eq!(env["MY_SVC_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["MY_SVC_PORT"], "tcp://10.96.3.4:80");
        assert_eq!(env["MY_SVC_PORT_80_TCP_ADDR"], "10.96.3.4");
        assert!(!env.keys().any(|k| k.starts_with("H_")));
    }

    #[test]
    fn argv_maps_the_image_binary() {
        let bin = std::path::Path::new("/b/raftkv-node");
        let env = vec![("POD_NAME".to_string(), "db-0".to_string())];
        let c = container(json!({"name": "c", "args": ["--x", "$(POD_NAME)"]}));
        assert_eq!(
            container_argv(&c, bin, &env).unwrap(),
            (
                bin.to_path_buf(),
                vec!["/b/raftkv-node".into(), "--x".into(), "db-0".into()]
            )
        );
        let c = container(json!({"name": "c", "command": ["/usr/local/bin/raftkv-node", "--a"], "args": ["--b"]}));
        let (p, argv) = container_argv(&c, bin, &env).unwrap();
        assert_eq!(p, bin);
        assert_eq!(argv, vec!["/usr/local/bin/raftkv-node", "--a", "--b"]);
        let c = container(json!({"name": "c", "command": ["sh", "-c", "exit 0"]}));
        let (p, _) = container_argv(&c, bin, &env).unwrap();
        assert!(p.ends_with("sh"), "{p:?}");
        let c = container(json!({"name": "c", "command": ["no-such-binary-anywhere"]}));
        assert!(container_argv(&c, bin, &env).is_err());
    }
}
