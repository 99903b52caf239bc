//! Whatever order Replicate's deliveries arrive in, and however they are duplicated or split
//! into batches, the recorded status ends the same: each prediction counted once, the newest
//! prediction shown at its furthest state.

use proptest::prelude::*;
use replicate_operator::webhook::apply::{Delivery, SidecarStatus, apply};
use replicate_operator::webhook::prediction::{PredictionEvent, PredictionStatus};

const T0: i64 = 1_717_200_000;
const FINAL: [&str; 4] = ["succeeded", "failed", "canceled", "aborted"];

/// One prediction's lifecycle: which of starting / processing / a final state were delivered.
fn lifecycle() -> impl Strategy<Value = (bool, bool, Option<usize>)> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0..FINAL.len()),
    )
}

fn deliveries(lifecycles: &[(bool, bool, Option<usize>)], redeliver: &[bool]) -> Vec<Delivery> {
    let mut out = Vec::new();
    for (i, (start, proc_, fin)) in lifecycles.iter().enumerate() {
        let mut states = Vec::new();
        if *start {
            states.push("starting");
        }
        if *proc_ {
            states.push("processing");
        }
        if let Some(f) = fin {
            states.push(FINAL[*f]);
        }
        for (j, s) in states.into_iter().enumerate() {
            let d = Delivery {
                webhook_id: format!("msg_{i}_{s}"),
                received_at: jiff::Timestamp::from_second(T0 + (i * 10 + j) as i64).unwrap(),
                prediction: PredictionEvent {
                    id: format!("p{i:02}"),
                    status: PredictionStatus::parse(s),
                    created_at: Some(
                        jiff::Timestamp::from_second(T0 + i as i64 * 10)
                            .unwrap()
                            .to_string(),
                    ),
                    started_at: None,
                    completed_at: None,
                    predict_time: None,
                    error: None,
                },
            };
            if redeliver.get(out.len()).copied().unwrap_or(false) {
                out.push(d.clone());
            }
            out.push(d);
        }
    }
    out
}

fn apply_in_batches(batches: &[Vec<Delivery>]) -> SidecarStatus {
    batches
        .iter()
        .fold(SidecarStatus::default(), |status, batch| {
            apply(&status, batch).status
        })
}

proptest! {
    #[test]
    fn order_duplication_and_batching_do_not_change_the_outcome(
        lifecycles in proptest::collection::vec(lifecycle(), 1..8),
        redeliver in proptest::collection::vec(any::<bool>(), 24),
        seed in any::<u64>(),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
    ) {
        let ordered = deliveries(&lifecycles, &redeliver);
        prop_assume!(!ordered.is_empty());
        let reference = apply(&SidecarStatus::default(), &ordered).status;

        // A deterministic shuffle from the seed, then cut into batches.
        let mut shuffled = ordered.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(shuffled.len())).collect();
        points.sort();
        let mut batches = Vec::new();
        let mut start = 0;
        for p in points.into_iter().chain([shuffled.len()]) {
            batches.push(shuffled[start..p.max(start)].to_vec());
            start = p.max(start);
        }
        let got = apply_in_batches(&batches);

        prop_assert_eq!(got.predictions, reference.predictions);
        prop_assert_eq!(&got.last_prediction, &reference.last_prediction);
        prop_assert_eq!(&got.last_webhook_time, &reference.last_webhook_time);
        let mut a = got.counted_prediction_ids.clone();
        let mut b = reference.counted_prediction_ids.clone();
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);

        // Each finished prediction counted exactly once.
        let finished = lifecycles.iter().filter(|l| l.2.is_some()).count() as i64;
        let c = got.predictions.unwrap_or_default();
        prop_assert_eq!(c.succeeded + c.failed + c.canceled + c.aborted, finished);

        // The newest delivered prediction is last, at its furthest delivered state.
        let newest = ordered.iter().max_by_key(|d| d.prediction.id.clone()).unwrap();
        let furthest = ordered.iter().filter(|d| d.prediction.id == newest.prediction.id)
            .map(|d| d.prediction.status.rank()).max().unwrap();
        let last = got.last_prediction.unwrap();
        prop_assert_eq!(&last.id, &newest.prediction.id);
        prop_assert_eq!(PredictionStatus::parse(&last.status).rank(), furthest);
    }
}
