//! Standard Webhooks signatures, as Replicate signs its webhooks.
//!
//! Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`; the key is the base64-decoded
//! part of the account secret after `whsec_`; the signature is standard base64 of HMAC-SHA256,
//! sent as `v1,<base64>` in the `webhook-signature` header.
//!
//! Verification ([`verify`]) is a pure function of the headers, the raw body, the candidate keys
//! and the current time, so every rule is unit-testable without a clock or a server.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD_INDIFFERENT};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Replicate webhook signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A webhook signing key, decoded from its `whsec_…` text form. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Why a secret could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the webhook secret is empty")]
    Empty,
    #[error("the webhook secret is not base64 after the whsec_ prefix")]
    NotBase64,
}

impl SigningKey {
    /// Parses `whsec_<base64>`; the prefix is optional, as in the Standard Webhooks libraries,
    /// and so is the base64 padding (the reference Python library pads before decoding).
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .unwrap_or(secret.trim());
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let bytes = STANDARD_NO_PAD_INDIFFERENT
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(bytes))
    }

    /// Builds a key from raw bytes (for the emulator's generated secrets).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The `whsec_…` text form of this key.
    pub fn to_secret(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of one delivery.
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// The raw HMAC-SHA256 tag of one delivery.
    fn tag(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        self.mac(id, timestamp, body).finalize().into_bytes().into()
    }
}

/// Parses a list of secrets written one after another, separated by commas or whitespace, as
/// `REPLICATE_WEBHOOK_SECRET` may hold the old and the new secret during a rotation.
pub fn parse_secret_list(list: &str) -> Result<Vec<SigningKey>, SecretError> {
    let keys = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(SigningKey::from_secret)
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(keys)
}

/// The default timestamp tolerance, in both directions (Standard Webhooks, Replicate's docs).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The three Standard Webhooks headers of one delivery, as received (`None` when absent).
///
/// Values are text: the HTTP layer turns a header that is not valid UTF-8 into
/// [`VerifyError::MalformedHeader`] before calling [`verify`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// One of the three signed-delivery headers, to say which one is missing or unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Id,
    Timestamp,
    Signature,
}

impl Header {
    /// The header's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Header::Id => "webhook-id",
            Header::Timestamp => "webhook-timestamp",
            Header::Signature => "webhook-signature",
        }
    }
}

impl std::fmt::Display for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a delivery was refused. None of the messages contain key material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the {0} header is missing or empty")]
    MissingHeader(Header),
    #[error("the {0} header is not valid text")]
    MalformedHeader(Header),
    #[error("the request body is empty")]
    EmptyBody,
    #[error("webhook-timestamp is not a whole number of seconds since the Unix epoch")]
    MalformedTimestamp,
    #[error(
        "webhook-timestamp is {age_secs} s in the past, more than the tolerated {tolerance_secs} s"
    )]
    Stale { age_secs: u64, tolerance_secs: u64 },
    #[error(
        "webhook-timestamp is {ahead_secs} s in the future, more than the tolerated {tolerance_secs} s"
    )]
    Future {
        ahead_secs: u64,
        tolerance_secs: u64,
    },
    #[error("webhook-signature is malformed: {0}")]
    MalformedSignatureHeader(&'static str),
    #[error("no v1 signature in webhook-signature matches any of the {keys} configured secret(s)")]
    NoMatchingSignature { keys: usize },
    #[error("no webhook secret is configured for this resource")]
    NoSecret,
}

