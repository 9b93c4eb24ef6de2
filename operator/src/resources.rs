//! The Kubernetes objects a `KVCluster` owns, built as pure functions of the
//! resource (applied with server-side apply by the controller):
//!
//! - `<name>-nodes`: headless Service, `publishNotReadyAddresses` so unjoined
//!   nodes resolve before bootstrap; gives each pod its stable DNS name.
//! - `<name>`: client Service (port 2379).
//! - `<name>`: StatefulSet, `Parallel` (bootstrap never waits on readiness),
//!   `OnDelete` (the operator restarts pods itself, after moving leaders off).
//! - `<name>`: PodDisruptionBudget, one node at a time, `IfHealthyBudget`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::KVCluster;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub const ADMIN_PORT: u16 = 2381;
pub const HTTP_PORT: u16 = 8080;
/// Name of the node container in every pod.
pub const CONTAINER: &str = "node";
/// Where the `data` volume is mounted.
pub const DATA_DIR: &str = "/var/lib/raftkv";
/// The node binary inside the image (the operator always sets the command).
pub const NODE_COMMAND: &str = "raftkv-node";
pub const MANAGER: &str = "raftkv-operator";
const DEFAULT_GRACE_SECONDS: i64 = 30;

pub fn headless_name(kvc: &KVCluster) -> String {
    format!("{}-nodes", kvc.name_any())
}

/// `<pod>.<headless>.<ns>.svc.<domain>`: the name a node advertises.
pub fn pod_host(kvc: &KVCluster, pod: &str, cluster_domain: &str) -> String {
    format!(
        "{pod}.{}.{}.svc.{cluster_domain}",
        headless_name(kvc),
        kvc.namespace().unwrap_or_default()
    )
}

/// Labels that select a cluster's node pods.
pub fn selector_labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "raftkv".to_string()),
        ("app.kubernetes.io/instance".to_string(), kvc.name_any()),
        ("app.kubernetes.io/component".to_string(), "node".to_string()),
    ])
}

