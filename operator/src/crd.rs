//! The `KVCluster` custom resource (`raftkv.io/v1alpha1`), written as Rust
//! types. The YAML under `crds/` is generated from these types by the
//! `crdgen` binary (`make crds`) and a test fails when it drifts.
//!
//! Validation lives in the schema so the apiserver refuses a bad spec before
//! the operator sees it: bounds (`minimum`/`maximum`) and CEL rules with
//! messages that say what to change. The operator checks the same rules again
//! ([`crate::planner::validate`]) because a CRD installed by hand may be older.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every raftkv resource.
pub const GROUP: &str = "raftkv.io";
/// Most nodes one cluster may have (a sanity bound, not a hard limit of the store).
pub const MAX_REPLICAS: i32 = 256;
/// Most shards: the store's own limit ([`raftkv_core::map::MAX_SHARDS`]).
pub const MAX_SHARDS: i32 = 65_536;
/// Most replicas per shard.
pub const MAX_REPLICATION_FACTOR: i32 = 7;
/// Image repository used when `spec.image` is not set.
pub const DEFAULT_IMAGE: &str = "raftkv/raftkv-node";

const _: () = assert!(MAX_SHARDS as u32 == raftkv_core::map::MAX_SHARDS);

/// A raftkv cluster: `replicas` storage nodes holding `shards` Raft groups of
/// `replicationFactor` replicas each.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "raftkv.io",
    version = "v1alpha1",
    kind = "KVCluster",
    plural = "kvclusters",
    shortname = "kvc",
    namespaced,
    status = "KVClusterStatus",
    derive = "PartialEq",
    doc = "A sharded, strongly consistent raftkv key-value cluster managed by raftkv-operator.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    // Raw JSON: the structured `printcolumn(...)` form repeats `type_`, which clippy flags as a duplicated attribute.
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas","description":"Nodes that are joined and serving"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".spec.replicas","description":"Desired number of nodes"}"#,
    printcolumn = r#"{"name":"Shards","type":"integer","jsonPath":".spec.shards"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.currentVersion","description":"Version every node runs"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.replicas >= self.replicationFactor").message(
    "spec.replicas must be at least spec.replicationFactor: every shard keeps replicationFactor replicas on distinct nodes"
))]
#[serde(rename_all = "camelCase")]
pub struct KVClusterSpec {
    /// Number of storage nodes (pods).
    #[schemars(range(min = 1, max = 256))]
    pub replicas: i32,

    /// Number of shards the keyspace is split into. Fixed when the cluster is created.
    #[schemars(range(min = 1, max = 65536))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.shards cannot be changed after creation: keys are placed by hashing them over the shard count"
    ))]
    pub shards: i32,

    /// Replicas per shard (Raft voters). Odd, so a majority survives the most failures. Fixed at creation.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(
        validation = Rule::new("self % 2 == 1").message(
            "spec.replicationFactor must be odd (1, 3, 5 or 7): an even count tolerates no more failures than one fewer"
        ),
        validation = Rule::new("self == oldSelf").message(
            "spec.replicationFactor cannot be changed after creation (not supported yet)"
        )
    )]
    pub replication_factor: i32,

    /// Node version: the image tag of `raftkv/raftkv-node` (or of `spec.image`).
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_][A-Za-z0-9_.-]*$')").message(
        "spec.version must be an image tag such as 0.1.0"
    ))]
    pub version: String,

    /// Image repository override (default `raftkv/raftkv-node`); the tag is always `spec.version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// CPU and memory of each node's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Each node's persistent volume.
    pub storage: StorageSpec,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Added to every node pod (the operator's own labels win on a clash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// How long a node gets to hand off leadership and flush on shutdown (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,

    /// The client Service (port 2379).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ClientServiceSpec>,

    /// Node log filter (`RAFTKV_LOG`), e.g. `info` or `info,raftkv_node=debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// While true the operator changes nothing (no Kubernetes objects, no membership); status is still reported.
    #[serde(default)]
    pub paused: bool,
}

fn default_replication_factor() -> i32 {
    3
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Volume claim of each node. Immutable: a StatefulSet's volume claim templates cannot change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self == oldSelf").message(
    "spec.storage cannot be changed after creation (StatefulSet volume claims are immutable)"
))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, e.g. `10Gi`.
    pub size: Quantity,
    /// Storage class of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientServiceSpec {
    /// Type of the client Service (default ClusterIP).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator observed and is doing. Rebuilt from observation on every
