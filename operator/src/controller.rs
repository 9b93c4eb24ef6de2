//! The reconcile loop: observe → validate + plan (pure) → apply → status.
//!
//! ```text
//! KVCluster / owned objects change ──► reconcile(kvc)
//!   observe::observe     Kubernetes objects + every node's NodeStatus (+ ClusterMap)
//!   planner::plan        the next safe step (pure)
//!   apply_workloads      SSA Services, StatefulSet, PDB (owner refs, field manager raftkv-operator)
//!   status::build        members, shards, conditions, operation → patch_status
//!   execute(step)        one admin call or one pod deletion, with an Event
//! ```
//!
//! Status (with `status.operation`) is written *before* the step runs, so an
//! operator that dies mid-step finds the operation recorded and resumes it.
//! Requeue: a step in flight → soon; waiting → a few seconds; blocked or
//! invalid spec → long (a spec change triggers a reconcile anyway, so there
//! is no hot loop); API/node failures → exponential backoff per object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::crd::{KVCluster, KVClusterStatus};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe::{Observation, observe};
use crate::planner::{Action, Move, Plan, Step, plan};
use crate::resources::{self, MANAGER};
use crate::{nodes, status};

pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Consecutive failures per cluster, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<KVCluster>, u32>>,
}

impl Context {
    pub fn new(client: kube::Client, config: Config, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: config.instance.clone(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            failures: Mutex::default(),
        }
    }
}

const STEP_REQUEUE: Duration = Duration::from_secs(2);
const WAIT_REQUEUE: Duration = Duration::from_secs(5);
const IDLE_REQUEUE: Duration = Duration::from_secs(30);
const BLOCKED_REQUEUE: Duration = Duration::from_secs(60);

/// Runs the controller until `shutdown`.
pub async fn run_controller(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let (kvcs, pods, sts, svcs, pdbs) = match &ctx.config.namespace {
        Some(ns) => (
            Api::<KVCluster>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<KVCluster>::all(client.clone()),
            Api::<Pod>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
            Api::<Service>::all(client.clone()),
            Api::<PodDisruptionBudget>::all(client.clone()),
        ),
    };
    let managed = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let node_pods = watcher::Config::default().labels("app.kubernetes.io/name=raftkv,app.kubernetes.io/component=node");
    Controller::new(kvcs, watcher::Config::default())
        .owns(sts, managed.clone())
        .owns(svcs, managed.clone())
        .owns(pdbs, managed)
        // Pods are owned by the StatefulSet, not by us: map them back through the instance label.
        .watches(pods, node_pods, |pod: Pod| {
            let ns = pod.namespace()?;
            let name = pod.labels().get("app.kubernetes.io/instance")?.clone();
            Some(ObjectRef::<KVCluster>::new(&name).within(&ns))
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn error_policy(kvc: Arc<KVCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.errors.with_label_values(&[error.metric_label()]).inc();
    if error.is_permanent() {
        tracing::warn!(cluster = %kvc.name_any(), %error, "reconcile failed; waiting for a spec change");
        return Requeue::requeue(Duration::from_secs(300));
    }
    if matches!(error, Error::Refused { .. }) {
        // A node's safety gate said "not yet" (e.g. a learner still catching up): ask again soon, without backoff.
        tracing::info!(cluster = %kvc.name_any(), %error, "step refused by the node; retrying");
        return Requeue::requeue(WAIT_REQUEUE);
    }
    let n = {
        let mut f = ctx.failures.lock().expect("failure map lock is never poisoned");
        let n = f.entry(ObjectRef::from(kvc.as_ref())).or_insert(0);
        *n += 1;
        *n
    };
    let delay = Duration::from_secs(1u64 << n.min(7)).min(Duration::from_secs(120));
    tracing::warn!(cluster = %kvc.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

pub async fn reconcile(kvc: Arc<KVCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciles.inc();
    let started = Instant::now();
    let result = reconcile_inner(&kvc, &ctx).await;
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("failure map lock is never poisoned")
            .remove(&ObjectRef::from(kvc.as_ref()));
    }
    result
}

async fn reconcile_inner(kvc: &KVCluster, ctx: &Context) -> Result<Requeue> {
    let name = kvc.name_any();
    let ns = kvc.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let cfg = &ctx.config;
    let observation = observe(&ctx.client, kvc, cfg.admin_address.as_ref(), &cfg.cluster_domain).await?;
    let plan = plan(&observation.observed);
    tracing::info!(cluster = %name, namespace = %ns, action = ?plan.action, "planned");

    if plan.apply_workloads {
        apply_workloads(&ctx.client, kvc, &plan, &cfg.cluster_domain).await?;
    }
    let previous = kvc.status.as_ref();
    let status = status::build(
        &observation.observed,
        &plan,
        previous,
        kvc.metadata.generation,
        resources::selector_string(kvc),
        jiff::Timestamp::now(),
    );
    if previous != Some(&status) {
        let api = Api::<KVCluster>::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "raftkv.io/v1alpha1",
                "kind": "KVCluster",
                "status": status,
            })),
        )
        .await?;
    }
    // Kubernetes aggregates Events by reason and action, not by message, so
    // each outcome has a reason of its own (`<Step>`, `<Step>Succeeded`,
    // `<Step>Failed`, `Available`, `Unavailable`).
    let available = |s: Option<&KVClusterStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == status::AVAILABLE))
            .map(|c| (c.status == "True", c.message.clone()))
    };
    if let Some((now, message)) = available(Some(&status))
        && available(previous).map(|(was, _)| was) != Some(now)
        && (now || previous.is_some())
    {
        let (type_, reason) = if now {
            (EventType::Normal, "Available")
        } else {
            (EventType::Warning, "Unavailable")
        };
        publish(ctx, kvc, type_, reason, "Observe", message).await;
    }
    let blocked_changed = |msg: &str| {
        previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == status::BLOCKED))
            .is_none_or(|c| c.status != "True" || c.message != msg)
    };
    Ok(match &plan.action {
        Action::Step(step) => {
            execute(kvc, ctx, &observation, step).await?;
            Requeue::requeue(STEP_REQUEUE)
        }
        Action::Wait { .. } => Requeue::requeue(WAIT_REQUEUE),
        Action::Idle => Requeue::requeue(IDLE_REQUEUE),
        Action::Paused => Requeue::requeue(BLOCKED_REQUEUE),
        Action::Blocked { reason, message } => {
            if blocked_changed(message) {
                publish(
                    ctx,
                    kvc,
                    EventType::Warning,
                    reason.as_str(),
                    "Blocked",
                    message.clone(),
                )
                .await;
            }
            Requeue::requeue(BLOCKED_REQUEUE)
        }
    })
}