impl VerifyError {
    /// True when a refetched secret might make the delivery verify (the secret may have been
    /// rotated on Replicate's side since it was cached).
    pub fn may_need_new_secret(&self) -> bool {
        matches!(
            self,
            VerifyError::NoMatchingSignature { .. } | VerifyError::NoSecret
        )
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `webhook-id`: the same on every retry of one message, so the idempotency key.
    pub webhook_id: String,
    /// The `webhook-timestamp` of this delivery attempt, in Unix seconds.
    pub timestamp: i64,
    /// The position in the key list of the key that matched (for rotation diagnostics).
    pub key_index: usize,
}

/// Checks one delivery: headers present, body non-empty, timestamp within `tolerance` of `now`
/// (either way), and some `v1` entry of `webhook-signature` equal, in constant time, to the
/// HMAC under one of `keys` of `id.timestamp.body` (`body` exactly as received).
///
/// Several keys are accepted at once so that a secret rotation never drops a delivery. Entries
/// with another version than `v1` are ignored; an entry without a comma or with a `v1` value
/// that is not base64 makes the whole header malformed, as in the official clients.
pub fn verify(
    keys: &[SigningKey],
    headers: SignedHeaders<'_>,
    body: &[u8],
    now: jiff::Timestamp,
    tolerance: Duration,
) -> Result<Verified, VerifyError> {
    check_delivery(headers, body, now, tolerance)?.verify(keys)
}

/// A delivery that passed every check that needs no key: the first half of [`verify`], so a
/// server can refuse malformed or replayed requests before looking up any secret.
#[derive(Debug)]
pub struct Candidate<'a> {
    id: &'a str,
    timestamp_text: &'a str,
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
    body: &'a [u8],
}

/// Headers present, body non-empty, timestamp well-formed and within tolerance, signature
/// header well-formed.
pub fn check_delivery<'a>(
    headers: SignedHeaders<'a>,
    body: &'a [u8],
    now: jiff::Timestamp,
    tolerance: Duration,
) -> Result<Candidate<'a>, VerifyError> {
    let id = required(headers.id, Header::Id)?;
    let timestamp_text = required(headers.timestamp, Header::Timestamp)?;
    let signature_header = required(headers.signature, Header::Signature)?;
    if body.is_empty() {
        return Err(VerifyError::EmptyBody);
    }
    let timestamp = parse_timestamp(timestamp_text)?;
    check_tolerance(timestamp, now.as_second(), tolerance)?;
    let signatures = parse_signature_header(signature_header)?;
    Ok(Candidate {
        id,
        timestamp_text,
        timestamp,
        signatures,
        body,
    })
}

impl Candidate<'_> {
    /// The `webhook-id`.
    pub fn webhook_id(&self) -> &str {
        self.id
    }

    /// The second half of [`verify`]: does a `v1` signature match under one of `keys`?
    pub fn verify(&self, keys: &[SigningKey]) -> Result<Verified, VerifyError> {
        if keys.is_empty() {
            return Err(VerifyError::NoSecret);
        }
        for (key_index, key) in keys.iter().enumerate() {
            let expected = key.tag(self.id, self.timestamp_text, self.body);
            // Compare against every entry without stopping early on a match, so the time taken
            // does not depend on which entry matched.
            let matched = self
                .signatures
                .iter()
                .fold(subtle::Choice::from(0), |acc, candidate| {
                    acc | expected[..].ct_eq(candidate.as_slice())
                });
            if bool::from(matched) {
                return Ok(Verified {
                    webhook_id: self.id.to_owned(),
                    timestamp: self.timestamp,
                    key_index,
                });
            }
        }
        Err(VerifyError::NoMatchingSignature { keys: keys.len() })
    }
}

fn required(value: Option<&str>, header: Header) -> Result<&str, VerifyError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(VerifyError::MissingHeader(header)),
    }
}

/// Unix seconds, ASCII digits only: no sign, no fraction, no spaces (the signed content holds the
/// header text verbatim, so a lenient parse would only let odd spellings through).
pub fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedTimestamp);
    }
    text.parse::<i64>()
        .map_err(|_| VerifyError::MalformedTimestamp)
}

