//! How a batch of verified deliveries changes the sidecar's part of the status. Pure: the
//! caller reads the current status, calls [`apply`], and writes the result.
//!
//! The rules, from Replicate's delivery behaviour (`replicate-api.md` section 5.6):
//! - a prediction is counted once, in the bucket of its final state, however often its final
//!   webhook is delivered (retries keep the `webhook-id`, re-sign, and may come minutes later,
//!   also after a restart of the sidecar): IDs already counted are kept in
//!   `countedPredictionIds`, a bounded list, newest last;
//! - a late or reordered delivery never moves a prediction backwards (see
//!   [`PredictionStatus::rank`]) and an older prediction never replaces a newer one as "last";
//! - `lastWebhookTime` only moves forward.

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::prediction::{PredictionEvent, PredictionStatus, parse_instant};
use crate::crd::{LastPrediction, PredictionCounts, ReplicateDeploymentStatus};

/// How many counted prediction IDs the status remembers. A retry of a prediction that has
/// dropped out of the list would be counted again, so this must exceed the number of
/// predictions a deployment completes during Replicate's retry window (about a minute); 500 IDs
/// of 26 characters keep the status object around 15 KiB.
pub const COUNTED_IDS_LIMIT: usize = 500;

/// The status fields the webhook sidecar owns (and the only ones it ever sends).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarStatus {
    pub predictions: Option<PredictionCounts>,
    pub last_prediction: Option<LastPrediction>,
    pub last_webhook_time: Option<Time>,
    pub counted_prediction_ids: Vec<String>,
}

impl SidecarStatus {
    /// The sidecar's fields of a full status.
    pub fn from_status(status: &ReplicateDeploymentStatus) -> Self {
        Self {
            predictions: status.predictions,
            last_prediction: status.last_prediction.clone(),
            last_webhook_time: status.last_webhook_time.clone(),
            counted_prediction_ids: status.counted_prediction_ids.clone(),
        }
    }

    /// A status holding only the sidecar's fields: serialised, it names none of the
    /// controller's fields, so a server-side apply of it never touches them.
    pub fn to_status(&self) -> ReplicateDeploymentStatus {
        ReplicateDeploymentStatus {
            predictions: self.predictions,
            last_prediction: self.last_prediction.clone(),
            last_webhook_time: self.last_webhook_time.clone(),
            counted_prediction_ids: self.counted_prediction_ids.clone(),
            ..ReplicateDeploymentStatus::default()
        }
    }
}

/// One verified delivery, ready to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The `webhook-id` header: the same on every retry of one message.
    pub webhook_id: String,
    /// When the sidecar received it.
    pub received_at: jiff::Timestamp,
    pub prediction: PredictionEvent,
}

/// The result of [`apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub status: SidecarStatus,
    /// Predictions newly counted by this batch.
    pub newly_counted: usize,
    /// Deliveries skipped because an earlier one in the batch had the same `webhook-id`.
    pub duplicate_deliveries: usize,
}

/// Applies a batch of deliveries, in order, to the current sidecar status, remembering at most
/// [`COUNTED_IDS_LIMIT`] counted IDs.
pub fn apply(current: &SidecarStatus, batch: &[Delivery]) -> Applied {
    apply_with_limit(current, batch, COUNTED_IDS_LIMIT)
}

