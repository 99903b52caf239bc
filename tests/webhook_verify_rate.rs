//! Measures in-process verification throughput. Ignored by default (it measures, it does not
//! check); run with:
//!
//!     cargo test --release --test webhook_verify_rate -- --ignored --nocapture

use std::time::{Duration, Instant};

use replicate_operator::signature::SigningKey;
use replicate_operator::webhook::bench::{signed_deliveries, verify_all};

#[test]
#[ignore = "a measurement, run by hand"]
fn verification_rate() {
    let key = SigningKey::from_bytes(vec![7; 24]);
    let now = jiff::Timestamp::now();
    for body_len in [1024, 16 * 1024] {
        let deliveries = signed_deliveries(&key, 100_000, body_len, now.as_second());
        let started = Instant::now();
        let ok = verify_all(
            std::slice::from_ref(&key),
            &deliveries,
            now,
            Duration::from_secs(300),
        );
        let elapsed = started.elapsed();
        assert_eq!(ok, deliveries.len());
        println!(
            "{} deliveries of {body_len} B verified in {elapsed:?}: {:.0} verifications/s on one core",
            ok,
            ok as f64 / elapsed.as_secs_f64()
        );
    }
}

#[test]
fn the_benchmark_inputs_verify() {
    let key = SigningKey::from_bytes(vec![7; 24]);
    let deliveries = signed_deliveries(&key, 10, 256, 1_700_000_000);
    assert_eq!(deliveries[0].body.len(), 256);
    let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    assert_eq!(
        verify_all(
            std::slice::from_ref(&key),
            &deliveries,
            now,
            Duration::from_secs(300)
        ),
        10
    );
    let other = SigningKey::from_bytes(vec![8; 24]);
    assert_eq!(
        verify_all(&[other], &deliveries, now, Duration::from_secs(300)),
        0
    );
}