fn check_tolerance(timestamp: i64, now: i64, tolerance: Duration) -> Result<(), VerifyError> {
    let tolerance_secs = tolerance.as_secs();
    // i128: neither side can overflow whatever the header or the clock says.
    let diff = i128::from(now) - i128::from(timestamp);
    let clamp = |d: i128| u64::try_from(d).unwrap_or(u64::MAX);
    if diff > i128::from(tolerance_secs) {
        return Err(VerifyError::Stale {
            age_secs: clamp(diff),
            tolerance_secs,
        });
    }
    if -diff > i128::from(tolerance_secs) {
        return Err(VerifyError::Future {
            ahead_secs: clamp(-diff),
            tolerance_secs,
        });
    }
    Ok(())
}

/// The decoded `v1` signatures of a `webhook-signature` header (space-separated
/// `<version>,<base64>` entries).
pub fn parse_signature_header(header: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let mut v1 = Vec::new();
    let mut entries = 0usize;
    for entry in header.split(' ').filter(|e| !e.is_empty()) {
        entries += 1;
        let (version, value) =
            entry
                .split_once(',')
                .ok_or(VerifyError::MalformedSignatureHeader(
                    "an entry has no version prefix",
                ))?;
        if version != "v1" {
            continue;
        }
        let decoded = STANDARD
            .decode(value)
            .map_err(|_| VerifyError::MalformedSignatureHeader("a v1 signature is not base64"))?;
        v1.push(decoded);
    }
    if entries == 0 {
        return Err(VerifyError::MalformedSignatureHeader("no entries"));
    }
    Ok(v1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from Replicate's official client tests (originally Svix's).
    #[test]
    fn published_vector_signs_as_expected() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    fn key() -> SigningKey {
        SigningKey::from_secret(SECRET).unwrap()
    }

    fn other_key() -> SigningKey {
        SigningKey::from_bytes(b"another account's secret".to_vec())
    }

    fn headers<'a>(sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(ID),
            timestamp: Some(TS),
            signature: Some(sig),
        }
    }

    fn check(
        keys: &[SigningKey],
        h: SignedHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        verify(keys, h, body, at(now), DEFAULT_TOLERANCE)
    }

    const NOW: i64 = 1614265330;

    #[test]
    fn published_vector_verifies() {
        let v = check(&[key()], headers(SIG), BODY, NOW).unwrap();
        assert_eq!(
            v,
            Verified {
                webhook_id: ID.into(),
                timestamp: NOW,
                key_index: 0
            }
        );
    }

    #[test]
    fn tampered_body_signature_or_key_is_refused() {
        let refused = VerifyError::NoMatchingSignature { keys: 1 };
        assert_eq!(
            check(&[key()], headers(SIG), br#"{"test": 2432232315}"#, NOW),
            Err(refused.clone())
        );
        let tampered = SIG.replace("g0h", "g1h");
        assert_eq!(
            check(&[key()], headers(&tampered), BODY, NOW),
            Err(refused.clone())
        );
        assert_eq!(check(&[other_key()], headers(SIG), BODY, NOW), Err(refused));
        // The id and the timestamp are signed too.
        let h = SignedHeaders {
            id: Some("msg_other"),
            ..headers(SIG)
        };
        assert!(matches!(
            check(&[key()], h, BODY, NOW),
            Err(VerifyError::NoMatchingSignature { .. })
        ));
        let h = SignedHeaders {
            timestamp: Some("1614265331"),
            ..headers(SIG)
        };
        assert!(matches!(
            check(&[key()], h, BODY, NOW),
            Err(VerifyError::NoMatchingSignature { .. })
        ));
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_ignored() {
        let bogus = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let multi = format!("{bogus} v2,{} {SIG}", &SIG[3..]);
        assert!(check(&[key()], headers(&multi), BODY, NOW).is_ok());
        // The right value under another version is not accepted.
        let v2_only = format!("v2,{}", &SIG[3..]);
        assert_eq!(
            check(&[key()], headers(&v2_only), BODY, NOW),
            Err(VerifyError::NoMatchingSignature { keys: 1 })
        );
    }

    #[test]
    fn rotation_accepts_either_key() {
        let keys = [other_key(), key()];
        assert_eq!(check(&keys, headers(SIG), BODY, NOW).unwrap().key_index, 1);
        let new_sig = other_key().sign(ID, TS, BODY);
        assert_eq!(
            check(&keys, headers(&new_sig), BODY, NOW)
                .unwrap()
                .key_index,
            0
        );
        assert_eq!(
            check(&[], headers(SIG), BODY, NOW),
            Err(VerifyError::NoSecret)
        );
    }

    #[test]
    fn each_missing_header_and_empty_body_is_named() {
        let k = [key()];
        let cases = [
            (
                SignedHeaders {
                    id: None,
                    ..headers(SIG)
                },
                Header::Id,
            ),
            (
                SignedHeaders {
                    id: Some(" "),
                    ..headers(SIG)
                },
                Header::Id,
            ),
            (
                SignedHeaders {
                    timestamp: None,
                    ..headers(SIG)
                },
                Header::Timestamp,
            ),
            (
                SignedHeaders {
                    signature: None,
                    ..headers(SIG)
                },
                Header::Signature,
            ),
            (
                SignedHeaders {
                    signature: Some(""),
                    ..headers(SIG)
                },
                Header::Signature,
            ),
        ];
        for (h, which) in cases {
            assert_eq!(
                check(&k, h, BODY, NOW),
                Err(VerifyError::MissingHeader(which))
            );
        }
        assert_eq!(
            check(&k, headers(SIG), b"", NOW),
            Err(VerifyError::EmptyBody)
        );
    }

    #[test]
    fn tolerance_is_inclusive_and_applies_both_ways() {
        let k = [key()];
        assert!(check(&k, headers(SIG), BODY, NOW + 300).is_ok());
        assert!(check(&k, headers(SIG), BODY, NOW - 300).is_ok());
        assert_eq!(
            check(&k, headers(SIG), BODY, NOW + 301),
            Err(VerifyError::Stale {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(&k, headers(SIG), BODY, NOW - 301),
            Err(VerifyError::Future {
                ahead_secs: 301,
                tolerance_secs: 300
            })
        );
        let strict = verify(&k, headers(SIG), BODY, at(NOW + 2), Duration::from_secs(1));
        assert!(matches!(strict, Err(VerifyError::Stale { .. })));
    }

    #[test]
    fn malformed_timestamps_are_refused_before_the_signature() {
        for ts in [
            "abc",
            "-1614265330",
            "1614265330.0",
            "+1614265330",
            " 1614265330",
            "99999999999999999999",
            "1e9",
        ] {
            let h = SignedHeaders {
                timestamp: Some(ts),
                ..headers(SIG)
            };
            assert_eq!(
                check(&[key()], h, BODY, NOW),
                Err(VerifyError::MalformedTimestamp),
                "{ts:?}"
            );
        }
    }

    #[test]
    fn malformed_signature_headers_are_refused() {
        for sig in [
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,not*base64",
            "   ",
            "v1 g0hM",
        ] {
            let result = check(&[key()], headers(sig), BODY, NOW);
            assert!(
                matches!(
                    result,
                    Err(VerifyError::MalformedSignatureHeader(_))
                        | Err(VerifyError::MissingHeader(_))
                ),
                "{sig:?}: {result:?}"
            );
        }
        // Extra spaces between entries are tolerated.
        assert!(check(&[key()], headers(&format!("  {SIG}  ")), BODY, NOW).is_ok());
    }

    #[test]
    fn secret_lists_and_padding() {
        let keys = parse_secret_list(&format!("{SECRET}, whsec_QUJD\n{}", "whsec_QUJDRA")).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0], key());
        assert_eq!(keys[2], SigningKey::from_bytes(b"ABCD".to_vec()));
        assert_eq!(parse_secret_list(" , "), Err(SecretError::Empty));
        assert_eq!(parse_secret_list("whsec_***"), Err(SecretError::NotBase64));
        assert_eq!(SigningKey::from_secret("whsec_"), Err(SecretError::Empty));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }
}
