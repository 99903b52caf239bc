//! `replicate-operator emulator`: the emulator as a standalone server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::config::{EmulatorConfig, RateLimitSeed, Seed};
use super::faults::{FaultRule, Faults};
use super::{Emulator, EmulatorError};

/// Run an in-memory Replicate API (deployments, hardware, versions, account, webhook secret,
/// deployment predictions with signed webhooks) for tests and demos.
///
/// The default seed has a demo account (token r8_demo0000000000000000000000000000000000), three
/// public models with versions, and the hardware SKUs of Replicate's pricing page. Control
/// endpoints for loopback callers: GET /_emulator/state, GET|DELETE /_emulator/counters,
/// GET|PUT|DELETE /_emulator/faults. Durations take units: 500ms, 2s, 15m, 1h.
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0 picks a free one; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// JSON or YAML seed with `accounts`, `models` and `hardware` (replaces the default seed).
    #[arg(long)]
    pub seed: Option<PathBuf>,
    /// Deployments per list page.
    #[arg(long, default_value_t = 100)]
    pub page_size: usize,
    /// How long a deployment must be at 0/0 before DELETE succeeds.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub offline_window: Duration,
    /// Time a prediction spends in `starting`.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub starting: Duration,
    /// Time a prediction spends in `processing`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub processing: Duration,
    /// Share of predictions that fail (input {"fail": true} always fails).
    #[arg(long, default_value_t = 0.0)]
    pub failure_ratio: f64,
    /// Delay before the first retry of a terminal webhook (doubles each time).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub webhook_retry_initial: Duration,
    /// Attempts for a terminal webhook, the first included.
    #[arg(long, default_value_t = 7)]
    pub webhook_attempts: u32,
    /// Accept http webhook URLs to any host (by default only https, or http to loopback).
    #[arg(long)]
    pub allow_http_webhooks: bool,
    /// Enforce a per-account budget of this many requests per minute (accounts without
    /// their own `rate_limit` in the seed); unlimited when absent.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Enforced prediction-creation budget per minute (with --rate-limit; default 600).
    #[arg(long, default_value_t = 600)]
    pub prediction_rate_limit: u32,
    /// JSON or YAML file with fault rules (`{"rules": [...]}`).
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Latency added to every /v1 request.
    #[arg(long, value_parser = parse_duration)]
    pub latency: Option<Duration>,
    /// Share of /v1 requests answered with --error-status.
    #[arg(long)]
    pub error_rate: Option<f64>,
    /// Status for --error-rate.
    #[arg(long, default_value_t = 500)]
    pub error_status: u16,
    /// Share of /v1 requests whose connection is closed without an answer.
    #[arg(long)]
    pub drop_rate: Option<f64>,
    /// Public scheme://host:port for links (`next`, `urls.get`); default: the bound address.
    #[arg(long)]
    pub public_url: Option<String>,
}

/// Parses `500ms`, `2s`, `15m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    Duration::try_from(parsed).map_err(|_| format!("duration {text:?} must not be negative"))
}

impl EmulatorArgs {
    pub fn to_config(&self) -> Result<EmulatorConfig, String> {
        let mut seed = match &self.seed {
            Some(path) => Seed::from_file(path).map_err(|e| e.to_string())?,
            None => Seed::default(),
        };
        if let Some(general) = self.rate_limit {
            for account in seed.accounts.iter_mut().filter(|a| a.rate_limit.is_none()) {
                account.rate_limit = Some(RateLimitSeed {
                    general,
                    predictions: self.prediction_rate_limit,
                    window_ms: 60_000,
                });
            }
        }
        let mut faults = match &self.faults {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                serde_yaml::from_str::<Faults>(&text)
                    .map_err(|e| format!("invalid faults {}: {e}", path.display()))?
            }
            None => Faults::default(),
        };
        if let Some(latency) = self.latency {
            faults
                .rules
                .push(FaultRule::delay(latency.as_millis() as u64));
        }
        if let Some(ratio) = self.drop_rate {
            faults
                .rules
                .push(FaultRule::drop_connection().with_ratio(ratio));
        }
        if let Some(ratio) = self.error_rate {
            faults
                .rules
                .push(FaultRule::status(self.error_status).with_ratio(ratio));
        }
        let mut config = EmulatorConfig {
            listen: self.listen,
            seed,
            page_size: self.page_size,
            offline_window: self.offline_window,
            faults,
            public_url: self.public_url.clone(),
            ..EmulatorConfig::default()
        };
        config.predictions.starting = self.starting;
        config.predictions.processing = self.processing;
        config.predictions.failure_ratio = self.failure_ratio;
        config.webhooks.retry_initial = self.webhook_retry_initial;
        config.webhooks.max_attempts = self.webhook_attempts;
        config.webhooks.allow_http_anywhere = self.allow_http_webhooks;
        Ok(config)
    }
}

/// Why the standalone emulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Start(#[from] EmulatorError),
}

/// Runs until Ctrl-C.
pub async fn run(args: EmulatorArgs) -> Result<(), RunError> {
    let config = args.to_config().map_err(RunError::Config)?;
    let emulator = Emulator::start(config).await?;
    eprintln!(
        "Replicate emulator listening on {} (API base {})",
        emulator.addr(),
        emulator.base_url()
    );
    let _ = tokio::signal::ctrl_c().await;
    emulator.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
