//! `flowgate run`: starts the configured parts and stops them together.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::ops::{self, Health};
use crate::server;

/// How long in-flight requests may take to finish after SIGTERM.
pub const DRAIN_PERIOD: Duration = Duration::from_secs(25);

/// Why `flowgate run` could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        setting: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// No Kubernetes client configuration (KUBECONFIG or in-cluster).
    #[error("cannot configure the Kubernetes client (KUBECONFIG or in-cluster): {0}")]
    Kube(#[source] kube::Error),
    /// The controller could not start.
    #[error("controller: {0}")]
    Controller(#[from] crate::controller::ControllerError),
}

/// Runs every configured part until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::new());

    let ops_listener =
        TcpListener::bind(config.ops_addr)
            .await
            .map_err(|source| RunError::Bind {
                setting: "FLOWGATE_OPS_ADDR",
                addr: config.ops_addr,
                source,
            })?;
    tracing::info!(addr = %config.ops_addr, "ops listener (healthz, readyz, metrics) up");

    let ops_task = {
        let (health, metrics) = (health.clone(), metrics.clone());
        let handler = move |req, peer| ops::handle(req, peer, health.clone(), metrics.clone());
        tokio::spawn(server::serve(
            ops_listener,
            handler,
            shutdown.clone(),
            Duration::from_secs(1),
        ))
    };

    // The controller campaigns for the Lease and reconciles while it holds it.
    let controller_task = if config.controller && config.resources_dir.is_none() {
        let client = kube::Client::try_default().await.map_err(RunError::Kube)?;
        let controller =
            crate::controller::Controller::from_config(client, &config, metrics.clone())?;
        Some(tokio::spawn(controller.run(shutdown.clone())))
    } else {
        None
    };

    tracing::info!(
        controller = config.controller,
        proxy = config.proxy,
        flowise = %config.flowise_url,
        "flowgate running"
    );
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    if let Some(task) = controller_task {
        match task.await {
            Ok(Err(error)) => tracing::error!(%error, "controller failed"),
            Err(error) => tracing::error!(%error, "controller task panicked"),
            Ok(Ok(())) => {}
        }
    }
    let _ = ops_task.await;
    Ok(())
}
