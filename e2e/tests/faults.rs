//! The harness's fault hooks do what they say on real pods: a cut-off pod
//! neither reaches nor is reached until healed; a paused pod answers nothing
//! until resumed; a killed process is restarted by the runner; a wiped
//! volume is empty, and the pod re-created on it starts from nothing.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use raftkv_e2e::harness::{describe_pod, is_ready, restart_count};
use raftkv_e2e::{Harness, TestNamespace, skip_requested};

const T: Duration = Duration::from_secs(90);

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: f}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: f}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: f}
spec:
  serviceName: f
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: f}}
  template:
    metadata: {labels: {app: f}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: echo
          image: raftkv/e2e-echo:test
          args: ["--port", "8080", "--data-dir", "/data"]
          env:
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
          volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 1Mi}}
"#;

fn field(body: &str, key: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

/// Whether `from` can dial `to` by DNS name right now.
async fn dial(ns: &TestNamespace, from: &str, to: &str) -> anyhow::Result<Result<(), String>> {
    let target = format!("{to}.f.{}.svc.cluster.local:8080", ns.name());
    let r = ns.http_get(from, 8080, &format!("/dial?target={target}")).await?;
    Ok(if r.status == 200 { Ok(()) } else { Err(r.body) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_hooks_cut_pause_kill_and_wipe() -> anyhow::Result<()> {
    if skip_requested("fault_hooks_cut_pause_kill_and_wipe") {
        return Ok(());
    }
    let h = Harness::get().await?;
    h.run_in_namespace("faults", |ns| async move {
        ns.apply_yaml(MANIFEST).await?;
        ns.wait_for_pod_ready("f-0", T).await?;
        ns.wait_for_pod_ready("f-1", T).await?;
        ns.wait_until("f-1 reaches f-0", T, || dial(&ns, "f-1", "f-0")).await?;

        // Cut: f-1 cannot reach f-0, nor can the host; healed, both can again.
        ns.cut_network("f-0").await?;
        ensure!(
            dial(&ns, "f-1", "f-0").await?.is_err(),
            "f-1 still reaches f-0 while it is cut off"
        );
        ensure!(
            ns.http_get("f-0", 8080, "/healthz").await.is_err(),
            "the host still reaches f-0 while it is cut off"
        );
        ns.heal_network("f-0").await?;
        ns.wait_until("f-1 reaches f-0 after heal", T, || dial(&ns, "f-1", "f-0"))
            .await?;
        ensure!(
            ns.http_get("f-0", 8080, "/healthz").await?.status == 200,
            "host cannot reach healed f-0"
        );

        // Pause: the process is stopped and answers nothing; resumed, it answers.
        ns.pause_pod("f-0")?;
        let pid = ns.pod_record("f-0")?.containers[0].pid.context("no pid")?;
        ns.wait_until("f-0's process stopped (State T)", T, || async {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let state = status
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or_default()
                .to_string();
            Ok(if state.contains("(stopped)") {
                Ok(())
            } else {
                Err(state)
            })
        })
        .await?;
        ensure!(
            ns.http_get("f-0", 8080, "/healthz").await.is_err(),
            "a paused pod answered"
        );
        ns.resume_pod("f-0")?;
        ns.wait_until("f-0 answers after resume", T, || async {
            Ok(match ns.http_get("f-0", 8080, "/healthz").await {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;

        // Kill: the runner restarts the container (restartPolicy Always).
        let killed = ns.kill_pod_processes("f-0")?;
        let p = ns
            .wait_until("f-0 restarted after SIGKILL", T, || async {
                let p = ns.pod("f-0").await?;
                Ok(if restart_count(&p, "echo") >= 1 && is_ready(&p) {
                    Ok(p)
                } else {
                    Err(describe_pod(&p))
                })
            })
            .await?;
        let now = ns.pod_record("f-0")?.containers[0].pid;
        ensure!(
            now.is_some() && !killed.contains(&now.unwrap_or(0)),
            "same pid {now:?} after kill"
        );
        let last = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c[0].last_state.clone())
            .and_then(|s| s.terminated);
        ensure!(
            last.is_some_and(|t| t.exit_code == 137),
            "last state should be a SIGKILL exit (137)"
        );

        // Wipe: the volume is empty under the running pod, and a re-created pod starts from nothing.
        let before = field(&ns.http_get("f-1", 8080, "/whoami").await?.body, "id");
        ensure!(
            ns.http_get("f-1", 8080, "/write?name=marker&value=x").await?.status == 200,
            "write failed"
        );
        let dir = ns.claim_dir("data-f-1").await?;
        ensure!(dir.join("marker").exists(), "marker not in {}", dir.display());
        ns.wipe_claim("data-f-1").await?;
        ensure!(
            std::fs::read_dir(&dir)?.next().is_none(),
            "{} not empty after wipe",
            dir.display()
        );
        ensure!(
            ns.http_get("f-1", 8080, "/file?name=marker").await?.status == 404,
            "the pod still sees the marker"
        );
        let uid = ns.pod("f-1").await?.metadata.uid;
        ns.api::<Pod>().delete("f-1", &DeleteParams::default()).await?;
        ns.wait_until("f-1 re-created and Ready", T, || async {
            let p = ns.pod("f-1").await?;
            Ok(if p.metadata.uid != uid && is_ready(&p) {
                Ok(())
            } else {
                Err(describe_pod(&p))
            })
        })
        .await?;
        let after = field(&ns.http_get("f-1", 8080, "/whoami").await?.body, "id");
        ensure!(
            after.len() == 16 && after != before,
            "id after wipe: {after:?} (before {before:?})"
        );
        Ok(())
    })
    .await
}
