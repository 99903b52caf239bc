//! Errors of the Replicate client, classified from the HTTP answer (or its absence).

use std::time::{Duration, SystemTime};

use super::types::Problem;

/// What went wrong with a Replicate API call. No variant ever holds the API token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404: the deployment, version or prediction does not exist (or the token cannot see it).
    #[error("not found: {}", detail_or(.detail, "the object does not exist"))]
    NotFound { detail: Option<String> },
    /// 401: the token is missing, malformed or revoked.
    #[error("unauthenticated: {}", detail_or(.detail, "the API token was refused"))]
    Unauthenticated { detail: Option<String> },
    /// 403: the token is valid but may not do this.
    #[error("forbidden: {}", detail_or(.detail, "the token may not do this"))]
    Forbidden { detail: Option<String> },
    /// 409: the request conflicts with the current state (e.g. a deployment name already taken,
    /// or a delete refused because the deployment has not been offline long enough).
    #[error("conflict: {}", detail_or(.detail, "the request conflicts with the current state"))]
    Conflict { detail: Option<String> },
    /// Any other 4xx: the request itself is wrong and retrying it unchanged will not help.
    #[error("invalid request (HTTP {status}): {}", detail_or(.detail, "rejected by the API"))]
    Invalid { status: u16, detail: Option<String> },
    /// 429: throttled. `retry_after` comes from `Retry-After` or `ratelimit-reset`.
    #[error("rate limited{}: {}", wait_text(*.retry_after), detail_or(.detail, "too many requests"))]
    RateLimited {
        retry_after: Option<Duration>,
        detail: Option<String>,
    },
    /// 5xx: Replicate failed.
    #[error("server error (HTTP {status}): {}", detail_or(.detail, "Replicate failed"))]
    Server {
        status: u16,
        detail: Option<String>,
        retry_after: Option<Duration>,
    },
    /// The request could not be sent or its answer never arrived (connection refused or reset).
    #[error("transport error: {message}")]
    Transport { message: String },
    /// The connect or request timeout elapsed.
    #[error("timed out: {message}")]
    Timeout { message: String },
    /// A 2xx answer whose body is not what the API documents.
    #[error("unexpected response: {message}")]
    UnexpectedResponse { message: String },
}

fn detail_or<'a>(detail: &'a Option<String>, fallback: &'a str) -> &'a str {
    detail
        .as_deref()
        .filter(|d| !d.is_empty())
        .unwrap_or(fallback)
}

fn wait_text(wait: Option<Duration>) -> String {
    wait.map(|w| format!(" (retry after {:.1}s)", w.as_secs_f64()))
        .unwrap_or_default()
}

/// A coarse class for metrics labels and event reasons; stable strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    NotFound,
    Unauthenticated,
    Forbidden,
    Conflict,
    Invalid,
    RateLimited,
    Server,
    Transport,
    Timeout,
    UnexpectedResponse,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::RateLimited => "rate_limited",
            Self::Server => "server",
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::UnexpectedResponse => "unexpected_response",
        }
    }
}

impl ApiError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound { .. } => ErrorClass::NotFound,
            Self::Unauthenticated { .. } => ErrorClass::Unauthenticated,
            Self::Forbidden { .. } => ErrorClass::Forbidden,
            Self::Conflict { .. } => ErrorClass::Conflict,
            Self::Invalid { .. } => ErrorClass::Invalid,
            Self::RateLimited { .. } => ErrorClass::RateLimited,
            Self::Server { .. } => ErrorClass::Server,
            Self::Transport { .. } => ErrorClass::Transport,
            Self::Timeout { .. } => ErrorClass::Timeout,
            Self::UnexpectedResponse { .. } => ErrorClass::UnexpectedResponse,
        }
    }

    /// Whether the same request may succeed later without any change (throttling, outages,
    /// network trouble). Callers still decide whether the *method* is safe to repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Transport { .. }
                | Self::Timeout { .. }
        )
    }

    /// How long the API asked us to wait, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The API's own explanation (`detail` of the problem body), when there was one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::NotFound { detail }
            | Self::Unauthenticated { detail }
            | Self::Forbidden { detail }
            | Self::Conflict { detail }
            | Self::Invalid { detail, .. }
            | Self::RateLimited { detail, .. }
            | Self::Server { detail, .. } => detail.as_deref(),
            Self::Transport { message }
            | Self::Timeout { message }
            | Self::UnexpectedResponse { message } => Some(message),
        }
    }

    /// The HTTP status, for errors that had one.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            Self::NotFound { .. } => 404,
            Self::Unauthenticated { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::Conflict { .. } => 409,
            Self::Invalid { status, .. } | Self::Server { status, .. } => *status,
            Self::RateLimited { .. } => 429,
            _ => return None,
        })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// The headers that tell a client when to come back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitHints {
    pub retry_after: Option<String>,
    pub ratelimit_reset: Option<String>,
}

