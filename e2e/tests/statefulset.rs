//! A StatefulSet of the suite's echo binary on the real control plane: its
//! pods are real processes in their own network namespaces, resolve and
//! reach each other by cluster DNS names, sit behind a working ClusterIP
//! Service, keep their volumes across pod re-creation, talk to the
//! apiserver with their service-account token, and stop when scaled down.
//! Restarts (crash, liveness) and readiness are checked on single pods.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use raftkv_e2e::harness::{describe_pod, restart_count};
use raftkv_e2e::{Harness, TestNamespace, httpc, skip_requested};

const T: Duration = Duration::from_secs(90);

fn echo_statefulset(name: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}-svc}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config}}
data: {{greeting: hello-from-configmap}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-secret}}
stringData: {{word: swordfish}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: {name}
  replicas: {replicas}
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
        - name: echo
          image: raftkv/e2e-echo:test
          args: ["--port", "8080", "--data-dir", "/data"]
          ports: [{{name: http, containerPort: 8080}}]
          env:
            - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
            - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
            - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
            - {{name: SECRET_WORD, valueFrom: {{secretKeyRef: {{name: {name}-secret, key: word}}}}}}
            - {{name: ADVERTISE, value: "$(POD_NAME).{name}.$(POD_NAMESPACE)"}}
          envFrom:
            - {{configMapRef: {{name: {name}-config}}, prefix: CM_}}
          readinessProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 1
          livenessProbe:
            exec: {{command: ["/bin/sh", "-c", "test -s /data/id"]}}
            periodSeconds: 5
            failureThreshold: 3
          volumeMounts:
            - {{name: data, mountPath: /data}}
            # Paths that do not exist on the host: the runner must not create them there.
            - {{name: config, mountPath: /etc/raftkv-e2e-echo/config, readOnly: true}}
            - {{name: secret, mountPath: /var/run/secrets/raftkv-e2e-echo}}
      volumes:
        - {{name: config, configMap: {{name: {name}-config}}}}
        - {{name: secret, secret: {{secretName: {name}-secret}}}}
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 1Mi}}}}
"#
    )
}

