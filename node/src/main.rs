//! `raftkv-node`: parse flags, set up logging, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use raftkv_node::NodeConfig;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = NodeConfig::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("RAFTKV_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
    if config.log_json {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
            signal_stop.cancel();
        });
        raftkv_node::run(config, stop).await
    });
    // Drop every task (and with them the last handles on the storage engine)
    // before returning: RocksDB must close before the process exits.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "raftkv-node failed");
            eprintln!("raftkv-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
