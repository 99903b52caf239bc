//! `replicate-operator webhook`: wires the Kubernetes store, the chosen secret source and the
//! server together and runs until SIGTERM or Ctrl-C.
//!
//! Secrets and tokens are read from the environment only (never from flags, which show up in
//! process listings): `REPLICATE_WEBHOOK_SECRET` (static `whsec_…` list) and
//! `REPLICATE_API_TOKEN` (the default account's API token).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::commit::CommitConfig;
use super::kube_store::KubeStore;
use super::secrets::{
    CachedSecrets, KubeSecretLoader, KubeTokens, ReplicateApiLoader, SecretSource, StaticSecrets,
    WEBHOOK_SECRET_ENV,
};
use super::server::{WebhookConfig, WebhookServer};
use crate::replicate::{ApiToken, ClientConfig, ReplicateClient};

/// Options of the webhook sidecar.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Address to listen on.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Accepted distance, in seconds, between webhook-timestamp and now, either way.
    #[arg(long, default_value_t = 300)]
    pub tolerance_secs: u64,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Least time between two status writes of one resource, in milliseconds (group commit).
    #[arg(long, default_value_t = 100)]
    pub flush_interval_ms: u64,
    /// Longest wait for a request body, in seconds.
    #[arg(long, default_value_t = 10)]
    pub read_timeout_secs: u64,
    /// Longest wait for the status write holding a delivery, in seconds.
    #[arg(long, default_value_t = 10)]
    pub persist_timeout_secs: u64,
    /// Least time between two refetches of one account's secret after failed signatures.
    #[arg(long, default_value_t = 30)]
    pub secret_refetch_secs: u64,
    /// Take webhook secrets from this Secret, written `namespace/name` or `namespace/name:key`
    /// (default key `secret`; value: a comma or space separated `whsec_…` list) instead of from
    /// Replicate's API. Ignored when REPLICATE_WEBHOOK_SECRET is set.
    #[arg(long)]
    pub webhook_secret_ref: Option<String>,
    /// Replicate's API base URL, for fetching each account's webhook secret.
    #[arg(long, env = "REPLICATE_API_BASE_URL", default_value = crate::replicate::DEFAULT_BASE_URL)]
    pub api_base_url: String,
    /// Watch ReplicateDeployments in this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the sidecar until SIGINT/SIGTERM (logging is set up by the caller).
pub async fn run(args: WebhookArgs) -> Result<(), BoxError> {
    let client = kube::Client::try_default().await?;
    let (store, reflector) = KubeStore::new(client.clone(), args.namespace.as_deref());
    tokio::spawn(reflector);

    let refetch = Duration::from_secs(args.secret_refetch_secs);
    let static_list = std::env::var(WEBHOOK_SECRET_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let secrets: Arc<dyn SecretSource> = if let Some(list) = static_list {
        tracing::info!(source = WEBHOOK_SECRET_ENV, "webhook secrets: static list");
        Arc::new(StaticSecrets::parse(&list).map_err(|e| format!("{WEBHOOK_SECRET_ENV}: {e}"))?)
    } else if let Some(reference) = &args.webhook_secret_ref {
        let (namespace, name, key) = parse_secret_ref(reference)?;
        tracing::info!(secret = %reference, "webhook secrets: Kubernetes Secret");
        Arc::new(CachedSecrets::new(
            KubeSecretLoader::new(client.clone(), namespace, name, key),
            refetch,
        ))
    } else {
        tracing::info!(api = %args.api_base_url, "webhook secrets: Replicate API, per account");
        let default_token = ApiToken::from_env();
        let replicate =
            ReplicateClient::new(ClientConfig::default().with_base_url(&args.api_base_url)?)?;
        replicate_api_secrets(client.clone(), replicate, default_token, refetch)
    };

    let config = WebhookConfig {
        tolerance: Duration::from_secs(args.tolerance_secs),
        max_body_bytes: args.max_body_bytes,
        read_timeout: Duration::from_secs(args.read_timeout_secs),
        persist_timeout: Duration::from_secs(args.persist_timeout_secs),
        commit: CommitConfig {
            flush_interval: Duration::from_millis(args.flush_interval_ms),
            ..CommitConfig::default()
        },
    };
    let server = WebhookServer::new(Arc::new(store), secrets, config);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, "webhook sidecar listening");
    server
        .serve(listener, crate::cli::shutdown_signal())
        .await?;
    Ok(())
}

/// `namespace/name[:key]`, key defaulting to `secret`.
fn parse_secret_ref(reference: &str) -> Result<(&str, &str, &str), BoxError> {
    let (path, key) = reference.split_once(':').unwrap_or((reference, "secret"));
    match path.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !key.is_empty() => {
            Ok((ns, name, key))
        }
        _ => Err(format!(
            "--webhook-secret-ref {reference:?}: expected namespace/name or namespace/name:key"
        )
        .into()),
    }
}

/// The default secret source: each resource's account secret from Replicate's API, fetched with
/// the resource's own credentials (or the default token), cached, and refetched at most every
/// `refetch` after a signature fails.
pub fn replicate_api_secrets(
    client: kube::Client,
    replicate: ReplicateClient,
    default_token: Option<ApiToken>,
    refetch: Duration,
) -> Arc<dyn SecretSource> {
    let loader = ReplicateApiLoader {
        replicate,
        tokens: KubeTokens {
            client,
            default_token,
        },
    };
    Arc::new(CachedSecrets::new(loader, refetch))
}