impl WaitHints {
    /// `Retry-After` wins; `ratelimit-reset` (seconds until the budget refills) is the fallback.
    pub fn wait(&self, now: SystemTime) -> Option<Duration> {
        self.retry_after
            .as_deref()
            .and_then(|value| parse_retry_after(value, now))
            .or_else(|| self.ratelimit_reset.as_deref().and_then(parse_seconds))
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(seconds) = parse_seconds(value) {
        return Some(seconds);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whole or fractional non-negative seconds.
fn parse_seconds(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Turns a non-2xx answer into an error. The body is parsed as a problem when it is one, and
/// otherwise its text (trimmed and shortened) becomes the detail, so nothing useful is lost.
pub fn classify(status: u16, hints: &WaitHints, body: &[u8], now: SystemTime) -> ApiError {
    let detail = problem_detail(body);
    match status {
        401 => ApiError::Unauthenticated { detail },
        403 => ApiError::Forbidden { detail },
        404 => ApiError::NotFound { detail },
        409 => ApiError::Conflict { detail },
        429 => ApiError::RateLimited {
            retry_after: hints.wait(now),
            detail,
        },
        500..=599 => ApiError::Server {
            status,
            detail,
            retry_after: hints.wait(now),
        },
        _ => ApiError::Invalid { status, detail },
    }
}

const MAX_DETAIL_CHARS: usize = 500;

fn problem_detail(body: &[u8]) -> Option<String> {
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        return problem.detail.or(problem.title);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(MAX_DETAIL_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = at(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        let later = httpdate::fmt_http_date(at(1_700_000_030));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(at(1_699_999_000));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retry_after_wins_over_ratelimit_reset() {
        let hints = WaitHints {
            retry_after: Some("3".into()),
            ratelimit_reset: Some("9".into()),
        };
        assert_eq!(hints.wait(at(0)), Some(Duration::from_secs(3)));
        let hints = WaitHints {
            retry_after: None,
            ratelimit_reset: Some("9".into()),
        };
        assert_eq!(hints.wait(at(0)), Some(Duration::from_secs(9)));
        assert_eq!(WaitHints::default().wait(at(0)), None);
    }

    #[test]
    fn classification_by_status() {
        let none = WaitHints::default();
        let body = br#"{"title":"Unauthenticated","detail":"You did not pass a valid authentication token","status":401}"#;
        let err = classify(401, &none, body, at(0));
        assert_eq!(err.class(), ErrorClass::Unauthenticated);
        assert_eq!(
            err.detail(),
            Some("You did not pass a valid authentication token")
        );
        assert!(!err.is_retryable());
        assert_eq!(
            classify(403, &none, b"", at(0)).class(),
            ErrorClass::Forbidden
        );
        assert_eq!(
            classify(404, &none, b"{\"status\":404}", at(0)).detail(),
            None
        );
        assert_eq!(
            classify(409, &none, b"", at(0)).class(),
            ErrorClass::Conflict
        );
        let invalid = classify(422, &none, br#"{"detail":"bad hardware"}"#, at(0));
        assert_eq!(
            invalid,
            ApiError::Invalid {
                status: 422,
                detail: Some("bad hardware".into())
            }
        );
        assert_eq!(classify(400, &none, b"", at(0)).status(), Some(400));
        let server = classify(502, &none, b"<html>Bad gateway</html>", at(0));
        assert_eq!(server.detail(), Some("<html>Bad gateway</html>"));
        assert!(server.is_retryable());
    }

    #[test]
    fn throttling_carries_its_wait() {
        let hints = WaitHints {
            retry_after: None,
            ratelimit_reset: Some("2".into()),
        };
        let body = br#"{"detail":"Request was throttled. Your rate limit resets in ~2s."}"#;
        let err = classify(429, &hints, body, at(0));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        assert!(err.is_retryable());
        assert!(err.to_string().contains("retry after 2.0s"), "{err}");
    }

    #[test]
    fn long_bodies_are_shortened() {
        let body = "x".repeat(10_000);
        let err = classify(400, &WaitHints::default(), body.as_bytes(), at(0));
        assert_eq!(err.detail().unwrap().len(), MAX_DETAIL_CHARS);
    }
}