/// The selector as a label-selector string (for `status.selector` and list calls).
pub fn selector_string(kvc: &KVCluster) -> String {
    selector_labels(kvc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(kvc);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l
}

fn meta(kvc: &KVCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: kvc.namespace(),
        labels: Some(labels(kvc)),
        owner_references: kvc.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::Int(port.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

pub fn headless_service(kvc: &KVCluster) -> Service {
    Service {
        metadata: meta(kvc, headless_name(kvc)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(kvc)),
            ports: Some(vec![
                port("client", CLIENT_PORT),
                port("peer", PEER_PORT),
                port("admin", ADMIN_PORT),
                port("http", HTTP_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn client_service(kvc: &KVCluster) -> Service {
    let svc = kvc.spec.service.clone().unwrap_or_default();
    let mut metadata = meta(kvc, kvc.name_any());
    metadata.annotations = svc.annotations;
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.map_or("ClusterIP", |t| t.as_str()).into()),
            selector: Some(selector_labels(kvc)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(HTTP_PORT.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The node StatefulSet with `replicas` pods (the planner decides the count).
pub fn statefulset(kvc: &KVCluster, replicas: u32, cluster_domain: &str) -> StatefulSet {
    let s = &kvc.spec;
    let grace = s.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    let mut pod_labels = s.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(labels(kvc));
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        env("RAFTKV_DATA_DIR", DATA_DIR),
        env("RAFTKV_LISTEN_HOST", "0.0.0.0"),
        env(
            "RAFTKV_ADVERTISE_HOST",
            format!(
                "$(POD_NAME).{}.$(POD_NAMESPACE).svc.{cluster_domain}",
                headless_name(kvc)
            ),
        ),
        env("RAFTKV_CLIENT_PORT", CLIENT_PORT.to_string()),
        env("RAFTKV_PEER_PORT", PEER_PORT.to_string()),
        env("RAFTKV_ADMIN_PORT", ADMIN_PORT.to_string()),
        env("RAFTKV_HTTP_PORT", HTTP_PORT.to_string()),
        // Leave the kubelet a margin after the node's own shutdown deadline.
        env("RAFTKV_SHUTDOWN_GRACE_SECONDS", (grace - 5).max(1).to_string()),
        env("RAFTKV_LOG_JSON", "true"),
    ];
    if let Some(level) = &s.log_level {
        env.push(self::env("RAFTKV_LOG", level.clone()));
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(kvc.image()),
        image_pull_policy: s.image_pull_policy.map(|p| p.as_str().into()),
        command: Some(vec![NODE_COMMAND.into()]),
        env: Some(env),
        ports: Some(
            [
                ("client", CLIENT_PORT),
                ("peer", PEER_PORT),
                ("admin", ADMIN_PORT),
                ("http", HTTP_PORT),
            ]
            .into_iter()
            .map(|(name, p)| ContainerPort {
                name: Some(name.into()),
                container_port: p.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect(),
        ),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: s.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(selector_labels(kvc)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), s.storage.size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(kvc, kvc.name_any()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas as i32),
            service_name: Some(headless_name(kvc)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(kvc)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: s.pod_annotations.clone(),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    affinity: s.affinity.clone(),
                    tolerations: s.tolerations.clone(),
                    topology_spread_constraints: s.topology_spread_constraints.clone(),
                    node_selector: s.node_selector.clone(),
                    priority_class_name: s.priority_class_name.clone(),
                    service_account_name: s.service_account_name.clone(),
                    image_pull_secrets: s.image_pull_secrets.clone(),
                    termination_grace_period_seconds: Some(grace),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn pod_disruption_budget(kvc: &KVCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(kvc, kvc.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(kvc)),
                ..Default::default()
            }),
            unhealthy_pod_eviction_policy: Some("IfHealthyBudget".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvc(extra: serde_json::Value) -> KVCluster {
        let mut spec = serde_json::json!({
            "replicas": 3, "shards": 8, "version": "0.3.0",
            "storage": {"size": "5Gi", "storageClassName": "fast"}
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let mut k: KVCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "raftkv.io/v1alpha1", "kind": "KVCluster",
            "metadata": {"name": "db", "namespace": "prod", "uid": "u-1"},
            "spec": spec,
        }))
        .expect("valid KVCluster");
        k.metadata.uid = Some("u-1".into());
        k
    }

    fn env_value(sts: &StatefulSet, name: &str) -> Option<String> {
        sts.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn statefulset_carries_the_spec() {
        let k = kvc(serde_json::json!({
            "image": "registry.local/kv",
            "podLabels": {"team": "a", "app.kubernetes.io/name": "mine"},
            "terminationGracePeriodSeconds": 60,
            "logLevel": "debug",
            "imagePullPolicy": "IfNotPresent",
            "priorityClassName": "db"
        }));
        let sts = statefulset(&k, 5, "example.org");
        let spec = sts.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(5), "the planner decides the count");
        let pod = spec.template.spec.as_ref().expect("pod spec");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.local/kv:0.3.0"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        assert_eq!(pod.priority_class_name.as_deref(), Some("db"));
        assert_eq!(env_value(&sts, "RAFTKV_SHUTDOWN_GRACE_SECONDS").as_deref(), Some("55"));
        assert_eq!(env_value(&sts, "RAFTKV_LOG").as_deref(), Some("debug"));
        assert_eq!(
            env_value(&sts, "RAFTKV_ADVERTISE_HOST").as_deref(),
            Some("$(POD_NAME).db-nodes.$(POD_NAMESPACE).svc.example.org")
        );
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            labels.get("app.kubernetes.io/name").map(String::as_str),
            Some("raftkv"),
            "the selector labels win"
        );
        let claim = &spec.volume_claim_templates.as_ref().expect("claims")[0];
        let claim_spec = claim.spec.as_ref().expect("claim spec");
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage")),
            Some(&k.spec.storage.size)
        );
        let owner = &sts.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
    }

    #[test]
    fn services_and_pdb() {
        let k = kvc(serde_json::json!({"service": {"type": "LoadBalancer", "annotations": {"a": "b"}}}));
        let svc = client_service(&k);
        assert_eq!(svc.spec.as_ref().and_then(|s| s.type_.as_deref()), Some("LoadBalancer"));
        assert_eq!(
            svc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("a"))
                .map(String::as_str),
            Some("b")
        );
        assert_eq!(
            pod_host(&k, "db-2", "cluster.local"),
            "db-2.db-nodes.prod.svc.cluster.local"
        );
        let pdb = pod_disruption_budget(&k).spec.expect("spec");
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            selector_string(&k),
            "app.kubernetes.io/component=node,app.kubernetes.io/instance=db,app.kubernetes.io/name=raftkv"
        );
    }
}
