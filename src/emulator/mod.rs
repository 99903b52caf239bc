//! An in-memory Replicate API for tests, demos and benchmarks.
//!
//! It serves the endpoints the client uses under the same paths (`/v1/...`), with the same
//! object shapes, status codes and headers, plus control endpoints under `/_emulator/`
//! (loopback callers only, no token): `state`, `counters` and `faults`.
//!
//! Where Replicate's documentation is silent, the emulator chose:
//! - 400 for bodies the schema does not allow, 422 for refused values (unknown hardware or
//!   version, instance counts out of range or above the account's caps, `name`/`model` in a
//!   PATCH), 409 for conflicts with the current state (duplicate name; DELETE before the
//!   deployment has been at 0/0 for the offline window, with the time left in `detail`;
//!   a prediction on an offline deployment).
//! - A PATCH with any field makes a new release even if nothing changes; `{}` makes none.
//!   Setting 0/0 cancels in-flight predictions (as Replicate documents for disabling).
//! - Prediction creation answers 201 (also when `Prefer: wait` ran out before the end).
//! - Webhooks: https only, except http to loopback hosts (or anywhere with
//!   [`config::WebhookDelivery::allow_http_anywhere`]) so tests need no TLS. The terminal
//!   webhook is retried with a doubling delay; `start`/`output`/`logs` are sent once, and
//!   `output`/`logs` are not throttled to 500 ms (each prediction makes one of each).
//! - `previous` links point back at the first page.

pub mod cli;
pub mod config;
pub mod counters;
pub mod faults;
mod http;
mod lifecycle;
pub mod world;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{
    AccountSeed, DEMO_TOKEN, DEMO_USERNAME, EmulatorConfig, InstanceCaps, RateLimitSeed, Seed,
};
pub use counters::{CounterKey, Counters, JournalEntry, NO_ANSWER};
pub use faults::{FaultAction, FaultRule, Faults};
pub use world::{ApiProblem, DeliveryRecord};

use crate::replicate::{
    ApiToken, ClientConfig, CreateDeployment, Deployment, Prediction, UpdateDeployment,
};
use world::World;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid seed: {0}")]
    Seed(#[from] config::SeedError),
    #[error("cannot build the webhook HTTP client: {0}")]
    Http(String),
}

/// State shared by the server, the prediction tasks and the handle.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub public_url: String,
    pub world: Mutex<World>,
    pub faults: Mutex<Faults>,
    pub counters: Mutex<Counters>,
    pub journal: Mutex<counters::Journal>,
    /// Bumped on every change tests may wait for (predictions, deliveries).
    pub changes: watch::Sender<u64>,
    pub webhook_http: reqwest::Client,
    pub stopped: AtomicBool,
}

impl Shared {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn journal(&self) -> MutexGuard<'_, counters::Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
    pub fn api_base(&self) -> String {
        format!("{}/v1", self.public_url)
    }
}