/// [`apply`] with an explicit bound on the remembered IDs.
pub fn apply_with_limit(
    current: &SidecarStatus,
    batch: &[Delivery],
    counted_ids_limit: usize,
) -> Applied {
    let mut status = current.clone();
    let mut counted: HashSet<String> = status.counted_prediction_ids.iter().cloned().collect();
    let mut webhook_ids: HashSet<&str> = HashSet::new();
    let mut newly_counted = 0;
    let mut duplicate_deliveries = 0;

    for delivery in batch {
        // A redelivery is still a verified webhook received. Time serialises to whole seconds;
        // truncate here so that what is computed is exactly what is stored and read back.
        let received =
            Time(jiff::Timestamp::from_second(delivery.received_at.as_second()).expect("in range"));
        if status
            .last_webhook_time
            .as_ref()
            .is_none_or(|t| t.0 < received.0)
        {
            status.last_webhook_time = Some(received);
        }
        if !webhook_ids.insert(&delivery.webhook_id) {
            duplicate_deliveries += 1;
            continue;
        }
        let prediction = &delivery.prediction;

        if prediction.status.is_terminal() && counted.insert(prediction.id.clone()) {
            let counts = status
                .predictions
                .get_or_insert_with(PredictionCounts::default);
            match prediction.status {
                PredictionStatus::Succeeded => counts.succeeded += 1,
                PredictionStatus::Failed => counts.failed += 1,
                PredictionStatus::Canceled => counts.canceled += 1,
                PredictionStatus::Aborted => counts.aborted += 1,
                _ => unreachable!("is_terminal covers exactly these four"),
            }
            status.counted_prediction_ids.push(prediction.id.clone());
            newly_counted += 1;
        }

        if supersedes(status.last_prediction.as_ref(), prediction) {
            status.last_prediction = Some(last_prediction(prediction));
        }
    }

    let excess = status
        .counted_prediction_ids
        .len()
        .saturating_sub(counted_ids_limit);
    status.counted_prediction_ids.drain(..excess);

    Applied {
        status,
        newly_counted,
        duplicate_deliveries,
    }
}

/// Whether `incoming` should replace `current` as the last prediction.
fn supersedes(current: Option<&LastPrediction>, incoming: &PredictionEvent) -> bool {
    let Some(current) = current else { return true };
    if current.id == incoming.id {
        return incoming.status.rank() > PredictionStatus::parse(&current.status).rank();
    }
    match (
        incoming.created_instant(),
        parse_instant(current.created_at.as_deref()),
    ) {
        // The ID tie-break makes the outcome independent of delivery order.
        (Some(new), Some(old)) => new > old || (new == old && incoming.id > current.id),
        (Some(_), None) => true,
        (None, Some(_)) => false,
        // Nothing to compare: arrival order is all there is.
        (None, None) => true,
    }
}

