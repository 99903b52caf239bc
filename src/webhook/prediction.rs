//! The part of a webhook body the sidecar reads: a Replicate prediction object
//! (`replicate-api.md` section 4.3), parsed leniently so that new or missing optional fields
//! never cause a refusal, but strictly enough that a body without an `id` and a `status` is
//! refused as not being a prediction at all.

use serde::Deserialize;

/// Longest prediction ID accepted. Replicate's are 26 characters; the bound keeps arbitrary
/// signed-but-odd input from bloating the status, where IDs are stored.
pub const MAX_ID_LEN: usize = 128;
/// Longest status text accepted.
const MAX_STATUS_LEN: usize = 64;
/// Longest error text kept in `status.lastPrediction.error`.
pub const MAX_ERROR_LEN: usize = 1024;

/// A prediction's lifecycle state. Unknown values are kept, not refused: Replicate added
/// `aborted` after the first clients shipped, and may add more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredictionStatus {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    Aborted,
    Unknown(String),
}

impl PredictionStatus {
    pub fn parse(text: &str) -> Self {
        match text {
            "starting" => Self::Starting,
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "aborted" => Self::Aborted,
            other => Self::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
            Self::Unknown(other) => other,
        }
    }

    /// A final state: the prediction will not change any more and is counted once.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted
        )
    }

    /// How far along the lifecycle this state is. A delivery for the same prediction replaces
    /// what is recorded only with a strictly higher rank, so late or reordered deliveries never
    /// move a prediction backwards and a final state is never replaced. Unknown states rank
    /// lowest: anything known is more informative.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Unknown(_) => 0,
            Self::Starting => 1,
            Self::Processing => 2,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted => 3,
        }
    }
}

/// The fields of a delivered prediction that the status records.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionEvent {
    pub id: String,
    pub status: PredictionStatus,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub predict_time: Option<f64>,
    pub error: Option<String>,
}

/// Why a (verified) body is not a prediction.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PredictionError {
    #[error("the body is not a JSON object with string fields id and status: {0}")]
    NotAPrediction(String),
    #[error(
        "the prediction id is empty, longer than {MAX_ID_LEN} characters or not printable ASCII"
    )]
    BadId,
    #[error("the prediction status is empty or longer than {MAX_STATUS_LEN} characters")]
    BadStatus,
}

#[derive(Deserialize)]
struct Wire {
    id: String,
    status: String,
    #[serde(default)]
    created_at: Option<serde_json::Value>,
    #[serde(default)]
    started_at: Option<serde_json::Value>,
    #[serde(default)]
    completed_at: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    metrics: Option<serde_json::Value>,
}

impl PredictionEvent {
    /// Parses a webhook body. Only `id` and `status` are required; optional fields of an
    /// unexpected type are dropped rather than refused, since the signature already vouches for
    /// the sender.
    pub fn from_json(body: &[u8]) -> Result<Self, PredictionError> {
        let wire: Wire = serde_json::from_slice(body)
            .map_err(|e| PredictionError::NotAPrediction(e.to_string()))?;
        if wire.id.is_empty()
            || wire.id.len() > MAX_ID_LEN
            || !wire.id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(PredictionError::BadId);
        }
        if wire.status.is_empty() || wire.status.len() > MAX_STATUS_LEN {
            return Err(PredictionError::BadStatus);
        }
        let text = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        };
        let error = match wire.error {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => trim_error(&s),
            // Not a string in the published schema, but keep whatever was said.
            Some(other) => trim_error(&other.to_string()),
        };
        let predict_time = wire
            .metrics
            .as_ref()
            .and_then(|m| m.get("predict_time"))
            .and_then(serde_json::Value::as_f64)
            .filter(|t| t.is_finite());
        Ok(Self {
            id: wire.id,
            status: PredictionStatus::parse(&wire.status),
            created_at: text(wire.created_at),
            started_at: text(wire.started_at),
            completed_at: text(wire.completed_at),
            predict_time,
            error,
        })
    }

    /// `created_at` as an instant, when present and readable.
    pub fn created_instant(&self) -> Option<jiff::Timestamp> {
        parse_instant(self.created_at.as_deref())
    }
}

