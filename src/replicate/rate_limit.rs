//! Client-side token buckets that keep every caller sharing a token under Replicate's limits.

use std::time::Duration;

use tokio::time::Instant;

/// A budget: `per_minute` requests on average, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub per_minute: u32,
    pub burst: u32,
}

impl Budget {
    fn per_second(self) -> f64 {
        f64::from(self.per_minute.max(1)) / 60.0
    }
}

/// The two buckets Replicate publishes (3000/min for everything, 600/min for creating
/// predictions). The defaults stay at 80 % of them, leaving room for other tools on the account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub general: Budget,
    pub predictions: Budget,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            general: Budget {
                per_minute: 2400,
                burst: 40,
            },
            predictions: Budget {
                per_minute: 480,
                burst: 10,
            },
        }
    }
}

/// The pure state of one bucket.
#[derive(Debug, Clone)]
struct BucketState {
    tokens: f64,
    refilled_at: Instant,
}

impl BucketState {
    /// Takes one token, or says how long until one is available.
    fn try_take(&mut self, budget: Budget, now: Instant) -> Result<(), Duration> {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        let burst = f64::from(budget.burst.max(1));
        self.tokens = (self.tokens + elapsed * budget.per_second()).min(burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / budget.per_second(),
            ))
        }
    }
}

/// An async token bucket. Waiters are served in arrival order: the tokio mutex queues them
/// fairly, and the one at the head sleeps while holding it, so no one can overtake.
#[derive(Debug)]
pub struct TokenBucket {
    budget: Budget,
    state: tokio::sync::Mutex<BucketState>,
}

impl TokenBucket {
    pub fn new(budget: Budget) -> Self {
        let state = BucketState {
            tokens: f64::from(budget.burst.max(1)),
            refilled_at: Instant::now(),
        };
        Self {
            budget,
            state: tokio::sync::Mutex::new(state),
        }
    }

    /// Waits until a request may be sent; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let mut state = self.state.lock().await;
        loop {
            match state.try_take(self.budget, Instant::now()) {
                Ok(()) => return started.elapsed(),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// The buckets of one account (one token).
#[derive(Debug)]
pub struct AccountLimiter {
    pub general: TokenBucket,
    pub predictions: TokenBucket,
}

impl AccountLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            general: TokenBucket::new(limits.general),
            predictions: TokenBucket::new(limits.predictions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let budget = Budget {
            per_minute: 60,
            burst: 2,
        };
        let start = Instant::now();
        let mut state = BucketState {
            tokens: 2.0,
            refilled_at: start,
        };
        assert!(state.try_take(budget, start).is_ok());
        assert!(state.try_take(budget, start).is_ok());
        let wait = state.try_take(budget, start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(
            state
                .try_take(budget, start + Duration::from_millis(500))
                .is_err()
        );
        assert!(
            state
                .try_take(budget, start + Duration::from_secs(1))
                .is_ok()
        );
        // Idle time never stores more than the burst.
        let much_later = start + Duration::from_secs(3600);
        assert!(state.try_take(budget, much_later).is_ok());
        assert!(state.try_take(budget, much_later).is_ok());
        assert!(state.try_take(budget, much_later).is_err());
    }

    #[tokio::test]
    async fn waiters_are_paced_in_order() {
        let bucket = std::sync::Arc::new(TokenBucket::new(Budget {
            per_minute: 600,
            burst: 1,
        }));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let bucket = bucket.clone();
            tasks.push(tokio::spawn(async move {
                bucket.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap() - start);
        }
        times.sort();
        // One at once, then one per 10 ms: a lower bound the limiter guarantees, so the
        // assertion cannot flake on a slow machine.
        assert!(times[4] >= Duration::from_millis(40), "{times:?}");
    }
}