/// A running emulator. Dropping it stops the server; [`Emulator::shutdown`] also waits.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds, seeds and starts serving.
    pub async fn start(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: config.listen,
                source,
            })?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let world = World::new(&config.seed, config.page_size, config.offline_window)?;
        let webhook_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.webhooks.timeout)
            .user_agent("replicate-emulator")
            .build()
            .map_err(|e| EmulatorError::Http(e.to_string()))?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(config.faults.clone()),
            config,
            public_url: public_url.trim_end_matches('/').to_owned(),
            world: Mutex::new(world),
            counters: Mutex::new(Counters::default()),
            journal: Mutex::new(Default::default()),
            changes: watch::channel(0).0,
            webhook_http,
            stopped: AtomicBool::new(false),
        });
        let app = http::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "emulator server stopped");
            }
        });
        tracing::info!(%addr, "Replicate emulator listening");
        Ok(Self {
            shared,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL, `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        self.shared.api_base()
    }

    /// The demo account's token (when the seed has the default demo account).
    pub fn demo_token(&self) -> ApiToken {
        ApiToken::new(DEMO_TOKEN)
    }

    /// A client configuration aimed at this emulator.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::default()
            .with_base_url(&self.base_url())
            .expect("the emulator URL is valid")
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters().clone()
    }

    /// Clears the counters and the request journal.
    pub fn reset_counters(&self) {
        *self.shared.counters() = Counters::default();
        self.shared.journal().clear();
    }

    /// The most recent API requests, oldest first, with their JSON bodies.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.shared.journal().entries()
    }

    /// The fault controls.
    pub fn faults(&self) -> FaultControl<'_> {
        FaultControl(&self.shared)
    }

    pub fn add_account(&self, account: &AccountSeed) -> Result<(), config::SeedError> {
        self.shared.world().add_account(account)
    }

    /// Creates a deployment behind the client's back (e.g. for adoption tests), with the
    /// same validation as the API.
    pub fn seed_deployment(
        &self,
        owner: &str,
        request: &CreateDeployment,
    ) -> Result<Deployment, ApiProblem> {
        self.shared
            .world()
            .create_deployment_typed(owner, request, Instant::now())
    }

    /// Updates a deployment behind the client's back (drift); makes a release like a PATCH.
    pub fn update_deployment_out_of_band(
        &self,
        owner: &str,
        name: &str,
        update: &UpdateDeployment,
    ) -> Result<Deployment, ApiProblem> {
        self.shared
            .world()
            .update_deployment_typed(owner, name, update, Instant::now())
    }

    /// Deletes a deployment behind the client's back, ignoring the offline window.
    pub fn delete_deployment_out_of_band(&self, owner: &str, name: &str) -> Result<(), ApiProblem> {
        self.shared
            .world()
            .delete_checked(owner, name, Instant::now(), true)
    }

    pub fn deployment(&self, owner: &str, name: &str) -> Option<Deployment> {
        self.shared.world().get_deployment(owner, owner, name).ok()
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        self.shared
            .world()
            .deployments
            .values()
            .map(|d| d.deployment.clone())
            .collect()
    }

    /// The account's current `whsec_…` secret.
    pub fn webhook_secret(&self, username: &str) -> Option<String> {
        self.shared
            .world()
            .current_secret(username)
            .map(|k| k.to_secret())
    }

    /// Makes a new secret current and returns it; the old one keeps signing for `overlap`.
    pub fn rotate_webhook_secret(&self, username: &str, overlap: Duration) -> Option<String> {
        self.shared
            .world()
            .rotate_secret(username, overlap, Instant::now())
            .map(|k| k.to_secret())
    }

    /// Every prediction, oldest first, in its current state.
    pub fn predictions(&self) -> Vec<Prediction> {
        let world = self.shared.world();
        world
            .prediction_order
            .iter()
            .filter_map(|id| world.predictions.get(id))
            .map(|p| p.prediction.clone())
            .collect()
    }

    /// Every webhook delivery attempt so far, in order.
    pub fn webhook_deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.world().deliveries.clone()
    }

    /// Everything at once, as `/_emulator/state` shows it.
    pub fn state(&self) -> StateDump {
        http::state_dump(&self.shared)
    }

    /// Waits until `condition` holds, re-checking on every prediction or webhook change.
    /// Returns false if `timeout` passes first.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> bool {
        let mut changes = self.shared.changes.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            changes.mark_unchanged();
            if condition(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return condition(self),
            }
        }
    }

    /// Stops accepting requests and waits for the server to finish.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    fn stop_now(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop_now();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Reads and changes the faults in force.
pub struct FaultControl<'a>(&'a Shared);

impl FaultControl<'_> {
    pub fn get(&self) -> Faults {
        self.0.faults().clone()
    }
    pub fn set(&self, faults: Faults) {
        *self.0.faults() = faults;
    }
    pub fn push(&self, rule: FaultRule) {
        self.0.faults().rules.push(rule);
    }
    pub fn clear(&self) {
        self.0.faults().rules.clear();
    }
}

/// A JSON view of the whole emulator (secrets and tokens left out).
#[derive(Debug, Clone, Serialize)]
pub struct StateDump {
    pub accounts: Vec<AccountDump>,
    pub deployments: Vec<DeploymentDump>,
    pub predictions: Vec<Prediction>,
    pub webhook_deliveries: Vec<DeliveryRecord>,
    pub faults: Faults,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountDump {
    pub username: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub caps: InstanceCaps,
    pub rate_limit: Option<RateLimitSeed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentDump {
    #[serde(flatten)]
    pub deployment: Deployment,
    /// How long it has been at 0/0, when it is.
    pub offline_for_ms: Option<u64>,
}
