//! The Rust verifier against vectors whose verdicts come from an independent implementation
//! (the `standardwebhooks` Python package; see `hack/gen-webhook-vectors.py`).

use std::time::Duration;

use replicate_operator::signature::{
    SignedHeaders, SigningKey, VerifyError, parse_secret_list, verify,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    secrets: Vec<String>,
    webhook_id: String,
    webhook_timestamp: String,
    webhook_signature: String,
    body: String,
    now: i64,
    tolerance_secs: u64,
    valid: bool,
    expected_error: Option<String>,
}

fn error_kind(e: &VerifyError) -> &'static str {
    match e {
        VerifyError::MissingHeader(_) => "missing_header",
        VerifyError::MalformedHeader(_) => "malformed_header",
        VerifyError::EmptyBody => "empty_body",
        VerifyError::MalformedTimestamp => "malformed_timestamp",
        VerifyError::Stale { .. } => "stale",
        VerifyError::Future { .. } => "future",
        VerifyError::MalformedSignatureHeader(_) => "malformed_signature_header",
        VerifyError::NoMatchingSignature { .. } => "no_matching_signature",
        VerifyError::NoSecret => "no_secret",
    }
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/vectors.json"
    ))
    .expect("the committed vectors");
    serde_json::from_str(&text).expect("vectors.json parses")
}

#[test]
fn every_reference_vector_gets_the_reference_verdict() {
    let fixture = fixture();
    assert!(
        fixture.cases.len() >= 20,
        "expected about 20 vectors, found {}",
        fixture.cases.len()
    );
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let keys: Vec<SigningKey> = case
            .secrets
            .iter()
            .map(|s| SigningKey::from_secret(s).unwrap())
            .collect();
        let headers = SignedHeaders {
            id: Some(&case.webhook_id),
            timestamp: Some(&case.webhook_timestamp),
            signature: Some(&case.webhook_signature),
        };
        let now = jiff::Timestamp::from_second(case.now).unwrap();
        let result = verify(
            &keys,
            headers,
            case.body.as_bytes(),
            now,
            Duration::from_secs(case.tolerance_secs),
        );
        let got = match &result {
            Ok(_) => None,
            Err(e) => Some(error_kind(e)),
        };
        let want = if case.valid {
            None
        } else {
            Some(case.expected_error.as_deref().unwrap_or("?"))
        };
        if got != want {
            failures.push(format!("{}: got {result:?}, want {want:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} vector(s) disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_published_vector_is_among_the_cases() {
    let fixture = fixture();
    let published = fixture
        .cases
        .iter()
        .find(|c| c.name == "published vector")
        .unwrap();
    assert_eq!(
        published.webhook_signature,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    assert!(published.valid);
    // The same secrets also parse as one rotation list.
    assert_eq!(
        parse_secret_list(&published.secrets.join(","))
            .unwrap()
            .len(),
        1
    );
}
