//! Observe: read the Kubernetes objects of one `KVCluster` and ask every node
//! pod for its admin status, producing the [`Observed`] snapshot the planner
//! works from. Read-only.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::crd::KVCluster;
use crate::error::{Error, Result};
use crate::model::{Desired, NodeObs, Observed, PodObs};
use crate::nodes::{self, AdminAddress};
use crate::resources::{CONTAINER, pod_host, selector_string};

/// A node pod and where its admin API answers.
pub struct PodHandle {
    pub name: String,
    pub endpoint: Option<String>,
}

pub struct Observation {
    pub observed: Observed,
    /// Admin endpoints by pod name, for the apply step.
    pub endpoints: Vec<PodHandle>,
}

impl Observation {
    pub fn endpoint(&self, pod: &str) -> Option<&str> {
        self.endpoints
            .iter()
            .find(|h| h.name == pod)
            .and_then(|h| h.endpoint.as_deref())
    }

    /// Endpoints of the nodes joined to this cluster (for cluster-wide calls).
    pub fn joined_endpoints(&self) -> Vec<String> {
        self.observed
            .joined()
            .filter_map(|(p, _)| self.endpoint(&p.name).map(str::to_string))
            .collect()
    }
}

pub fn desired(kvc: &KVCluster) -> Desired {
    let s = &kvc.spec;
    Desired {
        replicas: u32::try_from(s.replicas).unwrap_or(0),
        shards: u32::try_from(s.shards).unwrap_or(0),
        replication_factor: u32::try_from(s.replication_factor).unwrap_or(0),
        image: kvc.image(),
        paused: s.paused,
    }
}

/// `<name>-<ordinal>` → ordinal, for pods of StatefulSet `sts`.
fn ordinal(sts: &str, pod: &str) -> Option<u32> {
    pod.strip_prefix(sts)?.strip_prefix('-')?.parse().ok()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_image(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)?
        .image
        .clone()
}

pub async fn observe(
    client: &kube::Client,
    kvc: &KVCluster,
    address: &dyn AdminAddress,
    cluster_domain: &str,
) -> Result<Observation> {
    let name = kvc.name_any();
    let ns = kvc.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let uid = kvc.uid().ok_or_else(|| Error::NoUid(name.clone()))?;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&selector_string(kvc)))
        .await?;
    let mut pods: Vec<(u32, Pod)> = pods
        .items
        .into_iter()
        .filter_map(|p| ordinal(&name, &p.name_any()).map(|o| (o, p)))
        .collect();
    pods.sort_by_key(|(o, _)| *o);

    let asked = futures::future::join_all(pods.iter().map(|(_, p)| async {
        let pod = p.name_any();
        let endpoint = address.admin_endpoint(kvc, p);
        let node = match &endpoint {
            None => NodeObs::Unreachable(format!(
                "pod is {} without an address",
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Pending".into())
            )),
            Some(e) => match nodes::node_status(&pod, e).await {
                Ok(info) => NodeObs::Up(info),
                Err(err) => NodeObs::Unreachable(err.to_string()),
            },
        };
        (PodHandle { name: pod, endpoint }, node)
    }))
    .await;

    let mut endpoints = Vec::new();
    let mut obs = Vec::new();
    for ((ordinal, p), (handle, node)) in pods.iter().zip(asked) {
        obs.push(PodObs {
            name: handle.name.clone(),
            ordinal: *ordinal,
            host: pod_host(kvc, &handle.name, cluster_domain),
            image: pod_image(p),
            ready: pod_ready(p),
            terminating: p.metadata.deletion_timestamp.is_some(),
            node,
        });
        endpoints.push(handle);
    }
    let mut observed = Observed {
        cluster_id: uid,
        desired: desired(kvc),
        statefulset_replicas: sts
            .and_then(|s| s.spec.and_then(|s| s.replicas))
            .and_then(|r| u32::try_from(r).ok()),
        pods: obs,
        map: None,
        operation: kvc.status.as_ref().and_then(|s| s.operation.clone()),
    };
    let mut observation = Observation {
        observed: observed.clone(),
        endpoints,
    };
    // The map from the first joined node that serves it.
    for (pod, _) in observation.observed.joined() {
        if let Some(e) = observation.endpoint(&pod.name)
            && let Ok(map) = nodes::cluster_map(&pod.name, e).await
        {
            observed.map = Some(map);
            break;
        }
    }
    observation.observed = observed;
    Ok(observation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_only_for_the_statefulsets_pods() {
        assert_eq!(ordinal("kv", "kv-0"), Some(0));
        assert_eq!(ordinal("kv", "kv-12"), Some(12));
        assert_eq!(ordinal("kv", "kv-a"), None);
        assert_eq!(ordinal("kv", "kvx-1"), None);
        assert_eq!(ordinal("kv", "kv"), None);
    }
}
