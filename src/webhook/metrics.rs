//! The sidecar's Prometheus metrics, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a delivery ended, as counted in `replicate_webhook_deliveries_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryResult {
    /// Verified and persisted (or already persisted before: a redelivery).
    Accepted,
    /// No signature matched any key.
    BadSignature,
    /// Timestamp outside the tolerance, either way.
    StaleTimestamp,
    /// Missing or unreadable headers, empty body, or a body that is not a prediction.
    Malformed,
    /// No such ReplicateDeployment.
    UnknownResource,
    /// Body over the size limit.
    TooLarge,
    /// Verified, but the status write failed (or the resource went away meanwhile).
    PersistFailed,
    /// The signing secret could not be obtained (Replicate or Kubernetes unreachable).
    SecretUnavailable,
    /// The body did not arrive within the read timeout.
    ReadTimeout,
}

impl DeliveryResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Malformed => "malformed",
            Self::UnknownResource => "unknown_resource",
            Self::TooLarge => "too_large",
            Self::PersistFailed => "persist_failed",
            Self::SecretUnavailable => "secret_unavailable",
            Self::ReadTimeout => "read_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Outcome label of `replicate_webhook_status_writes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Ok,
    Conflict,
    Error,
}

/// All the sidecar's metrics, cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    deliveries: Family<ResultLabel, Counter>,
    verification_seconds: Histogram,
    status_writes: Family<OutcomeLabel, Counter>,
    batch_size: Histogram,
    awaiting_persist: Gauge,
    secret_fetches: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("replicate_webhook");
        let deliveries = Family::<ResultLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Webhook deliveries by how they ended",
            deliveries.clone(),
        );
        // 1 µs .. ~0.5 s
        let verification_seconds = Histogram::new(exponential_buckets(1e-6, 4.0, 10));
        registry.register(
            "verification_seconds",
            "Time to verify one delivery's signature, secret lookup excluded",
            verification_seconds.clone(),
        );
        let status_writes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "status_writes",
            "ReplicateDeployment status writes by outcome",
            status_writes.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "batch_size",
            "Deliveries persisted per status write",
            batch_size.clone(),
        );
        let awaiting_persist = Gauge::default();
        registry.register(
            "awaiting_persist",
            "Verified deliveries waiting for their status write",
            awaiting_persist.clone(),
        );
        let secret_fetches = Counter::default();
        registry.register(
            "secret_refreshes",
            "Secret refreshes after a failed signature",
            secret_fetches.clone(),
        );
        Self {
            registry,
            deliveries,
            verification_seconds,
            status_writes,
            batch_size,
            awaiting_persist,
            secret_fetches,
        }
    }

    pub fn delivery(&self, result: DeliveryResult) {
        self.deliveries
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// Deliveries counted with `result` so far.
    pub fn deliveries(&self, result: DeliveryResult) -> u64 {
        self.deliveries
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .get()
    }

    pub fn verification(&self, seconds: f64) {
        self.verification_seconds.observe(seconds);
    }

    pub fn status_write(&self, outcome: WriteOutcome, batch: usize) {
        let outcome = match outcome {
            WriteOutcome::Ok => "ok",
            WriteOutcome::Conflict => "conflict",
            WriteOutcome::Error => "error",
        };
        self.status_writes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        if outcome == "ok" {
            self.batch_size.observe(batch as f64);
        }
    }

    pub fn secret_refresh(&self) {
        self.secret_fetches.inc();
    }

    /// Adds `delta` to the deliveries awaiting their status write.
    pub fn awaiting_persist(&self, delta: i64) {
        self.awaiting_persist.inc_by(delta);
    }

    /// Verified deliveries currently waiting for their status write.
    pub fn awaiting_persist_now(&self) -> i64 {
        self.awaiting_persist.get()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