/// reconcile (never trusted as a source of truth) except `operation`, which
/// tells a restarted operator which membership change it was in the middle of.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Available`, `Progressing`, `Degraded`, `Blocked`, `Paused`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The cluster id given at bootstrap (the KVCluster's uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// One entry per node pod.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardSummary>,
    /// The version every node runs; unset while they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The membership change in progress (one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// Node pods that exist (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Nodes that are joined and serving.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the node pods (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Waiting for pods to start.
    Pending,
    /// Pods are up; the cluster is being bootstrapped.
    Bootstrapping,
    /// Every shard has a leader and full replication.
    Running,
    /// A membership change or upgrade is in progress.
    Reconciling,
    /// Serving, but some shard is under-replicated or leaderless.
    Degraded,
    /// The operator refuses to continue; see the `Blocked` condition.
    Blocked,
    /// `spec.paused` is true.
    Paused,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub pod: String,
    /// Raft node id the pod reports (unset while unreachable). Changes when a pod lost its volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Node ids are at most i64::MAX (node/src/identity.rs), so they are
    // published as int64, the integer format Kubernetes knows.
    #[schemars(with = "Option<i64>")]
    pub node_id: Option<u64>,
    /// `host:port` of the node's client API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Joined and serving.
    pub ready: bool,
    pub joined: bool,
    /// Refuses leadership (a persistent drain mark).
    #[serde(default)]
    pub draining: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Shard replicas this node hosts.
    pub replicas: i32,
    /// Shards this node leads.
    pub leaders: i32,
    /// Why the node could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardSummary {
    pub total: i32,
    /// `replicationFactor` voters on live nodes and no learners.
    pub fully_replicated: i32,
    pub under_replicated: i32,
    /// No node reports a leader.
    pub leaderless: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub kind: OperationKind,
    /// The pod (and node ids) the operation is about.
    pub target: String,
    /// The step being taken now.
    pub phase: String,
    pub started_at: String,
    pub last_progress_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationKind {
    Bootstrap,
    AddNode,
    ReplaceMember,
    Upgrade,
    /// Replicas or leaders moved to even out the nodes (after scale-up).
    Rebalance,
}

impl KVCluster {
    /// Repository and tag of the node image.
    pub fn image(&self) -> String {
        format!(
            "{}:{}",
            self.spec.image.as_deref().unwrap_or(DEFAULT_IMAGE),
            self.spec.version
        )
    }
}

/// The CRD as the YAML checked in under `crds/`.
pub fn crd_yaml() -> Result<String, crate::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&KVCluster::crd()).map_err(|e| crate::Error::Serialize("CRD", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_names_and_subresources() {
        let crd = KVCluster::crd();
        assert_eq!(crd.spec.group, "raftkv.io");
        assert_eq!(crd.spec.names.plural, "kvclusters");
        assert_eq!(crd.spec.names.kind, "KVCluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["kvc".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        let sub = v.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        let cols: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .expect("printer columns")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Ready", "Nodes", "Shards", "Version", "Phase", "Age"]);
        let json = serde_json::to_string(&crd).expect("serialize");
        assert!(json.contains("self.replicas >= self.replicationFactor"));
        assert!(json.contains("spec.shards cannot be changed after creation"));
    }

    #[test]
    fn checked_in_crd_matches_the_types() {
        // Compiled in, so the test checks the checkout it was built from
        // (build caches are shared between checkouts).
        let on_disk = include_str!("../../crds/raftkv.io_kvclusters.yaml");
        let generated = crd_yaml().expect("the CRD serializes");
        assert!(
            on_disk == generated,
            "crds/raftkv.io_kvclusters.yaml is out of date with the KVCluster types: run `make crds` and commit it"
        );
    }

    #[test]
    fn image_uses_override_and_version() {
        let mut c = KVCluster::new(
            "a",
            serde_json::from_value(serde_json::json!({
                "replicas": 3, "shards": 8, "version": "1.2.3", "storage": {"size": "1Gi"}
            }))
            .expect("spec"),
        );
        assert_eq!(c.spec.replication_factor, 3);
        assert_eq!(c.image(), "raftkv/raftkv-node:1.2.3");
        c.spec.image = Some("registry.local/kv".into());
        assert_eq!(c.image(), "registry.local/kv:1.2.3");
    }
}
