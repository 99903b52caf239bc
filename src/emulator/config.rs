//! What the emulator starts with: accounts, models, hardware, timings and faults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::Faults;
use crate::replicate::Hardware;

/// The token of the demo account every default emulator has.
pub const DEMO_TOKEN: &str = "r8_demo0000000000000000000000000000000000";
/// The username of the demo account.
pub const DEMO_USERNAME: &str = "demo";

/// How an emulator behaves. `Default` suits interactive use; tests shorten the timings.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free port ([`super::Emulator::addr`] tells which).
    pub listen: SocketAddr,
    pub seed: Seed,
    /// Deployments per list page (Replicate does not document its own page size).
    pub page_size: usize,
    /// How long a deployment must have been at 0/0 before DELETE is accepted (15 min on Replicate).
    pub offline_window: Duration,
    pub predictions: PredictionTiming,
    pub webhooks: WebhookDelivery,
    /// Faults active from the start (they can be changed at run time).
    pub faults: Faults,
    /// The scheme://host:port used in `next` links and `urls.get`; defaults to the bound address.
    pub public_url: Option<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: Seed::default(),
            page_size: 100,
            offline_window: Duration::from_secs(15 * 60),
            predictions: PredictionTiming::default(),
            webhooks: WebhookDelivery::default(),
            faults: Faults::default(),
            public_url: None,
        }
    }
}

impl EmulatorConfig {
    /// Millisecond timings for tests: predictions finish in a few ms, webhook retries come
    /// 10 ms apart, and deployments are deletable as soon as they are offline.
    pub fn fast() -> Self {
        Self {
            offline_window: Duration::ZERO,
            predictions: PredictionTiming {
                starting: Duration::from_millis(5),
                processing: Duration::from_millis(10),
                failure_ratio: 0.0,
            },
            webhooks: WebhookDelivery {
                timeout: Duration::from_secs(2),
                retry_initial: Duration::from_millis(10),
                max_attempts: 4,
                allow_http_anywhere: false,
            },
            ..Self::default()
        }
    }
}

/// How predictions progress: `starting` for `starting`, then `processing`, then the end.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionTiming {
    pub starting: Duration,
    pub processing: Duration,
    /// The share of predictions that fail (0.0–1.0); input `{"fail": true}` always fails.
    pub failure_ratio: f64,
}

impl Default for PredictionTiming {
    fn default() -> Self {
        Self {
            starting: Duration::from_millis(500),
            processing: Duration::from_secs(2),
            failure_ratio: 0.0,
        }
    }
}

/// How webhooks go out.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// Per attempt.
    pub timeout: Duration,
    /// The wait before the first retry of a terminal webhook; it doubles each time.
    pub retry_initial: Duration,
    /// Attempts of a terminal webhook in total. The default (1 s doubling, 7 attempts) sends
    /// the last one about a minute after completion, as Replicate documents.
    pub max_attempts: u32,
    /// Replicate requires https; the emulator also accepts http to loopback hosts, and with
    /// this flag http to any host (e.g. a receiver inside a test cluster).
    pub allow_http_anywhere: bool,
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retry_initial: Duration::from_secs(1),
            max_attempts: 7,
            allow_http_anywhere: false,
        }
    }
}

/// The world the emulator starts with; loadable from JSON or YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Seed {
    pub accounts: Vec<AccountSeed>,
    pub models: Vec<ModelSeed>,
    pub hardware: Vec<Hardware>,
}

impl Seed {
    /// Reads a seed file; YAML is a superset of JSON, so one parser takes both.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SeedError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SeedError(format!("cannot read {}: {e}", path.display())))?;
        serde_yaml::from_str(&text)
            .map_err(|e| SeedError(format!("invalid seed {}: {e}", path.display())))
    }
}

/// A seed file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SeedError(pub String);

/// An account (user or organization) and the tokens that act as it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountSeed {
    pub username: String,
    /// `user` or `organization`.
    #[serde(default = "default_kind", rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    pub tokens: Vec<String>,
    /// `whsec_…`; generated when absent.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub caps: InstanceCaps,
    /// Enforced per-account request budget; none means unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSeed>,
}

fn default_kind() -> String {
    "user".into()
}

