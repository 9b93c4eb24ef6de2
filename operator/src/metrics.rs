//! Operator metrics (`raftkv_operator_*`) and the HTTP endpoints that serve
//! them: `/metrics` (Prometheus text) and `/healthz`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub errors: IntCounterVec,
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounter::new("raftkv_operator_reconciles_total", "Reconciles started")
            .expect("static metric definition");
        let errors = IntCounterVec::new(
            Opts::new(
                "raftkv_operator_reconcile_errors_total",
                "Reconciles that failed, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let duration = Histogram::with_opts(
            HistogramOpts::new("raftkv_operator_reconcile_duration_seconds", "Time one reconcile took")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("static metric definition");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
        ] {
            registry.register(c).expect("each metric is registered once");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown`. Returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Metrics, shutdown: CancellationToken) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::MetricsBind(addr.to_string(), e.to_string()))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::MetricsBind(addr.to_string(), e.to_string()))?;
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }));
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let m = Metrics::new();
        m.reconciles.inc();
        m.errors.with_label_values(&["node"]).inc();
        m.duration.observe(0.2);
        let stop = CancellationToken::new();
        let addr = serve("127.0.0.1:0".parse().expect("addr"), m, stop.clone())
            .await
            .expect("serve");
        let body = get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("raftkv_operator_reconciles_total 1"), "{body}");
        assert!(
            body.contains("raftkv_operator_reconcile_errors_total{reason=\"node\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("raftkv_operator_reconcile_duration_seconds_count 1"),
            "{body}"
        );
        assert!(get(addr, "/healthz").await.ends_with("ok"));
        stop.cancel();
    }
}
