//! Pod status as the kubelet reports it, computed from what the runner
//! observed (pure): container states → container statuses, phase and
//! conditions; probe results → probe state; restarts → back-off.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What one container is doing now.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: Timestamp },
    Terminated(Exit),
}

/// How a container run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

impl Exit {
    /// The kubelet's reason: `Completed` for 0, `Error` otherwise.
    pub fn reason(&self) -> &'static str {
        if self.exit_code == 0 { "Completed" } else { "Error" }
    }
}

/// The runner's view of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    pub state: RunState,
    pub last_exit: Option<Exit>,
}

fn terminated(e: &Exit) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: e.exit_code,
        signal: e.signal,
        reason: Some(e.reason().to_string()),
        started_at: Some(Time(e.started_at)),
        finished_at: Some(Time(e.finished_at)),
        ..Default::default()
    }
}

/// One `containerStatuses` entry.
pub fn container_status(v: &ContainerView) -> ContainerStatus {
    let state = match &v.state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated(e) => ContainerState {
            terminated: Some(terminated(e)),
            ..Default::default()
        },
    };
    let last_state = v.last_exit.as_ref().map(|e| ContainerState {
        terminated: Some(terminated(e)),
        ..Default::default()
    });
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: v.image_id.clone(),
        container_id: None,
        ready: v.ready,
        started: Some(v.started),
        restart_count: v.restart_count,
        state: Some(state),
        last_state,
        ..Default::default()
    }
}

/// The pod phase from its containers and restart policy.
pub fn phase(restart_policy: &str, containers: &[ContainerView]) -> &'static str {
    let running = containers.iter().any(|c| matches!(c.state, RunState::Running { .. }));
    let exits: Vec<&Exit> = containers
        .iter()
        .filter_map(|c| {
            if let RunState::Terminated(e) = &c.state {
                Some(e)
            } else {
                None
            }
        })
        .collect();
    let all_terminated = !containers.is_empty() && exits.len() == containers.len();
    match restart_policy {
        "Never" | "OnFailure" if all_terminated => {
            if exits.iter().all(|e| e.exit_code == 0) {
                "Succeeded"
            } else if restart_policy == "Never" {
                "Failed"
            } else {
                "Running"
            }
        }
        _ if running => "Running",
        // Restarting containers (back-off) keep the pod Running, as the kubelet does.
        _ if containers.iter().any(|c| c.restart_count > 0 || c.last_exit.is_some()) => "Running",
        _ => "Pending",
    }
}

fn condition(prev: &[PodCondition], type_: &str, ok: bool, reason: Option<&str>, now: Timestamp) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        last_transition_time: Some(last),
        reason: if ok { None } else { reason.map(str::to_string) },
        ..Default::default()
    }
}

/// Inputs of [`pod_status`] besides the containers.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
    pub start_time: Timestamp,
    pub restart_policy: String,
}

/// The whole status the runner patches. `prev` keeps transition times stable
/// and carries the scheduler's `PodScheduled` condition over.
pub fn pod_status(
    facts: &PodFacts,
    containers: &[ContainerView],
    prev: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let prev_conds: Vec<PodCondition> = prev.and_then(|p| p.conditions.clone()).unwrap_or_default();
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let phase = phase(&facts.restart_policy, containers);
    // A finished pod is never ready.
    let ready = all_ready && phase == "Running";
    let mut conditions = vec![
        condition(&prev_conds, "PodReadyToStartContainers", true, None, now),
        condition(&prev_conds, "Initialized", true, None, now),
        condition(&prev_conds, "ContainersReady", ready, Some("ContainersNotReady"), now),
        condition(&prev_conds, "Ready", ready, Some("ContainersNotReady"), now),
    ];
    if let Some(s) = prev_conds.iter().find(|c| c.type_ == "PodScheduled") {
        conditions.push(s.clone());
    }
    PodStatus {
        phase: Some(phase.to_string()),
        pod_ip: Some(facts.pod_ip.clone()),
        pod_ips: Some(vec![PodIP {
            ip: facts.pod_ip.clone(),
        }]),
        host_ip: Some(facts.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: facts.host_ip.clone(),
        }]),
        start_time: Some(Time(facts.start_time)),
        conditions: Some(conditions),
        container_statuses: Some(containers.iter().map(container_status).collect()),
        qos_class: prev.and_then(|p| p.qos_class.clone()),
        ..Default::default()
    }
}

/// Consecutive-result bookkeeping of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    /// The probe's current verdict.
    pub ok: bool,
    successes: i32,
    failures: i32,
}

