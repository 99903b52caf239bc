//! The HTTP side: `POST /webhooks/{namespace}/{name}`, `/healthz`, `/readyz`, `/metrics`.
//!
//! A delivery goes through, in order, refusing at the first failure (a refused delivery changes
//! nothing):
//! 1. size (413) and read timeout (408) while reading the raw body;
//! 2. header and timestamp checks that need no key (400 malformed, 401 out of tolerance), so
//!    junk and replays never cost a secret lookup;
//! 3. the resource (404 if there is no such ReplicateDeployment);
//! 4. the resource's signing keys (503 if they cannot be had), the signature (401), with one
//!    rate-limited refetch of the keys when nothing matched, in case the secret was rotated;
//! 5. the body as a prediction (400);
//! 6. the group commit: 200 only once the status write holding the delivery succeeded, 503
//!    otherwise, so Replicate retries the terminal webhook.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;

use super::apply::Delivery;
use super::commit::{CommitConfig, CommitError, Committer, Persisted};
use super::metrics::{DeliveryResult, Metrics};
use super::prediction::PredictionEvent;
use super::secrets::SecretSource;
use super::store::{ResourceKey, StatusStore};
use crate::signature::{self, Header, SignedHeaders, VerifyError};

/// The server's settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Accepted distance between `webhook-timestamp` and now, either way.
    pub tolerance: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Longest wait for the whole body once the headers are in.
    pub read_timeout: Duration,
    /// Longest wait for the status write holding a delivery; Replicate expects an answer within
    /// seconds and retries the terminal webhook on failure.
    pub persist_timeout: Duration,
    pub commit: CommitConfig,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            tolerance: signature::DEFAULT_TOLERANCE,
            max_body_bytes: 1024 * 1024,
            read_timeout: Duration::from_secs(10),
            persist_timeout: Duration::from_secs(10),
            commit: CommitConfig::default(),
        }
    }
}

/// The webhook server: build it with a store and a secret source, then take its
/// [`router`](WebhookServer::router) or [`serve`](WebhookServer::serve) it.
#[derive(Clone)]
pub struct WebhookServer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn StatusStore>,
    secrets: Arc<dyn SecretSource>,
    committer: Arc<Committer>,
    metrics: Arc<Metrics>,
    config: WebhookConfig,
}

impl WebhookServer {
    /// Must be called within a Tokio runtime (the committer spawns its workers on it).
    pub fn new(
        store: Arc<dyn StatusStore>,
        secrets: Arc<dyn SecretSource>,
        config: WebhookConfig,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let committer = Committer::new(store.clone(), metrics.clone(), config.commit.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                secrets,
                committer,
                metrics,
                config,
            }),
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhooks/{namespace}/{name}", post(receive))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.inner.clone())
    }

    /// Serves until `shutdown` completes, then lets requests in progress finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn readyz(State(inner): State<Arc<Inner>>) -> Response {
    if inner.store.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "resource cache not synced yet",
        )
            .into_response()
    }
}

async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        inner.metrics.encode(),
    )
        .into_response()
}

/// A refusal (or failure): the status code, the metric, and a short reason for the sender.
struct Refusal {
    status: StatusCode,
    result: DeliveryResult,
    reason: String,
}

impl Refusal {
    fn new(status: StatusCode, result: DeliveryResult, reason: impl Into<String>) -> Self {
        Self {
            status,
            result,
            reason: reason.into(),
        }
    }
}

fn verify_refusal(e: &VerifyError) -> Refusal {
    let (status, result) = match e {
        VerifyError::Stale { .. } | VerifyError::Future { .. } => {
            (StatusCode::UNAUTHORIZED, DeliveryResult::StaleTimestamp)
        }
        VerifyError::NoMatchingSignature { .. } | VerifyError::NoSecret => {
            (StatusCode::UNAUTHORIZED, DeliveryResult::BadSignature)
        }
        VerifyError::MissingHeader(_)
        | VerifyError::MalformedHeader(_)
        | VerifyError::EmptyBody
        | VerifyError::MalformedTimestamp
        | VerifyError::MalformedSignatureHeader(_) => {
            (StatusCode::BAD_REQUEST, DeliveryResult::Malformed)
        }
    };
    Refusal::new(status, result, e.to_string())
}