impl AccountSeed {
    pub fn new(username: &str, token: &str) -> Self {
        Self {
            username: username.into(),
            kind: default_kind(),
            name: None,
            tokens: vec![token.into()],
            webhook_secret: None,
            caps: InstanceCaps::default(),
            rate_limit: None,
        }
    }
}

/// The most instances a deployment may ask for (the OpenAPI document says 5 and 20; support
/// can raise them, so they are per account here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCaps {
    pub max_min_instances: u32,
    pub max_max_instances: u32,
}

impl Default for InstanceCaps {
    fn default() -> Self {
        Self {
            max_min_instances: 5,
            max_max_instances: 20,
        }
    }
}

/// Requests allowed per window, in Replicate's two buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitSeed {
    pub general: u32,
    pub predictions: u32,
    pub window_ms: u64,
}

impl RateLimitSeed {
    /// Replicate's published limits: 3000/min in general, 600/min for creating predictions.
    pub fn replicate() -> Self {
        Self {
            general: 3000,
            predictions: 600,
            window_ms: 60_000,
        }
    }
}

/// A model and its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSeed {
    pub owner: String,
    pub name: String,
    #[serde(default = "default_visibility")]
    pub visibility: String,
    pub versions: Vec<VersionSeed>,
}

fn default_visibility() -> String {
    "public".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionSeed {
    pub id: String,
    #[serde(default)]
    pub cog_version: Option<String>,
}

fn model(owner: &str, name: &str, versions: &[&str]) -> ModelSeed {
    ModelSeed {
        owner: owner.into(),
        name: name.into(),
        visibility: default_visibility(),
        versions: versions
            .iter()
            .map(|id| VersionSeed {
                id: (*id).into(),
                cog_version: Some("0.9.4".into()),
            })
            .collect(),
    }
}

/// Version IDs of the default models (the first ones appear in Replicate's documentation).
pub mod versions {
    pub const HELLO_WORLD_V1: &str =
        "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa";
    pub const HELLO_WORLD_V2: &str =
        "9dcd6d78e7c6560c340d916fe32e9f24aabfa331e5cce95fe31f77fb03121426";
    pub const SDXL_V1: &str = "da77bc59ee60423279fd632efb4795ab731d9e3ca9705ef3341091fb989b7eaf";
    pub const SDXL_V2: &str = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b";
    pub const LLAMA_V1: &str = "5a6809ca6288247d06daf6365557e5e429063f32a21146b2a807c682652136b8";
}

impl Default for Seed {
    fn default() -> Self {
        let hardware = [
            ("cpu", "CPU"),
            ("gpu-t4", "Nvidia T4 GPU"),
            ("gpu-a40-small", "Nvidia A40 GPU"),
            ("gpu-a40-large", "Nvidia A40 (Large) GPU"),
            ("gpu-a40-large-2x", "2x Nvidia A40 (Large) GPU"),
            ("gpu-a40-large-4x", "4x Nvidia A40 (Large) GPU"),
            ("gpu-a40-large-8x", "8x Nvidia A40 (Large) GPU"),
            ("gpu-a100-large", "Nvidia A100 (80GB) GPU"),
            ("gpu-a100-large-2x", "2x Nvidia A100 (80GB) GPU"),
            ("gpu-a100-large-4x", "4x Nvidia A100 (80GB) GPU"),
            ("gpu-a100-large-8x", "8x Nvidia A100 (80GB) GPU"),
            ("gpu-l40s", "Nvidia L40S GPU"),
            ("gpu-2x-l40s", "2x Nvidia L40S GPU"),
            ("gpu-4x-l40s", "4x Nvidia L40S GPU"),
            ("gpu-8x-l40s", "8x Nvidia L40S GPU"),
        ]
        .into_iter()
        .map(|(sku, name)| Hardware {
            sku: sku.into(),
            name: name.into(),
        })
        .collect();
        Self {
            accounts: vec![AccountSeed::new(DEMO_USERNAME, DEMO_TOKEN)],
            models: vec![
                model(
                    "replicate",
                    "hello-world",
                    &[versions::HELLO_WORLD_V1, versions::HELLO_WORLD_V2],
                ),
                model(
                    "stability-ai",
                    "sdxl",
                    &[versions::SDXL_V1, versions::SDXL_V2],
                ),
                model("meta", "meta-llama-3-8b-instruct", &[versions::LLAMA_V1]),
            ],
            hardware,
        }
    }
}
