//! The operator in-process against a real kube-apiserver (no pod runner on
//! this branch, so pods stay Pending and no node answers): it creates the
//! owned objects with owner references, reports truthful status, honours
//! `paused`, refuses scale-down with a Warning Event, repairs drift, and
//! only one of two replicas leads. Needs the local control plane.

mod common;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use raftkv_operator::crd::{KVCluster, Phase};
use raftkv_operator::nodes::PodIp;
use raftkv_operator::{Config, LeaderElection};
use tokio_util::sync::CancellationToken;

fn config(ns: &str) -> Config {
    Config {
        namespace: Some(ns.to_string()),
        admin_address: Arc::new(PodIp),
        ..Config::new()
    }
}

fn cluster(name: &str, replicas: i32) -> anyhow::Result<KVCluster> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "shards": 2, "version": "0.1.0", "storage": {"size": "1Gi"}},
    }))?)
}

async fn merge(api: &Api<KVCluster>, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": spec})),
    )
    .await?;
    Ok(())
}

fn condition(k: &KVCluster, t: &str) -> Option<(String, String, String)> {
    k.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn operator_creates_objects_reports_status_and_honours_pause() -> anyhow::Result<()> {
    let client = common::client().await?;
    common::install_crd(&client).await?;
    let ns = common::namespace(&client, "op-run").await?;
    let shutdown = CancellationToken::new();
    let op = tokio::spawn(raftkv_operator::run(client.clone(), config(&ns), shutdown.clone()));

    let kvcs = Api::<KVCluster>::namespaced(client.clone(), &ns);
    let created = kvcs.create(&PostParams::default(), &cluster("db", 3)?).await?;
    let uid = created.uid().expect("uid");

    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let sts = common::eventually(30, "the StatefulSet", || async { Ok(sts_api.get_opt("db").await?) }).await?;
    let owner = &sts.metadata.owner_references.as_ref().expect("owner references")[0];
    assert_eq!((owner.uid.as_str(), owner.controller), (uid.as_str(), Some(true)));
    let spec = sts.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(spec.update_strategy.and_then(|u| u.type_).as_deref(), Some("OnDelete"));
    assert_eq!(spec.service_name.as_deref(), Some("db-nodes"));
    let container = &spec.template.spec.expect("pod spec").containers[0];
    assert_eq!(container.image.as_deref(), Some("raftkv/raftkv-node:0.1.0"));
    assert_eq!(container.command, Some(vec!["raftkv-node".to_string()]));
    let advertise = container
        .env
        .as_ref()
        .expect("env")
        .iter()
        .find(|e| e.name == "RAFTKV_ADVERTISE_HOST")
        .and_then(|e| e.value.clone());
    assert_eq!(
        advertise.as_deref(),
        Some("$(POD_NAME).db-nodes.$(POD_NAMESPACE).svc.cluster.local")
    );
    assert_eq!(
        spec.volume_claim_templates.expect("claims")[0].metadata.name.as_deref(),
        Some("data")
    );

    let svcs = Api::<Service>::namespaced(client.clone(), &ns);
    let headless = svcs.get("db-nodes").await?.spec.expect("spec");
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    let ports: Vec<i32> = headless.ports.expect("ports").iter().map(|p| p.port).collect();
    assert_eq!(ports, [2379, 2380, 2381, 8080]);
    let client_svc = svcs.get("db").await?.spec.expect("spec");
    assert_eq!(client_svc.type_.as_deref(), Some("ClusterIP"));
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns);
    let pdb = pdbs.get("db").await?.spec.expect("spec");
    assert_eq!(pdb.unhealthy_pod_eviction_policy.as_deref(), Some("IfHealthyBudget"));

    // The StatefulSet controller creates the pods; with no node to run them they stay
    // Pending, and status says so truthfully: not bootstrapped, waiting for the nodes.
    let k = common::eventually(60, "status naming all three pending pods", || async {
        let k = kvcs.get("db").await?;
        let members = k.status.as_ref().map_or(0, |s| s.members.len());
        Ok((members == 3).then_some(k))
    })
    .await?;
    let status = k.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.ready_replicas, 0);
    assert!(
        status.members.iter().all(|m| !m.ready
            && m.node_id.is_none()
            && m.error.as_deref().is_some_and(|e| e.contains("without an address"))),
        "{:?}",
        status.members
    );
    assert_eq!(condition(&k, "Available").map(|c| c.1), Some("NotBootstrapped".into()));
    let progressing = condition(&k, "Progressing").expect("Progressing");
    assert_eq!(progressing.1, "Bootstrapping");
    assert!(progressing.2.contains("db-0"), "{progressing:?}");
    assert_eq!(status.observed_generation, k.metadata.generation);
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/component=node,app.kubernetes.io/instance=db,app.kubernetes.io/name=raftkv")
    );

    // Drift is repaired.
    pdbs.delete("db", &DeleteParams::default()).await?;
    common::eventually(30, "the PDB to be re-created", || async {
        Ok(pdbs.get_opt("db").await?)
    })
    .await?;

    // Paused: nothing is changed, and a condition says so.
    merge(&kvcs, "db", serde_json::json!({"paused": true})).await?;
    common::eventually(30, "the Paused condition", || async {
        let k = kvcs.get("db").await?;
        Ok((condition(&k, "Paused").map(|c| c.0) == Some("True".into())
            && k.status.as_ref().and_then(|s| s.phase) == Some(Phase::Paused))
        .then_some(()))
    })
    .await?;
    svcs.delete("db", &DeleteParams::default()).await?;
    merge(&kvcs, "db", serde_json::json!({"replicas": 4})).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        svcs.get_opt("db").await?.is_none(),
        "paused: the deleted Service stays deleted"
    );
    assert_eq!(
        sts_api.get("db").await?.spec.and_then(|s| s.replicas),
        Some(3),
        "paused: no scaling"
    );
    merge(&kvcs, "db", serde_json::json!({"paused": false})).await?;
    common::eventually(
        30,
        "the Service back and the StatefulSet scaled after unpausing",
        || async {
            let scaled = sts_api.get("db").await?.spec.and_then(|s| s.replicas) == Some(4);
            Ok((scaled && svcs.get_opt("db").await?.is_some()).then_some(()))
        },
    )
    .await?;

    // Scale-down is refused with a reason, a Warning Event, and the StatefulSet kept.
    merge(&kvcs, "db", serde_json::json!({"replicas": 3})).await?;
    let k = common::eventually(30, "the Blocked condition", || async {
        let k = kvcs.get("db").await?;
        Ok((condition(&k, "Blocked").map(|c| c.0) == Some("True".into())).then_some(k))
    })
    .await?;
    let blocked = condition(&k, "Blocked").expect("Blocked");
    assert_eq!(blocked.1, "ScaleDownUnsupported");
    assert!(blocked.2.contains("set spec.replicas back to 4"), "{blocked:?}");
    assert_eq!(k.status.and_then(|s| s.phase), Some(Phase::Blocked));
    assert_eq!(sts_api.get("db").await?.spec.and_then(|s| s.replicas), Some(4));
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    common::eventually(30, "a ScaleDownUnsupported Warning Event", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("ScaleDownUnsupported")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("db")
                    && e.reporting_controller.as_deref() == Some("raftkv-operator")
            })
            .map(|_| ()))
    })
    .await?;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), op).await???;
    common::delete_namespace(&client, &ns).await;
    Ok(())
}