async fn receive(
    State(inner): State<Arc<Inner>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = ResourceKey { namespace, name };
    let (status, result, reason) = match handle(&inner, &key, &headers, body).await {
        Ok(Persisted::Written) => (
            StatusCode::OK,
            DeliveryResult::Accepted,
            "recorded".to_owned(),
        ),
        Ok(Persisted::AlreadyPersisted) => (
            StatusCode::OK,
            DeliveryResult::Accepted,
            "already recorded".to_owned(),
        ),
        Err(r) => (r.status, r.result, r.reason),
    };
    inner.metrics.delivery(result);
    if status.is_server_error() {
        tracing::warn!(resource = %key, result = result.as_str(), %reason, "webhook not recorded");
    } else if !status.is_success() {
        tracing::info!(resource = %key, result = result.as_str(), %reason, "webhook refused");
    }
    (status, reason).into_response()
}

async fn handle(
    inner: &Inner,
    key: &ResourceKey,
    headers: &HeaderMap,
    body: Body,
) -> Result<Persisted, Refusal> {
    let config = &inner.config;
    let body = read_body(headers, body, config.max_body_bytes, config.read_timeout).await?;
    let now = jiff::Timestamp::now();

    let signed = SignedHeaders {
        id: header_text(headers, Header::Id)?,
        timestamp: header_text(headers, Header::Timestamp)?,
        signature: header_text(headers, Header::Signature)?,
    };
    let candidate = signature::check_delivery(signed, &body, now, config.tolerance)
        .map_err(|e| verify_refusal(&e))?;

    let resource = match inner.store.lookup(key).await {
        Ok(Some(resource)) => resource,
        Ok(None) => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                DeliveryResult::UnknownResource,
                "no such ReplicateDeployment",
            ));
        }
        Err(e) => {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                DeliveryResult::PersistFailed,
                e.to_string(),
            ));
        }
    };

    let unavailable = |e: super::secrets::SecretSourceError| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            DeliveryResult::SecretUnavailable,
            e.to_string(),
        )
    };
    let keys = inner
        .secrets
        .secrets_for(&resource)
        .await
        .map_err(unavailable)?;
    let started = Instant::now();
    let mut verified = candidate.verify(&keys);
    inner.metrics.verification(started.elapsed().as_secs_f64());
    if let Err(e) = &verified
        && e.may_need_new_secret()
        && let Some(fresh) = inner
            .secrets
            .refresh(&resource)
            .await
            .map_err(unavailable)?
    {
        inner.metrics.secret_refresh();
        verified = candidate.verify(&fresh);
    }
    let verified = verified.map_err(|e| verify_refusal(&e))?;

    let prediction = PredictionEvent::from_json(&body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            DeliveryResult::Malformed,
            e.to_string(),
        )
    })?;
    let delivery = Delivery {
        webhook_id: verified.webhook_id,
        received_at: now,
        prediction,
    };

    let persisted = tokio::time::timeout(
        config.persist_timeout,
        inner.committer.commit(key.clone(), delivery),
    )
    .await;
    match persisted {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(CommitError::ResourceGone(_))) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            DeliveryResult::UnknownResource,
            "no such ReplicateDeployment",
        )),
        Ok(Err(e)) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            DeliveryResult::PersistFailed,
            e.to_string(),
        )),
        // The write may still land; if it does, the retry this answer provokes is deduplicated.
        Err(_) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            DeliveryResult::PersistFailed,
            "timed out waiting for the status write",
        )),
    }
}

/// A header as text: `None` if absent, a refusal if it is not valid UTF-8.
fn header_text(headers: &HeaderMap, which: Header) -> Result<Option<&str>, Refusal> {
    match headers.get(which.name()) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v.as_bytes())
            .map(Some)
            .map_err(|_| verify_refusal(&VerifyError::MalformedHeader(which))),
    }
}

/// Reads the raw body (its exact bytes are what was signed), refusing it as soon as it exceeds
/// `limit` or takes longer than `timeout`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            DeliveryResult::TooLarge,
            format!("the body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    DeliveryResult::Malformed,
                    format!("reading the body: {e}"),
                )
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                DeliveryResult::ReadTimeout,
                "the body took too long to arrive",
            ))
        })
}