async fn ssa<K>(client: &kube::Client, ns: &str, obj: &K) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::Serialize("object", "no name".into()))?;
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await?;
    Ok(())
}

/// Server-side apply of every owned object (idempotent; drift is corrected).
pub async fn apply_workloads(client: &kube::Client, kvc: &KVCluster, plan: &Plan, cluster_domain: &str) -> Result<()> {
    let ns = kvc.namespace().ok_or_else(|| Error::NoNamespace(kvc.name_any()))?;
    ssa(client, &ns, &resources::headless_service(kvc)).await?;
    ssa(client, &ns, &resources::client_service(kvc)).await?;
    ssa(
        client,
        &ns,
        &resources::statefulset(kvc, plan.statefulset_replicas, cluster_domain),
    )
    .await?;
    ssa(client, &ns, &resources::pod_disruption_budget(kvc)).await?;
    Ok(())
}

async fn publish(ctx: &Context, kvc: &KVCluster, type_: EventType, reason: &str, action: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &kvc.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an Event");
    }
}

/// Runs one step against the nodes (or the pod API) and records an Event for it.
async fn execute(kvc: &KVCluster, ctx: &Context, obs: &Observation, step: &Step) -> Result<()> {
    let d = &obs.observed.desired;
    let endpoint = |pod: &str| {
        obs.endpoint(pod).map(str::to_string).ok_or_else(|| Error::Node {
            call: "resolve",
            pod: pod.to_string(),
            message: "no admin address for the pod".into(),
        })
    };
    let cluster = || nodes::Cluster::new(&obs.joined_endpoints());
    let reason = format!("{:?}", step.kind());
    let note = format!("{} on {}", step.phase(), step.target());
    publish(
        ctx,
        kvc,
        EventType::Normal,
        &reason,
        &step.phase(),
        format!("starting {note}"),
    )
    .await;
    let result = match step {
        Step::Bootstrap { via, members } => {
            nodes::bootstrap(
                via,
                &endpoint(via)?,
                &obs.observed.cluster_id,
                d.shards,
                d.replication_factor,
                members,
            )
            .await
        }
        Step::AddNode { pod, member } => cluster()?.add_node(pod, member).await,
        Step::AddReplica { pod, shard, node_id } => cluster()?.add_replica(pod, *shard, *node_id).await,
        Step::PromoteReplica { pod, shard, node_id } => cluster()?.promote_replica(pod, *shard, *node_id).await,
        Step::RemoveReplica { pod, shard, node_id } => cluster()?.remove_replica(pod, *shard, *node_id).await,
        Step::ReplaceMetaVoter { pod, old, new } => cluster()?.replace_meta_voter(pod, *old, *new).await,
        Step::RemoveNode { pod, node_id } => cluster()?.remove_node(pod, *node_id).await,
        Step::Rebalance(Move::Add { pod, shard, node_id }) => cluster()?.add_replica(pod, *shard, *node_id).await,
        Step::Rebalance(Move::Promote { pod, shard, node_id }) => {
            cluster()?.promote_replica(pod, *shard, *node_id).await
        }
        Step::Rebalance(Move::Remove { pod, shard, node_id }) => cluster()?.remove_replica(pod, *shard, *node_id).await,
        Step::TransferLeader { pod, shard, to } => cluster()?.transfer_leader(pod, *shard, *to).await,
        Step::DrainLeaders { pod } => nodes::set_drain(pod, &endpoint(pod)?, true).await,
        Step::UndrainLeaders { pod } => nodes::set_drain(pod, &endpoint(pod)?, false).await,
        Step::DeletePod { pod } => {
            let ns = kvc.namespace().ok_or_else(|| Error::NoNamespace(kvc.name_any()))?;
            Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => Ok(()),
                    e => Err(e.into()),
                })
        }
    };
    match &result {
        Ok(()) => {
            publish(
                ctx,
                kvc,
                EventType::Normal,
                &format!("{reason}Succeeded"),
                &step.phase(),
                format!("done: {note}"),
            )
            .await
        }
        Err(e) => {
            publish(
                ctx,
                kvc,
                EventType::Warning,
                &format!("{reason}Failed"),
                &step.phase(),
                format!("failed: {note}: {e}"),
            )
            .await
        }
    }
    result
}
