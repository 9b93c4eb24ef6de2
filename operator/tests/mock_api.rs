//! The apply path against a tower-test mock of the Kubernetes API (the
//! kube-rs controller-rs `fixtures.rs` pattern): fast, unit-level proof of
//! exactly which requests `apply_workloads` sends — server-side apply with
//! the `raftkv-operator` field manager and `force`, in a fixed order, each
//! object owned by the KVCluster. The real-apiserver tests prove the same
//! objects are accepted.

use http::{Request, Response};
use kube::client::Body;
use raftkv_operator::controller::apply_workloads;
use raftkv_operator::crd::KVCluster;
use raftkv_operator::planner::{Action, Plan};

fn kvc() -> anyhow::Result<KVCluster> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": "db", "namespace": "prod", "uid": "uid-7"},
        "spec": {"replicas": 3, "shards": 8, "version": "0.1.0", "storage": {"size": "1Gi"}},
    }))?)
}

#[tokio::test]
async fn apply_sends_one_forced_server_side_apply_per_owned_object() -> anyhow::Result<()> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let expected = [
            "/api/v1/namespaces/prod/services/db-nodes",
            "/api/v1/namespaces/prod/services/db",
            "/apis/apps/v1/namespaces/prod/statefulsets/db",
            "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/db",
        ];
        let mut bodies = Vec::new();
        for path in expected {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(request.uri().path(), path);
            let query = request.uri().query().unwrap_or_default().to_string();
            assert!(
                query.contains("fieldManager=raftkv-operator") && query.contains("force=true"),
                "{query}"
            );
            assert_eq!(
                request.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()),
                Some(&b"application/apply-patch+yaml"[..])
            );
            let body = request.into_body().collect_bytes().await.expect("body");
            let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
            // The apiserver answers an apply with the object; echo it.
            send.send_response(Response::builder().body(Body::from(body.to_vec())).expect("response"));
            bodies.push(json);
        }
        bodies
    });
    let plan = Plan {
        apply_workloads: true,
        statefulset_replicas: 4,
        action: Action::Idle,
    };
    apply_workloads(&client, &kvc()?, &plan, "cluster.local").await?;
    let bodies = server.await?;
    for b in &bodies {
        let owner = &b["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], "uid-7", "{b}");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["kind"], "KVCluster");
        assert!(
            b["apiVersion"].is_string() && b["kind"].is_string(),
            "SSA needs the type: {b}"
        );
    }
    assert_eq!(bodies[2]["kind"], "StatefulSet");
    assert_eq!(bodies[2]["spec"]["replicas"], 4, "the plan's count, not the spec's");
    assert_eq!(bodies[2]["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(bodies[0]["spec"]["publishNotReadyAddresses"], true);
    Ok(())
}
