//! Injected failures: error answers, throttling, latency, dropped connections, lost answers.

use serde::{Deserialize, Serialize};

/// The faults in force. Rules are tried in order; every matching `delay` adds up, and the
/// first other rule that fires decides the answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub rules: Vec<FaultRule>,
}

/// One fault: what to do, to which requests, how often, how many times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// `GET`, `POST`, …; any method when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// A route template as the counters name it (e.g. `/v1/deployments/{owner}/{name}`); any
    /// `/v1` route when absent.
    #[serde(default)]
    pub route: Option<String>,
    pub action: FaultAction,
    /// The chance (0–1) that a matching request is hit.
    #[serde(default = "always")]
    pub ratio: f64,
    /// Hit only this many requests, then the rule is spent; unlimited when absent.
    #[serde(default)]
    pub count: Option<u32>,
}

fn always() -> f64 {
    1.0
}

/// What a fault does to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with this status and a problem body, without touching the state.
    Status { status: u16 },
    /// Answer 429 with `Retry-After` (whole seconds, as HTTP allows) and `ratelimit-*` headers.
    Throttle { retry_after_secs: u64 },
    /// Wait this long before handling the request.
    Delay { ms: u64 },
    /// Close the connection without answering (nothing is processed).
    Drop,
    /// Process the request (the write happens), then close the connection instead of answering.
    LoseResponse,
}

impl FaultRule {
    pub fn new(action: FaultAction) -> Self {
        Self {
            method: None,
            route: None,
            action,
            ratio: 1.0,
            count: None,
        }
    }

    /// Answer `status` (e.g. 500, 503, 403).
    pub fn status(status: u16) -> Self {
        Self::new(FaultAction::Status { status })
    }

    /// Answer 429 with `Retry-After: retry_after_secs`.
    pub fn throttle(retry_after_secs: u64) -> Self {
        Self::new(FaultAction::Throttle { retry_after_secs })
    }

    pub fn delay(ms: u64) -> Self {
        Self::new(FaultAction::Delay { ms })
    }

    pub fn drop_connection() -> Self {
        Self::new(FaultAction::Drop)
    }

    pub fn lose_response() -> Self {
        Self::new(FaultAction::LoseResponse)
    }

    /// Only for this method and route template.
    pub fn on(mut self, method: &str, route: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self.route = Some(route.to_owned());
        self
    }

    /// Only for the next `count` matching requests.
    pub fn times(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    /// Only for this share of matching requests.
    pub fn with_ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    fn matches(&self, method: &str, route: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.route.as_deref().is_none_or(|r| r == route)
            && self.count != Some(0)
    }
}

/// What the faults decided for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub delay_ms: u64,
    /// A non-delay action, if one fired.
    pub action: Option<FaultAction>,
}

impl Faults {
    /// Decides the faults for one request and spends counted rules. `roll` yields uniform
    /// numbers in [0, 1), one per matching rule, so tests can drive it deterministically.
    pub fn decide(&mut self, method: &str, route: &str, mut roll: impl FnMut() -> f64) -> Verdict {
        let mut verdict = Verdict::default();
        for rule in &mut self.rules {
            if !rule.matches(method, route) {
                continue;
            }
            let is_delay = matches!(rule.action, FaultAction::Delay { .. });
            if !is_delay && verdict.action.is_some() {
                continue;
            }
            if rule.ratio < 1.0 && roll() >= rule.ratio {
                continue;
            }
            if let Some(count) = rule.count.as_mut() {
                *count -= 1;
            }
            match &rule.action {
                FaultAction::Delay { ms } => verdict.delay_ms += ms,
                other => verdict.action = Some(other.clone()),
            }
        }
        self.rules.retain(|rule| rule.count != Some(0));
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_rules_are_spent_in_order() {
        let mut faults = Faults {
            rules: vec![
                FaultRule::status(503).on("get", "/v1/hardware").times(1),
                FaultRule::throttle(2).times(1),
                FaultRule::delay(5),
            ],
        };
        let first = faults.decide("GET", "/v1/hardware", || 0.0);
        assert_eq!(
            first,
            Verdict {
                delay_ms: 5,
                action: Some(FaultAction::Status { status: 503 })
            }
        );
        let second = faults.decide("GET", "/v1/hardware", || 0.0);
        assert_eq!(
            second.action,
            Some(FaultAction::Throttle {
                retry_after_secs: 2
            })
        );
        let third = faults.decide("GET", "/v1/hardware", || 0.0);
        assert_eq!(
            third,
            Verdict {
                delay_ms: 5,
                action: None
            }
        );
        assert_eq!(faults.rules.len(), 1);
    }

    #[test]
    fn ratio_and_route_filter_requests() {
        let mut faults = Faults {
            rules: vec![
                FaultRule::drop_connection()
                    .on("POST", "/v1/deployments")
                    .with_ratio(0.5),
            ],
        };
        assert_eq!(faults.decide("GET", "/v1/deployments", || 0.0).action, None);
        assert_eq!(
            faults.decide("POST", "/v1/deployments", || 0.7).action,
            None
        );
        assert_eq!(
            faults.decide("POST", "/v1/deployments", || 0.2).action,
            Some(FaultAction::Drop)
        );
    }

    #[test]
    fn rules_read_from_json() {
        let faults: Faults = serde_json::from_str(
            r#"{"rules":[{"route":"/v1/deployments","method":"POST","action":{"kind":"lose_response"},"count":1}]}"#,
        )
        .unwrap();
        assert_eq!(
            faults.rules[0],
            FaultRule::lose_response()
                .on("POST", "/v1/deployments")
                .times(1)
        );
    }
}