fn last_prediction(p: &PredictionEvent) -> LastPrediction {
    LastPrediction {
        id: p.id.clone(),
        status: p.status.as_str().to_owned(),
        created_at: p.created_at.clone(),
        started_at: p.started_at.clone(),
        completed_at: p.completed_at.clone(),
        predict_time: p.predict_time,
        error: p.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_717_200_000;

    /// A delivery of prediction `id` in `status`, created `created` seconds after T, webhook-id
    /// `wid`, received `recv` seconds after T.
    fn d(wid: &str, id: &str, status: &str, created: i64, recv: i64) -> Delivery {
        let created_at = jiff::Timestamp::from_second(T + created)
            .unwrap()
            .to_string();
        Delivery {
            webhook_id: wid.into(),
            received_at: jiff::Timestamp::from_second(T + recv).unwrap(),
            prediction: PredictionEvent {
                id: id.into(),
                status: PredictionStatus::parse(status),
                created_at: Some(created_at),
                started_at: (status != "starting").then(|| "2024-06-01T00:00:01Z".into()),
                completed_at: None,
                predict_time: None,
                error: (status == "failed").then(|| "boom".into()),
            },
        }
    }

    fn counts(s: i64, f: i64, c: i64, a: i64) -> Option<PredictionCounts> {
        Some(PredictionCounts {
            succeeded: s,
            failed: f,
            canceled: c,
            aborted: a,
        })
    }

    struct Case {
        name: &'static str,
        initial: SidecarStatus,
        batch: Vec<Delivery>,
        counts: Option<PredictionCounts>,
        last: Option<(&'static str, &'static str)>,
        counted_ids: &'static [&'static str],
        newly_counted: usize,
        duplicates: usize,
    }

    fn already(ids: &[&str], c: Option<PredictionCounts>, last: Option<Delivery>) -> SidecarStatus {
        SidecarStatus {
            predictions: c,
            last_prediction: last.map(|d| last_prediction(&d.prediction)),
            last_webhook_time: Some(Time(jiff::Timestamp::from_second(T).unwrap())),
            counted_prediction_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn status_merge_table() {
        let cases = vec![
            Case {
                name: "a first terminal delivery counts and becomes last",
                initial: SidecarStatus::default(),
                batch: vec![d("w1", "p1", "succeeded", 0, 5)],
                counts: counts(1, 0, 0, 0),
                last: Some(("p1", "succeeded")),
                counted_ids: &["p1"],
                newly_counted: 1,
                duplicates: 0,
            },
            Case {
                name: "intermediate states count nothing",
                initial: SidecarStatus::default(),
                batch: vec![
                    d("w1", "p1", "starting", 0, 1),
                    d("w2", "p1", "processing", 0, 2),
                ],
                counts: None,
                last: Some(("p1", "processing")),
                counted_ids: &[],
                newly_counted: 0,
                duplicates: 0,
            },
            Case {
                name: "each final state has its bucket",
                initial: SidecarStatus::default(),
                batch: vec![
                    d("w1", "p1", "succeeded", 1, 9),
                    d("w2", "p2", "failed", 2, 9),
                    d("w3", "p3", "canceled", 3, 9),
                    d("w4", "p4", "aborted", 4, 9),
                ],
                counts: counts(1, 1, 1, 1),
                last: Some(("p4", "aborted")),
                counted_ids: &["p1", "p2", "p3", "p4"],
                newly_counted: 4,
                duplicates: 0,
            },
            Case {
                name: "the same webhook-id twice in a batch applies once",
                initial: SidecarStatus::default(),
                batch: vec![d("w1", "p1", "failed", 0, 1), d("w1", "p1", "failed", 0, 2)],
                counts: counts(0, 1, 0, 0),
                last: Some(("p1", "failed")),
                counted_ids: &["p1"],
                newly_counted: 1,
                duplicates: 1,
            },
            Case {
                name: "a retry under a new webhook-id is not counted again (ID remembered in status)",
                initial: already(
                    &["p1"],
                    counts(1, 0, 0, 0),
                    Some(d("w1", "p1", "succeeded", 0, 0)),
                ),
                batch: vec![d("w9", "p1", "succeeded", 0, 60)],
                counts: counts(1, 0, 0, 0),
                last: Some(("p1", "succeeded")),
                counted_ids: &["p1"],
                newly_counted: 0,
                duplicates: 0,
            },
            Case {
                name: "a late processing delivery never moves a finished prediction back",
                initial: SidecarStatus::default(),
                batch: vec![
                    d("w2", "p1", "succeeded", 0, 2),
                    d("w1", "p1", "processing", 0, 3),
                ],
                counts: counts(1, 0, 0, 0),
                last: Some(("p1", "succeeded")),
                counted_ids: &["p1"],
                newly_counted: 1,
                duplicates: 0,
            },
            Case {
                name: "a final state is never replaced by another final state",
                initial: SidecarStatus::default(),
                batch: vec![
                    d("w1", "p1", "canceled", 0, 2),
                    d("w2", "p1", "succeeded", 0, 3),
                ],
                counts: counts(0, 0, 1, 0),
                last: Some(("p1", "canceled")),
                counted_ids: &["p1"],
                newly_counted: 1,
                duplicates: 0,
            },
            Case {
                name: "an older prediction finishing later is counted but does not become last",
                initial: SidecarStatus::default(),
                batch: vec![
                    d("w2", "new", "processing", 10, 11),
                    d("w1", "old", "succeeded", 5, 12),
                ],
                counts: counts(1, 0, 0, 0),
                last: Some(("new", "processing")),
                counted_ids: &["old"],
                newly_counted: 1,
                duplicates: 0,
            },
            Case {
                name: "a newer prediction replaces a finished older one",
                initial: already(
                    &["old"],
                    counts(1, 0, 0, 0),
                    Some(d("w1", "old", "succeeded", 5, 6)),
                ),
                batch: vec![d("w2", "new", "starting", 10, 11)],
                counts: counts(1, 0, 0, 0),
                last: Some(("new", "starting")),
                counted_ids: &["old"],
                newly_counted: 0,
                duplicates: 0,
            },
            Case {
                name: "an unknown status is kept as last but neither counted nor allowed to regress a known one",
                initial: SidecarStatus::default(),
                batch: vec![
                    d("w1", "p1", "processing", 0, 1),
                    d("w2", "p1", "teleporting", 0, 2),
                ],
                counts: None,
                last: Some(("p1", "processing")),
                counted_ids: &[],
                newly_counted: 0,
                duplicates: 0,
            },
            Case {
                name: "an unknown status for a new prediction is shown",
                initial: SidecarStatus::default(),
                batch: vec![d("w1", "p1", "teleporting", 0, 1)],
                counts: None,
                last: Some(("p1", "teleporting")),
                counted_ids: &[],
                newly_counted: 0,
                duplicates: 0,
            },
        ];
        for case in cases {
            let out = apply(&case.initial, &case.batch);
            assert_eq!(out.status.predictions, case.counts, "{}: counts", case.name);
            let last = out
                .status
                .last_prediction
                .as_ref()
                .map(|l| (l.id.as_str(), l.status.as_str()));
            assert_eq!(last, case.last, "{}: last prediction", case.name);
            assert_eq!(
                out.status.counted_prediction_ids, case.counted_ids,
                "{}: counted ids",
                case.name
            );
            assert_eq!(
                out.newly_counted, case.newly_counted,
                "{}: newly counted",
                case.name
            );
            assert_eq!(
                out.duplicate_deliveries, case.duplicates,
                "{}: duplicates",
                case.name
            );
            let latest = case
                .batch
                .iter()
                .map(|d| d.received_at.as_second())
                .max()
                .unwrap();
            assert_eq!(
                out.status.last_webhook_time.map(|t| t.0.as_second()),
                Some(latest),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn last_prediction_carries_the_delivered_fields() {
        let mut delivery = d("w1", "p1", "failed", 0, 1);
        delivery.prediction.predict_time = Some(1.5);
        delivery.prediction.completed_at = Some("2024-06-01T00:00:02Z".into());
        let out = apply(&SidecarStatus::default(), &[delivery.clone()]);
        let last = out.status.last_prediction.unwrap();
        assert_eq!(last.error.as_deref(), Some("boom"));
        assert_eq!(last.predict_time, Some(1.5));
        assert_eq!(last.completed_at, delivery.prediction.completed_at);
        assert_eq!(last.created_at, delivery.prediction.created_at);
    }

    #[test]
    fn last_webhook_time_never_moves_back() {
        let initial = already(&[], None, None);
        let out = apply(&initial, &[d("w1", "p1", "starting", 0, -100)]);
        assert_eq!(out.status.last_webhook_time, initial.last_webhook_time);
    }

    #[test]
    fn counted_ids_are_bounded_and_keep_the_newest() {
        let batch: Vec<Delivery> = (0..10)
            .map(|i| d(&format!("w{i}"), &format!("p{i}"), "succeeded", i, i))
            .collect();
        let out = apply_with_limit(&SidecarStatus::default(), &batch, 4);
        assert_eq!(out.status.counted_prediction_ids, ["p6", "p7", "p8", "p9"]);
        assert_eq!(out.status.predictions, counts(10, 0, 0, 0));
        // Applying the same batch again counts nothing new for the remembered ones.
        let again = apply_with_limit(&out.status, &batch[6..], 4);
        assert_eq!(again.newly_counted, 0);
    }

    #[test]
    fn only_sidecar_fields_are_serialised() {
        let out = apply(
            &SidecarStatus::default(),
            &[d("w1", "p1", "succeeded", 0, 1)],
        );
        let json = serde_json::to_value(out.status.to_status()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "countedPredictionIds",
                "lastPrediction",
                "lastWebhookTime",
                "predictions"
            ]
        );
        assert_eq!(
            SidecarStatus::from_status(&out.status.to_status()),
            out.status
        );
    }
}
