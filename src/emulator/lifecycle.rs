//! A prediction's life (starting → processing → succeeded/failed/canceled) and its webhooks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use rand::RngExt;
use serde_json::Value;
use tokio::time::Instant;

use super::Shared;
use super::world::DeliveryRecord;
use crate::replicate::{Prediction, PredictionStatus, WebhookEvent};

/// Without `webhook_events_filter`, Replicate sends output and completion webhooks.
const DEFAULT_EVENTS: [WebhookEvent; 2] = [WebhookEvent::Output, WebhookEvent::Completed];

pub(crate) async fn run(shared: Arc<Shared>, id: String) {
    let timing = shared.config.predictions.clone();
    deliver_event(&shared, &id, WebhookEvent::Start, false).await;
    sleep_unless_canceled(&shared, &id, timing.starting).await;
    if stop_if_canceled(&shared, &id) {
        return;
    }
    update(&shared, &id, |p| {
        p.status = PredictionStatus::Processing;
        p.started_at = Some(Timestamp::now());
        p.logs = Some("emulator: running prediction\n".into());
    });
    deliver_event(&shared, &id, WebhookEvent::Logs, false).await;
    sleep_unless_canceled(&shared, &id, timing.processing).await;
    if stop_if_canceled(&shared, &id) {
        return;
    }
    let Some(input) = snapshot(&shared, &id).map(|p| p.input) else {
        return;
    };
    let forced = input.get("fail").and_then(Value::as_bool) == Some(true);
    let fails = forced || rand::rng().random::<f64>() < timing.failure_ratio;
    if !fails {
        update(&shared, &id, |p| {
            p.output = serde_json::json!({"echo": input})
        });
        deliver_event(&shared, &id, WebhookEvent::Output, false).await;
    }
    let started = snapshot(&shared, &id).and_then(|p| p.started_at);
    finish(
        &shared,
        &id,
        if fails {
            PredictionStatus::Failed
        } else {
            PredictionStatus::Succeeded
        },
        started,
    );
}

/// Sleeps for a step of the lifecycle, waking early when the prediction is canceled (its
/// deployment disabled) so cancellation shows at once, as on Replicate.
async fn sleep_unless_canceled(shared: &Shared, id: &str, duration: Duration) {
    let mut changes = shared.changes.subscribe();
    let deadline = Instant::now() + duration;
    loop {
        changes.mark_unchanged();
        let canceled = shared
            .world()
            .predictions
            .get(id)
            .is_none_or(|p| p.cancel_requested);
        if canceled || shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        if !matches!(
            tokio::time::timeout_at(deadline, changes.changed()).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// Ends a prediction whose deployment was disabled meanwhile; true when it did.
fn stop_if_canceled(shared: &Arc<Shared>, id: &str) -> bool {
    if shared.stopped.load(Ordering::SeqCst) {
        return true;
    }
    let canceled = shared
        .world()
        .predictions
        .get(id)
        .is_none_or(|p| p.cancel_requested);
    if canceled {
        let started = snapshot(shared, id).and_then(|p| p.started_at);
        finish(shared, id, PredictionStatus::Canceled, started);
    }
    canceled
}

fn finish(shared: &Arc<Shared>, id: &str, status: PredictionStatus, started: Option<Timestamp>) {
    let now = Timestamp::now();
    update(shared, id, |p| {
        let total = p
            .created_at
            .map(|c| now.duration_since(c).as_secs_f64())
            .unwrap_or(0.0);
        let predict = started
            .map(|s| now.duration_since(s).as_secs_f64())
            .unwrap_or(0.0);
        p.completed_at = Some(now);
        p.metrics = Some(
            serde_json::json!({"predict_time": predict, "total_time": total})
                .as_object()
                .cloned()
                .unwrap(),
        );
        match status {
            PredictionStatus::Failed => {
                p.error = Some(Value::String("emulated model failure".into()));
                p.output = Value::Null;
            }
            PredictionStatus::Canceled => p.output = Value::Null,
            _ => {}
        }
        p.status = status;
    });
    let shared = shared.clone();
    let id = id.to_owned();
    tokio::spawn(async move { deliver_event(&shared, &id, WebhookEvent::Completed, true).await });
}

fn snapshot(shared: &Shared, id: &str) -> Option<Prediction> {
    shared
        .world()
        .predictions
        .get(id)
        .map(|p| p.prediction.clone())
}

fn update(shared: &Shared, id: &str, change: impl FnOnce(&mut Prediction)) {
    if let Some(state) = shared.world().predictions.get_mut(id) {
        change(&mut state.prediction);
    }
    shared.changed();
}

/// Sends one event's webhook if the prediction asked for it. Only the terminal one is retried
/// (same `webhook-id`, fresh timestamp and signature, doubling delay), as Replicate does.
async fn deliver_event(shared: &Arc<Shared>, id: &str, event: WebhookEvent, retry: bool) {
    let Some((prediction, owner)) = shared
        .world()
        .predictions
        .get(id)
        .map(|p| (p.prediction.clone(), p.owner.clone()))
    else {
        return;
    };
    let Some(url) = prediction.webhook.clone() else {
        return;
    };
    let wanted = prediction
        .webhook_events_filter
        .as_deref()
        .unwrap_or(&DEFAULT_EVENTS);
    if !wanted.contains(&event) {
        return;
    }
    let body = serde_json::to_vec(&prediction).expect("predictions serialise");
    let webhook_id = format!("msg_{}", random_id(27));
    let settings = shared.config.webhooks.clone();
    let attempts = if retry {
        settings.max_attempts.max(1)
    } else {
        1
    };
    for attempt in 1..=attempts {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let timestamp = Timestamp::now().as_second();
        let keys = shared.world().signing_keys(&owner, Instant::now());
        let signature: Vec<String> = keys
            .iter()
            .map(|k| k.sign(&webhook_id, &timestamp.to_string(), &body))
            .collect();
        let result = shared
            .webhook_http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature.join(" "))
            .body(body.clone())
            .send()
            .await;
        let (response_status, error) = match &result {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let delivered = response_status.is_some_and(|s| (200..300).contains(&s));
        tracing::debug!(prediction = id, %event, attempt, ?response_status, "webhook delivery");
        shared.world().deliveries.push(DeliveryRecord {
            prediction_id: id.to_owned(),
            webhook_id: webhook_id.clone(),
            event: event.clone(),
            status: prediction.status.clone(),
            attempt,
            url: url.clone(),
            response_status,
            error,
            timestamp,
        });
        shared.changed();
        if delivered {
            return;
        }
        if attempt < attempts {
            let delay = settings
                .retry_initial
                .saturating_mul(1 << (attempt - 1).min(16));
            tokio::time::sleep(delay.min(Duration::from_secs(3600))).await;
        }
    }
}

fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