/// `key=value` lines of an echo answer.
fn field(body: &str, key: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

fn exe_of(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

fn pid_of(ns: &TestNamespace, pod: &str) -> anyhow::Result<i32> {
    ns.pod_record(pod)?
        .containers
        .first()
        .and_then(|c| c.pid)
        .with_context(|| format!("pod {pod} has no process"))
}

async fn get_ok(ns: &TestNamespace, pod: &str, path: &str) -> anyhow::Result<String> {
    let r = ns.http_get(pod, 8080, path).await?;
    ensure!(r.status == 200, "GET {path} on {pod}: status {}: {}", r.status, r.body);
    Ok(r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_are_real_processes_with_dns_services_and_volumes() -> anyhow::Result<()> {
    if skip_requested("statefulset_pods_are_real_processes_with_dns_services_and_volumes") {
        return Ok(());
    }
    let h = Harness::get().await?;
    h.run_in_namespace("sts", |ns| async move {
        ns.apply_yaml(&echo_statefulset("echo", 3)).await?;
        let names = ["echo-0", "echo-1", "echo-2"];
        for p in names {
            ns.wait_for_pod_ready(p, T).await?;
        }

        // Real processes: the echo binary, in a network namespace of its own.
        let own_netns = std::fs::read_link("/proc/self/ns/net")?;
        for p in names {
            let pid = pid_of(&ns, p)?;
            let exe = exe_of(pid).with_context(|| format!("{p}: pid {pid} is not running"))?;
            ensure!(exe.ends_with("/raftkv-e2e-echo"), "{p}: pid {pid} runs {exe}");
            let netns = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
            ensure!(netns != own_netns, "{p} shares the host's network namespace");
            let pod = ns.pod(p).await?;
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            // Downward API env and hostname, as the pod sees them.
            let who = get_ok(&ns, p, "/whoami").await?;
            ensure!(field(&who, "hostname") == p, "{p} hostname: {who}");
            ensure!(
                field(&who, "pod") == p && field(&who, "namespace") == ns.name() && field(&who, "ip") == ip,
                "{p}: {who}"
            );
            ensure!(field(&who, "id").len() == 16, "{p} wrote no id to its volume: {who}");
        }

        // ConfigMap and Secret as env and as volumes at paths absent on the host.
        for (path, want) in [
            ("/env?name=SECRET_WORD", "swordfish".to_string()),
            ("/env?name=CM_greeting", "hello-from-configmap".to_string()),
            ("/env?name=ADVERTISE", format!("echo-2.echo.{}", ns.name())),
            (
                "/read?path=/etc/raftkv-e2e-echo/config/greeting",
                "hello-from-configmap".to_string(),
            ),
            (
                "/read?path=/var/run/secrets/raftkv-e2e-echo/word",
                "swordfish".to_string(),
            ),
        ] {
            let got = get_ok(&ns, "echo-2", path).await?;
            ensure!(got == want, "{path}: got {got:?}, want {want:?}");
        }
        ensure!(
            !std::path::Path::new("/etc/raftkv-e2e-echo").exists()
                && !std::path::Path::new("/run/secrets/raftkv-e2e-echo").exists(),
            "the pod's mount points were created on the host"
        );
        let w = ns
            .http_get("echo-2", 8080, "/write?name=../../etc/raftkv-e2e-echo/config/x&value=1")
            .await?;
        ensure!(w.status != 200, "a readOnly volume was writable");

        // Peers by their stable DNS names, over TCP between pod IPs.
        for from in names {
            for to in names.iter().filter(|t| **t != from) {
                let target = format!("{to}.echo.{}.svc.cluster.local:8080", ns.name());
                let body = ns
                    .wait_until(&format!("{from} reaches {target}"), T, || async {
                        let r = ns.http_get(from, 8080, &format!("/dial?target={target}")).await?;
                        Ok(if r.status == 200 { Ok(r.body) } else { Err(r.body) })
                    })
                    .await?;
                ensure!(
                    field(&body, "hostname") == *to,
                    "dial {target} from {from} reached: {body}"
                );
            }
        }

        // The ClusterIP Service: from a pod by its short and full names, and from the host.
        // (kube-proxy programs the endpoints a moment after the pods turn ready.)
        for target in [
            "echo-svc:80".to_string(),
            format!("echo-svc.{}.svc.cluster.local:80", ns.name()),
        ] {
            let body = ns
                .wait_until(&format!("echo-1 reaches Service {target}"), T, || async {
                    let r = ns.http_get("echo-1", 8080, &format!("/dial?target={target}")).await?;
                    Ok(if r.status == 200 { Ok(r.body) } else { Err(r.body) })
                })
                .await?;
            ensure!(field(&body, "hostname").starts_with("echo-"), "{target}: {body}");
        }
        let svc = ns.api::<Service>().get("echo-svc").await?;
        let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).context("no clusterIP")?;
        let addr = SocketAddr::new(cluster_ip.parse()?, 80);
        let body = ns
            .wait_until(&format!("the host reaches Service {addr}"), T, || async {
                let r = httpc::get(addr, &cluster_ip, "/whoami", Duration::from_secs(5)).await?;
                Ok(if r.status == 200 {
                    Ok(r.body)
                } else {
                    Err(format!("{r:?}"))
                })
            })
            .await?;
        ensure!(field(&body, "hostname").starts_with("echo-"), "host -> {addr}: {body}");

        // In-cluster API access with the projected service-account token.
        let me = get_ok(&ns, "echo-0", "/k8s").await?;
        ensure!(
            field(&me, "user") == format!("system:serviceaccount:{}:default", ns.name()),
            "{me}"
        );
        let sa_ns = get_ok(
            &ns,
            "echo-0",
            "/read?path=/var/run/secrets/kubernetes.io/serviceaccount/namespace",
        )
        .await?;
        ensure!(sa_ns == ns.name(), "serviceaccount/namespace: {sa_ns}");

        // Deleting a pod: SIGTERM to the old process, a new pod with the same volume.
        let old = ns.pod("echo-1").await?;
        let old_uid = old.metadata.uid.clone().unwrap_or_default();
        let old_rec = ns.pod_record("echo-1")?;
        let old_pid = pid_of(&ns, "echo-1")?;
        let old_id = field(&get_ok(&ns, "echo-1", "/whoami").await?, "id");
        ns.api::<Pod>().delete("echo-1", &DeleteParams::default()).await?;
        ns.wait_until("echo-1 re-created and Ready", T, || async {
            let p = ns.pod("echo-1").await?;
            let fresh = p.metadata.uid.as_deref() != Some(old_uid.as_str());
            Ok(if fresh && raftkv_e2e::harness::is_ready(&p) {
                Ok(())
            } else {
                Err(describe_pod(&p))
            })
        })
        .await?;
        ensure!(
            exe_of(old_pid).is_none_or(|e| !e.ends_with("/raftkv-e2e-echo")),
            "old process {old_pid} still runs"
        );
        let old_log = std::fs::read_to_string(&old_rec.containers[0].log)?;
        ensure!(
            old_log.contains("SIGTERM, exiting"),
            "old pod was not stopped by SIGTERM; its log:\n{old_log}"
        );
        let new_id = field(&get_ok(&ns, "echo-1", "/whoami").await?, "id");
        ensure!(new_id == old_id, "volume not kept: id {old_id} became {new_id}");

        // Scaling to 1 stops two processes.
        let pids: Vec<i32> = ["echo-1", "echo-2"]
            .iter()
            .map(|p| pid_of(&ns, p))
            .collect::<anyhow::Result<_>>()?;
        ns.api::<StatefulSet>()
            .patch(
                "echo",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
            )
            .await?;
        ns.wait_for_pod_gone("echo-1", T).await?;
        ns.wait_for_pod_gone("echo-2", T).await?;
        for pid in pids {
            ensure!(
                exe_of(pid).is_none_or(|e| !e.ends_with("/raftkv-e2e-echo")),
                "pid {pid} still runs after scale-down"
            );
        }
        ensure!(
            raftkv_e2e::harness::is_ready(&ns.pod("echo-0").await?),
            "echo-0 is no longer ready"
        );
        Ok(())
    })
    .await
}

fn single_pod(name: &str, args: &str, probes: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
    - name: echo
      image: raftkv/e2e-echo:test
      args: ["--port", "8080", "--data-dir", "/tmp/data"{args}]
{probes}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_and_unhealthy_containers_restart_and_readiness_is_reported() -> anyhow::Result<()> {
    if skip_requested("crashing_and_unhealthy_containers_restart_and_readiness_is_reported") {
        return Ok(());
    }
    let h = Harness::get().await?;
    h.run_in_namespace("restart", |ns| async move {
        ns.apply_yaml(&single_pod(
            "crash",
            r#", "--exit-after-ms", "300", "--exit-code", "3""#,
            "",
        ))
        .await?;
        let readiness =
            "      readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 1}";
        ns.apply_yaml(&single_pod("flaky", "", readiness)).await?;
        let liveness =
            "      livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}";
        ns.apply_yaml(&single_pod("hang", "", liveness)).await?;

        // A container that exits is restarted, with restartCount rising and its exit reported.
        let pod = ns
            .wait_until("crash restarted at least twice", T, || async {
                let p = ns.pod("crash").await?;
                Ok(if restart_count(&p, "echo") >= 2 {
                    Ok(p)
                } else {
                    Err(describe_pod(&p))
                })
            })
            .await?;
        let cs = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
        let last = cs[0]
            .last_state
            .clone()
            .and_then(|s| s.terminated)
            .context("no lastState.terminated")?;
        ensure!(last.exit_code == 3, "last exit code {}", last.exit_code);
        let log = ns.logs("crash", "echo")?;
        ensure!(log.matches("exiting with 3 as asked").count() >= 2, "crash log:\n{log}");

        // Readiness: a failing /healthz makes the pod unready without a restart.
        ns.wait_for_pod_ready("flaky", T).await?;
        get_ok(&ns, "flaky", "/fail").await?;
        ns.wait_until("flaky not Ready", T, || async {
            let p = ns.pod("flaky").await?;
            Ok(if raftkv_e2e::harness::is_ready(&p) {
                Err(describe_pod(&p))
            } else {
                Ok(())
            })
        })
        .await?;
        ensure!(
            restart_count(&ns.pod("flaky").await?, "echo") == 0,
            "readiness failure restarted the container"
        );

        // Liveness: a failing /healthz gets the container killed and restarted.
        ns.wait_for_pod_ready("hang", T).await?;
        let pid = pid_of(&ns, "hang")?;
        get_ok(&ns, "hang", "/fail").await?;
        ns.wait_until("hang restarted by its liveness probe", T, || async {
            let p = ns.pod("hang").await?;
            Ok(if restart_count(&p, "echo") >= 1 && raftkv_e2e::harness::is_ready(&p) {
                Ok(())
            } else {
                Err(describe_pod(&p))
            })
        })
        .await?;
        ensure!(pid_of(&ns, "hang")? != pid, "same process after a liveness restart");
        Ok(())
    })
    .await
}

/// A binary under /tmp (say, a target dir there) runs although the pod's
/// own /tmp is a fresh tmpfs: the runner opens it before building the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_under_tmp_runs_in_a_pod() -> anyhow::Result<()> {
    if skip_requested("a_binary_under_tmp_runs_in_a_pod") {
        return Ok(());
    }
    let h = Harness::get().await?;
    let dir = tempfile::Builder::new().prefix("raftkv-e2e-bin-").tempdir_in("/tmp")?;
    let echo = raftkv_e2e::harness::bin_dir().join("raftkv-e2e-echo");
    let copy = dir.path().join("raftkv-e2e-echo");
    std::fs::copy(&echo, &copy).with_context(|| format!("copy {}", echo.display()))?;
    let tag = format!("raftkv/e2e-echo:tmp-{:04x}", rand::random::<u16>());
    h.map_image(&tag, &copy)?;
    h.run_in_namespace("tmpbin", |ns| async move {
        ns.apply_yaml(&single_pod("tmpbin", "", "").replace("raftkv/e2e-echo:test", &tag))
            .await?;
        ns.wait_until("tmpbin to run", T, || async {
            let p = ns.pod("tmpbin").await?;
            Ok(if raftkv_e2e::harness::is_ready(&p) {
                Ok(())
            } else {
                Err(describe_pod(&p))
            })
        })
        .await?;
        let pid = pid_of(&ns, "tmpbin")?;
        let exe = exe_of(pid).unwrap_or_default();
        ensure!(exe.starts_with("/tmp/raftkv-e2e-bin-"), "pod runs {exe}");
        Ok(())
    })
    .await
}