impl ProbeState {
    /// Readiness and startup start failed; liveness starts succeeded (as in the kubelet).
    pub fn new(initially_ok: bool) -> Self {
        ProbeState {
            ok: initially_ok,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result; the verdict flips after `success_threshold`
    /// consecutive successes or `failure_threshold` consecutive failures.
    /// Returns whether the verdict changed.
    pub fn record(&mut self, ok: bool, success_threshold: i32, failure_threshold: i32) -> bool {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let before = self.ok;
        if ok && self.successes >= success_threshold.max(1) {
            self.ok = true;
        } else if !ok && self.failures >= failure_threshold.max(1) {
            self.ok = false;
        }
        before != self.ok
    }
}

/// Restart delay after `restarts` earlier restarts: base, doubling, capped.
pub fn backoff(restarts: i32, base: Duration, max: Duration) -> Duration {
    let shift = restarts.clamp(0, 20) as u32;
    base.checked_mul(1u32 << shift).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn view(state: RunState, ready: bool, restarts: i32) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "raftkv/e2e-echo:1".into(),
            image_id: "file:///bin".into(),
            restart_count: restarts,
            ready,
            started: matches!(state, RunState::Running { .. }),
            state,
            last_exit: None,
        }
    }

    fn exit(code: i32) -> Exit {
        Exit {
            exit_code: code,
            signal: None,
            started_at: ts(1),
            finished_at: ts(2),
        }
    }

    #[test]
    fn phases() {
        let running = view(RunState::Running { started_at: ts(1) }, true, 0);
        let waiting = view(
            RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            false,
            0,
        );
        assert_eq!(phase("Always", std::slice::from_ref(&running)), "Running");
        assert_eq!(phase("Always", std::slice::from_ref(&waiting)), "Pending");
        let backoff = view(
            RunState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            },
            false,
            2,
        );
        assert_eq!(phase("Always", &[backoff]), "Running");
        assert_eq!(
            phase("Never", &[view(RunState::Terminated(exit(0)), false, 0)]),
            "Succeeded"
        );
        assert_eq!(
            phase("Never", &[view(RunState::Terminated(exit(3)), false, 0)]),
            "Failed"
        );
        assert_eq!(
            phase("OnFailure", &[view(RunState::Terminated(exit(0)), false, 0)]),
            "Succeeded"
        );
    }

    #[test]
    fn conditions_follow_readiness_and_keep_transition_times() {
        let facts = PodFacts {
            pod_ip: "10.200.0.2".into(),
            host_ip: "10.200.255.1".into(),
            start_time: ts(0),
            restart_policy: "Always".into(),
        };
        let not_ready = [view(RunState::Running { started_at: ts(1) }, false, 0)];
        let s1 = pod_status(&facts, &not_ready, None, ts(10));
        let cond = |s: &PodStatus, t: &str| {
            s.conditions
                .clone()
                .unwrap()
                .into_iter()
                .find(|c| c.type_ == t)
                .unwrap()
        };
        assert_eq!(cond(&s1, "Ready").status, "False");
        assert_eq!(cond(&s1, "Ready").reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(s1.phase.as_deref(), Some("Running"));
        assert_eq!(s1.pod_ip.as_deref(), Some("10.200.0.2"));
        let ready = [view(RunState::Running { started_at: ts(1) }, true, 0)];
        let s2 = pod_status(&facts, &ready, Some(&s1), ts(20));
        assert_eq!(cond(&s2, "Ready").status, "True");
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(Time(ts(20))));
        assert_eq!(cond(&s2, "Initialized").last_transition_time, Some(Time(ts(10))));
        let s3 = pod_status(&facts, &ready, Some(&s2), ts(30));
        assert_eq!(cond(&s3, "Ready").last_transition_time, Some(Time(ts(20))));
    }

    #[test]
    fn container_status_reports_restarts_and_last_state() {
        let mut v = view(
            RunState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            },
            false,
            3,
        );
        v.last_exit = Some(exit(7));
        let s = container_status(&v);
        assert_eq!(s.restart_count, 3);
        assert_eq!(s.last_state.unwrap().terminated.unwrap().exit_code, 7);
        assert_eq!(
            s.state.unwrap().waiting.unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
    }

    #[test]
    fn probe_thresholds() {
        let mut p = ProbeState::new(false);
        assert!(!p.record(false, 1, 3));
        assert!(p.record(true, 1, 3));
        assert!(p.ok);
        assert!(!p.record(false, 1, 3));
        assert!(!p.record(false, 1, 3));
        assert!(p.record(false, 1, 3));
        assert!(!p.ok);
        assert!(!p.record(true, 2, 3));
        assert!(p.record(true, 2, 3));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(2);
        let m = Duration::from_secs(60);
        assert_eq!(backoff(0, b, m), Duration::from_secs(2));
        assert_eq!(backoff(3, b, m), Duration::from_secs(16));
        assert_eq!(backoff(10, b, m), m);
        assert_eq!(backoff(1000, b, m), m);
    }
}