async fn holder(leases: &Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt("raftkv-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn two_replicas_one_leader_and_failover() -> anyhow::Result<()> {
    let client: Client = common::client().await?;
    common::install_crd(&client).await?;
    let ns = common::namespace(&client, "op-lease").await?;
    let start = |identity: &str| {
        let mut cfg = config(&ns);
        cfg.leader_election = Some(LeaderElection {
            namespace: ns.clone(),
            lease_name: "raftkv-operator".into(),
            identity: identity.into(),
            duration_seconds: 3,
        });
        let token = CancellationToken::new();
        (
            tokio::spawn(raftkv_operator::run(client.clone(), cfg, token.clone())),
            token,
        )
    };
    let (a, stop_a) = start("replica-a");
    let (b, stop_b) = start("replica-b");
    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    let first = common::eventually(30, "a lease holder", || async { holder(&leases).await }).await?;
    assert!(first == "replica-a" || first == "replica-b", "{first}");
    // The holder stays the holder while it runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(holder(&leases).await?.as_deref(), Some(first.as_str()));

    // The leader stops (releasing the lease): the other takes over.
    let (leader, leader_stop, other, other_stop) = if first == "replica-a" {
        (a, stop_a, b, stop_b)
    } else {
        (b, stop_b, a, stop_a)
    };
    leader_stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), leader).await???;
    let second = common::eventually(30, "the other replica to take the lease", || async {
        Ok(holder(&leases).await?.filter(|h| *h != first))
    })
    .await?;
    assert_ne!(second, first);
    other_stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), other).await???;
    common::delete_namespace(&client, &ns).await;
    Ok(())
}