pub(crate) fn parse_instant(text: Option<&str>) -> Option<jiff::Timestamp> {
    text.and_then(|t| t.parse::<jiff::Timestamp>().ok())
}

/// Error text trimmed of surrounding whitespace and cut to [`MAX_ERROR_LEN`] characters (on a
/// character boundary, marked with an ellipsis): model errors can carry whole tracebacks, and the
/// status is not the place for them.
pub fn trim_error(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match text.char_indices().nth(MAX_ERROR_LEN) {
        None => Some(text.to_owned()),
        Some((cut, _)) => Some(format!("{}…", &text[..cut])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_prediction() {
        let body = br#"{"id":"gm3qorzdhgbfurvjtvhg6dckhu","model":"a/b","version":"hidden","status":"failed",
            "input":{},"output":null,"error":"  CUDA out of memory \n","created_at":"2024-06-01T12:00:00.5Z",
            "started_at":"2024-06-01T12:00:01Z","completed_at":"2024-06-01T12:00:09Z",
            "metrics":{"predict_time":7.25,"total_time":9.0},"urls":{"get":"x"}}"#;
        let p = PredictionEvent::from_json(body).unwrap();
        assert_eq!(p.id, "gm3qorzdhgbfurvjtvhg6dckhu");
        assert_eq!(p.status, PredictionStatus::Failed);
        assert_eq!(p.error.as_deref(), Some("CUDA out of memory"));
        assert_eq!(p.predict_time, Some(7.25));
        assert_eq!(
            p.created_instant(),
            Some("2024-06-01T12:00:00.5Z".parse().unwrap())
        );
    }

    #[test]
    fn tolerates_missing_and_oddly_typed_optional_fields() {
        let p = PredictionEvent::from_json(
            br#"{"id":"x","status":"exploding","created_at":5,"metrics":[1]}"#,
        )
        .unwrap();
        assert_eq!(p.status, PredictionStatus::Unknown("exploding".into()));
        assert_eq!(p.status.rank(), 0);
        assert!(!p.status.is_terminal());
        assert_eq!((p.created_at, p.predict_time, p.error), (None, None, None));
    }

    #[test]
    fn refuses_bodies_that_are_not_predictions() {
        for body in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"id":"x"}"#,
            br#"{"id":1,"status":"succeeded"}"#,
        ] {
            assert!(
                matches!(
                    PredictionEvent::from_json(body),
                    Err(PredictionError::NotAPrediction(_))
                ),
                "{body:?}"
            );
        }
        assert_eq!(
            PredictionEvent::from_json(br#"{"id":"","status":"succeeded"}"#),
            Err(PredictionError::BadId)
        );
        assert_eq!(
            PredictionEvent::from_json(br#"{"id":"a b","status":"succeeded"}"#),
            Err(PredictionError::BadId)
        );
        let long = format!(
            r#"{{"id":"{}","status":"succeeded"}}"#,
            "a".repeat(MAX_ID_LEN + 1)
        );
        assert_eq!(
            PredictionEvent::from_json(long.as_bytes()),
            Err(PredictionError::BadId)
        );
        assert_eq!(
            PredictionEvent::from_json(br#"{"id":"x","status":""}"#),
            Err(PredictionError::BadStatus)
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN + 10);
        let cut = trim_error(&long).unwrap();
        assert_eq!(cut.chars().count(), MAX_ERROR_LEN + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(trim_error("   "), None);
    }

    #[test]
    fn ranks_never_let_a_final_state_be_overtaken() {
        let order = ["exploding", "starting", "processing", "succeeded"];
        let ranks: Vec<u8> = order
            .iter()
            .map(|s| PredictionStatus::parse(s).rank())
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]));
        for t in ["succeeded", "failed", "canceled", "aborted"] {
            assert!(PredictionStatus::parse(t).is_terminal());
            assert_eq!(PredictionStatus::parse(t).as_str(), t);
        }
    }
}
