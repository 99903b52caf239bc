//! The command-line surface of the subcommands that run services, kept out of `main.rs` so the
//! tests start the same code the binary runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::controller::{self, Scope, Settings};
use crate::leader::Election;
use crate::metrics::Metrics;
use crate::replicate::{ApiToken, ClientConfig, ReplicateClient};

/// `replicate-operator controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Watch only resources with these labels, e.g. `shard=a` (shard large clusters this way).
    #[arg(long)]
    pub selector: Option<String>,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Replicate API base URL (the emulator's, for tests and the demo).
    #[arg(long, env = "REPLICATE_API_BASE_URL", default_value = crate::replicate::DEFAULT_BASE_URL)]
    pub replicate_base_url: String,
    /// Drift check period of every resource (±10 % jitter).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How long Replicate wants a deployment offline (0/0) before it accepts a delete.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub offline_window: Duration,
    /// How long a deletion waits for usable credentials before it leaves the deployment on
    /// Replicate and removes the finalizer (with a Warning Event).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub credentials_grace: Duration,
    /// First retry delay after an error (doubles per consecutive error).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay after errors.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_cap: Duration,
    /// Requests per minute per Replicate account (client-side limit, under Replicate's 3000).
    #[arg(long, default_value_t = 2400)]
    pub requests_per_minute: u32,
    /// Public base URL of the webhook sidecar, e.g. https://hooks.example.com; each resource's
    /// webhook URL is then published in its status.
    #[arg(long, env = "WEBHOOK_BASE_URL")]
    pub webhook_base_url: Option<String>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader among replicas through a Lease; only the leader reconciles.
    #[arg(long)]
    pub leader_election: bool,
    /// The Lease's name.
    #[arg(long, default_value = "replicate-operator")]
    pub lease_name: String,
    /// The Lease's namespace (in a cluster: the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the election (in a cluster: the Pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long the lease lasts without renewal: the longest a failover takes.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long before expiry the leader renews the lease.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_grace: Duration,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Kubernetes configuration (kubeconfig or in-cluster): {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid Replicate client settings: {0}")]
    Replicate(#[from] crate::replicate::ConfigError),
    #[error("cannot serve on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Election(#[from] crate::leader::ElectionError),
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run_controller(args: ControllerArgs) -> Result<(), StartError> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let mut config = ClientConfig::default().with_base_url(&args.replicate_base_url)?;
    config.rate_limits.general.per_minute = args.requests_per_minute;
    let observer = metrics.clone();
    config.observer = Some(Arc::new(move |o: &crate::replicate::RequestOutcome| {
        observer.replicate_request(o)
    }));
    let replicate = ReplicateClient::new(config)?;

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.metrics_addr,
            source,
        })?;
    let router = crate::metrics::router(metrics.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let settings = Settings {
        resync_interval: args.resync_interval,
        offline_window: args.offline_window,
        credentials_grace: args.credentials_grace,
        backoff_base: args.backoff_base,
        backoff_cap: args.backoff_cap,
        webhook_base_url: args.webhook_base_url,
    };
    let scope = Scope {
        namespace: args.namespace,
        selector: args.selector,
        concurrency: args.concurrency,
    };
    let default_token = ApiToken::from_env();
    // Serving probes does not depend on leadership: a standby replica is healthy and ready.
    metrics.set_ready(true);
    if !args.leader_election {
        controller::run(
            client,
            replicate,
            default_token,
            settings,
            scope,
            metrics,
            shutdown_signal(),
        )
        .await;
        return Ok(());
    }
    let election = Election {
        lease_name: args.lease_name,
        namespace: args.lease_namespace,
        identity: args.identity.unwrap_or_else(random_identity),
        duration_secs: args.lease_duration.as_secs().max(2),
        grace_secs: args.lease_grace.as_secs().max(1),
    };
    let kube = client.clone();
    crate::leader::run_as_leader(
        kube,
        election,
        metrics.clone(),
        shutdown_signal(),
        move |stop| {
            controller::run(
                client.clone(),
                replicate.clone(),
                default_token.clone(),
                settings.clone(),
                scope.clone(),
                metrics.clone(),
                stop,
            )
        },
    )
    .await?;
    Ok(())
}

/// A unique identity when no Pod name is given (running outside a cluster).
fn random_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replicate-operator".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
