//! A benchmark-friendly entry point: sign N deliveries once, then verify them all.

use std::time::Duration;

use crate::signature::{SignedHeaders, SigningKey, verify};

/// One signed delivery, owned.
#[derive(Debug, Clone)]
pub struct SignedDelivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
}

/// `n` deliveries of `body_len`-byte bodies signed by `key` at Unix time `timestamp`.
pub fn signed_deliveries(
    key: &SigningKey,
    n: usize,
    body_len: usize,
    timestamp: i64,
) -> Vec<SignedDelivery> {
    let timestamp = timestamp.to_string();
    (0..n)
        .map(|i| {
            let id = format!("msg_{i:08}");
            let mut body = format!(r#"{{"id":"p{i:08}","status":"succeeded","pad":""#).into_bytes();
            body.resize(body_len.saturating_sub(2).max(body.len()), b'x');
            body.extend_from_slice(b"\"}");
            let signature = key.sign(&id, &timestamp, &body);
            SignedDelivery {
                id,
                timestamp: timestamp.clone(),
                signature,
                body,
            }
        })
        .collect()
}

/// Verifies every delivery against `keys` at `now`; returns how many verified.
pub fn verify_all(
    keys: &[SigningKey],
    deliveries: &[SignedDelivery],
    now: jiff::Timestamp,
    tolerance: Duration,
) -> usize {
    deliveries
        .iter()
        .filter(|d| {
            let headers = SignedHeaders {
                id: Some(&d.id),
                timestamp: Some(&d.timestamp),
                signature: Some(&d.signature),
            };
            verify(keys, headers, &d.body, now, tolerance).is_ok()
        })
        .count()
}
