//! The controller's Prometheus metrics, served on `/metrics` next to `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::replicate::RequestOutcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    rate_limit_wait: Histogram,
    status_writes: Counter,
    problems: Family<ReasonLabels, Counter>,
    leader: Gauge,
    ready: AtomicBool,
    reconcile_duration_count: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("replicate_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by result (ok or the error kind)",
            reconciles.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            reconcile_duration.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "replicate_requests",
            "Replicate API requests by route, method and status",
            requests.clone(),
        );
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        registry.register(
            "replicate_request_duration_seconds",
            "Replicate API latency",
            request_duration.clone(),
        );
        let rate_limit_wait = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        registry.register(
            "rate_limiter_wait_seconds",
            "Time requests waited for the client-side rate limiter",
            rate_limit_wait.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "Status writes to the Kubernetes API",
            status_writes.clone(),
        );
        let problems = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended with Synced=False, by condition reason",
            problems.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            requests,
            request_duration,
            rate_limit_wait,
            status_writes,
            problems,
            leader,
            ready: AtomicBool::new(false),
            reconcile_duration_count: AtomicU64::new(0),
        }
    }

    pub fn reconciled(&self, took: Duration, error: Option<&str>) {
        let result = error.unwrap_or("ok").to_string();
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        self.reconcile_duration_count
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Hook for the Replicate client: one call per HTTP attempt.
    pub fn replicate_request(&self, outcome: &RequestOutcome) {
        let labels = RequestLabels {
            route: outcome.route.to_string(),
            method: outcome.method.to_string(),
            status: outcome
                .status
                .map(|s| s.to_string())
                .or_else(|| outcome.error.map(|e| e.as_str().to_string()))
                .unwrap_or_default(),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(outcome.latency.as_secs_f64());
        self.rate_limit_wait
            .observe(outcome.throttled.as_secs_f64());
    }

    /// Reconciles finished so far (any result), for tests that wait for resyncs.
    pub fn reconcile_count(&self) -> u64 {
        self.reconcile_duration_count.load(Ordering::Relaxed)
    }

    /// Status writes so far.
    pub fn status_write_count(&self) -> u64 {
        self.status_writes.get()
    }

    /// A reconcile that ended with Synced=False for `reason` (RateLimited, Unauthorized, ...).
    pub fn reconcile_error(&self, reason: &str) {
        self.problems
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Ready once the controller has started (and, with leader election, whichever role it has).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
