//! HTTP on the metrics port: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive and its storage answers), `/readyz` (serving: joined and
//! able to route client requests; being caught up is reported separately in
//! admin status).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::host::Host;
use crate::metrics::METRICS;

pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/metrics", get(|| async { METRICS.render() }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(host)
}

async fn healthz(State(host): State<Arc<Host>>) -> (StatusCode, String) {
    match host.engine.node_record(raftkv_core::keys::node_tag::JOINED) {
        Ok(_) => (StatusCode::OK, "ok\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage error: {e}\n")),
    }
}

async fn readyz(State(host): State<Arc<Host>>) -> (StatusCode, String) {
    if host.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
    } else if host.cluster_id().is_none() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not joined: waiting to be bootstrapped or added\n".into(),
        )
    } else if host.is_ready() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no cluster map yet\n".into())
    }
}
