//! Arbitrary input never makes the header parser or the verifier panic: it only returns errors
//! (or, for a correctly signed delivery, success).

use std::time::Duration;

use proptest::prelude::*;
use replicate_operator::signature::{
    SignedHeaders, SigningKey, parse_signature_header, parse_timestamp, verify,
};

fn header_text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        any::<String>().prop_map(Some),
        "(v[0-9a-z]{0,2},[A-Za-z0-9+/=]{0,50} ?){0,5}".prop_map(Some),
        "[0-9]{0,20}".prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_headers_and_bodies_only_produce_errors(
        id in header_text(),
        ts in header_text(),
        sig in header_text(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        now in jiff::Timestamp::MIN.as_second()..=jiff::Timestamp::MAX.as_second(),
        tolerance in any::<u64>(),
        key_bytes in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let keys = [SigningKey::from_bytes(key_bytes)];
        let headers = SignedHeaders { id: id.as_deref(), timestamp: ts.as_deref(), signature: sig.as_deref() };
        let now = jiff::Timestamp::from_second(now).unwrap();
        // A random signature cannot match: anything but an error would be a forgery.
        prop_assert!(verify(&keys, headers, &body, now, Duration::from_secs(tolerance)).is_err());
        if let Some(sig) = sig.as_deref() {
            let _ = parse_signature_header(sig);
        }
        if let Some(ts) = ts.as_deref() {
            let _ = parse_timestamp(ts);
        }
    }

    #[test]
    fn any_correctly_signed_delivery_verifies_and_any_flipped_bit_does_not(
        id in "[a-zA-Z0-9_]{1,40}",
        ts in 0i64..4_000_000_000,
        body in proptest::collection::vec(any::<u8>(), 1..512),
        key_bytes in proptest::collection::vec(any::<u8>(), 1..64),
        flip in any::<proptest::sample::Index>(),
    ) {
        let key = SigningKey::from_bytes(key_bytes);
        let ts_text = ts.to_string();
        let sig = key.sign(&id, &ts_text, &body);
        let headers = SignedHeaders { id: Some(&id), timestamp: Some(&ts_text), signature: Some(&sig) };
        let now = jiff::Timestamp::from_second(ts).unwrap();
        prop_assert!(verify(std::slice::from_ref(&key), headers, &body, now, Duration::from_secs(300)).is_ok());
        let mut tampered = body.clone();
        let i = flip.index(tampered.len());
        tampered[i] ^= 0x01;
        prop_assert!(verify(&[key], headers, &tampered, now, Duration::from_secs(300)).is_err());
    }
}
