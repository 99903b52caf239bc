//! When to repeat a request, and how long to wait before doing so.

use std::time::Duration;

use super::error::ApiError;

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles on each further retry.
    pub initial_backoff: Duration,
    /// Cap of the computed backoff.
    pub max_backoff: Duration,
    /// The longest server-requested wait (`Retry-After`) we sit out inside one call. A longer
    /// one ends the call with the error, so the caller can requeue instead of blocking a worker.
    pub max_server_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            max_server_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff before retry number `retry` (1-based), given a uniform `jitter` in [0, 1):
    /// "equal jitter", half fixed and half random, so waits spread out but never collapse to 0.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// How long to wait before repeating after `error` on retry number `retry`, or `None` when
    /// the call should end with the error. A server-requested wait is honoured as a floor.
    pub fn delay_before_retry(
        &self,
        method: &reqwest::Method,
        error: &ApiError,
        retry: u32,
        jitter: f64,
    ) -> Option<Duration> {
        if retry >= self.max_attempts || !method_may_retry(method, error) {
            return None;
        }
        let backoff = self.backoff(retry, jitter);
        match error.retry_after() {
            Some(wait) if wait > self.max_server_wait => None,
            Some(wait) => Some(wait.max(backoff.min(wait + self.initial_backoff))),
            None => Some(backoff),
        }
    }
}

/// Which failures each method may be repeated on.
///
/// - GET is safe: throttling, any 5xx, transport failures and timeouts.
/// - PATCH and DELETE only on answers that say the request was not processed: 429, 503, 504
///   (as the official Python client). A PATCH repeated after a lost answer would make a second
///   release; a DELETE would turn into a confusing 404.
/// - POST never: a create whose answer was lost may have happened, so the caller looks the
///   object up by name instead; a repeated prediction would run (and bill) twice.
pub fn method_may_retry(method: &reqwest::Method, error: &ApiError) -> bool {
    use reqwest::Method;
    if *method == Method::GET || *method == Method::HEAD {
        error.is_retryable()
    } else if *method == Method::PATCH || *method == Method::DELETE {
        matches!(error, ApiError::RateLimited { .. })
            || matches!(
                error,
                ApiError::Server {
                    status: 503 | 504,
                    ..
                }
            )
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::Method;

    fn server(status: u16) -> ApiError {
        ApiError::Server {
            status,
            detail: None,
            retry_after: None,
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(policy.backoff(1, 0.5), Duration::from_millis(75));
        assert_eq!(policy.backoff(2, 0.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(policy.backoff(20, 1.0), Duration::from_millis(1000));
        assert_eq!(policy.backoff(u32::MAX, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn methods_retry_on_their_own_failures() {
        let transport = ApiError::Transport {
            message: "reset".into(),
        };
        let throttled = ApiError::RateLimited {
            retry_after: None,
            detail: None,
        };
        let invalid = ApiError::Invalid {
            status: 422,
            detail: None,
        };
        assert!(method_may_retry(&Method::GET, &server(500)));
        assert!(method_may_retry(&Method::GET, &transport));
        assert!(!method_may_retry(&Method::GET, &invalid));
        assert!(method_may_retry(&Method::PATCH, &throttled));
        assert!(method_may_retry(&Method::DELETE, &server(503)));
        assert!(method_may_retry(&Method::DELETE, &server(504)));
        assert!(!method_may_retry(&Method::PATCH, &server(500)));
        assert!(!method_may_retry(&Method::PATCH, &transport));
        for error in [server(503), throttled, transport] {
            assert!(!method_may_retry(&Method::POST, &error));
        }
    }

    #[test]
    fn attempts_are_bounded_and_server_waits_honoured() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(
            policy
                .delay_before_retry(&Method::GET, &server(500), 2, 0.5)
                .is_some()
        );
        assert!(
            policy
                .delay_before_retry(&Method::GET, &server(500), 3, 0.5)
                .is_none()
        );
        let asked = ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
            detail: None,
        };
        let wait = policy
            .delay_before_retry(&Method::GET, &asked, 1, 0.5)
            .unwrap();
        assert!(wait >= Duration::from_secs(2));
        let too_long = ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(3600)),
            detail: None,
        };
        assert_eq!(
            policy.delay_before_retry(&Method::GET, &too_long, 1, 0.5),
            None
        );
    }
}
