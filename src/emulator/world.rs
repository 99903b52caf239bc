//! The emulator's in-memory Replicate: accounts, deployments, predictions, and the rules the
//! API enforces on them. Everything here is synchronous and free of I/O; the HTTP layer holds
//! the lock, calls in, and turns an [`ApiProblem`] into a problem+json answer.
//!
//! Choices where Replicate's documentation is silent (see also the module docs of `emulator`):
//! - 400 means the body is not what the schema allows (not JSON, a required field missing, a
//!   wrong type, a field the operation does not take); 422 means it is well-formed but a value
//!   is refused (unknown hardware or version, out-of-range instances, min > max, an attempt to
//!   change `name` or `model`).
//! - 409 means the request conflicts with the current state: a deployment name already used
//!   by the owner, a DELETE before the deployment has been offline long enough, a prediction
//!   on a deployment that is offline (0/0).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::config::{AccountSeed, InstanceCaps, RateLimitSeed, Seed, SeedError};
use crate::replicate::{
    Account, AccountType, CreateDeployment, Deployment, DeploymentConfiguration, Hardware,
    ModelVersion, Page, Prediction, PredictionRequest, PredictionSource, PredictionStatus,
    PredictionUrls, Release, UpdateDeployment, WebhookEvent,
};
use crate::signature::SigningKey;

/// An error answer: status, title and a detail meant for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiProblem {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
}

impl ApiProblem {
    pub fn new(status: u16, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
        }
    }
    pub fn unauthenticated() -> Self {
        Self::new(
            401,
            "Unauthenticated",
            "You did not pass a valid authentication token",
        )
    }
    pub fn not_found() -> Self {
        Self::new(404, "Not found", "Not found.")
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, "Bad request", detail)
    }
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(422, "Unprocessable entity", detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, "Conflict", detail)
    }
}

/// Which of Replicate's two rate-limit buckets a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    General = 0,
    Predictions = 1,
}

/// What the rate limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the window resets (at least 1).
    pub reset_secs: u64,
}

#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    used: u32,
}

/// One signing secret of an account; an old one keeps signing until `retire_at`.
#[derive(Debug, Clone)]
pub(crate) struct SecretEntry {
    pub key: SigningKey,
    pub retire_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct AccountState {
    pub account: Account,
    pub secrets: Vec<SecretEntry>,
    pub caps: InstanceCaps,
    pub rate_limit: Option<RateLimitSeed>,
    windows: [Window; 2],
}

#[derive(Debug, Clone)]
pub(crate) struct DeploymentState {
    seq: u64,
    pub deployment: Deployment,
    pub offline_since: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(crate) struct ModelState {
    pub owner: String,
    pub public: bool,
    pub versions: Vec<ModelVersion>,
}

#[derive(Debug, Clone)]
pub(crate) struct PredictionState {
    pub owner: String,
    pub prediction: Prediction,
    pub cancel_requested: bool,
}

/// One webhook delivery attempt, as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub prediction_id: String,
    pub webhook_id: String,
    pub event: WebhookEvent,
    /// The prediction status the body carried.
    pub status: PredictionStatus,
    pub attempt: u32,
    pub url: String,
    /// The receiver's answer, or none when it could not be reached.
    pub response_status: Option<u16>,
    pub error: Option<String>,
    pub timestamp: i64,
}

/// The whole emulated Replicate.
#[derive(Debug)]
pub(crate) struct World {
    pub accounts: BTreeMap<String, AccountState>,
    tokens: HashMap<String, String>,
    pub models: BTreeMap<String, ModelState>,
    pub hardware: Vec<Hardware>,
    pub deployments: BTreeMap<(String, String), DeploymentState>,
    next_seq: u64,
    pub predictions: BTreeMap<String, PredictionState>,
    pub prediction_order: Vec<String>,
    pub deliveries: Vec<DeliveryRecord>,
    pub page_size: usize,
    pub offline_window: Duration,
}

const NAME_MAX_LEN: usize = 100;

impl World {
    pub fn new(seed: &Seed, page_size: usize, offline_window: Duration) -> Result<Self, SeedError> {
        let mut world = Self {
            accounts: BTreeMap::new(),
            tokens: HashMap::new(),
            models: BTreeMap::new(),
            hardware: seed.hardware.clone(),
            deployments: BTreeMap::new(),
            next_seq: 1,
            predictions: BTreeMap::new(),
            prediction_order: Vec::new(),
            deliveries: Vec::new(),
            page_size: page_size.max(1),
            offline_window,
        };
        for account in &seed.accounts {
            world.add_account(account)?;
        }
        let created_at = Timestamp::now();
        for model in &seed.models {
            let versions = model
                .versions
                .iter()
                .map(|v| ModelVersion {
                    id: v.id.clone(),
                    created_at: Some(created_at),
                    cog_version: v.cog_version.clone(),
                    openapi_schema: Some(hello_schema()),
                })
                .collect();
            let state = ModelState {
                owner: model.owner.clone(),
                public: model.visibility != "private",
                versions,
            };
            world
                .models
                .insert(format!("{}/{}", model.owner, model.name), state);
        }
        Ok(world)
    }

    pub fn add_account(&mut self, seed: &AccountSeed) -> Result<(), SeedError> {
        if self.accounts.contains_key(&seed.username) {
            return Err(SeedError(format!(
                "account {} exists already",
                seed.username
            )));
        }
        for token in &seed.tokens {
            if self.tokens.contains_key(token) {
                return Err(SeedError(format!(
                    "a token of {} is used by another account",
                    seed.username
                )));
            }
        }
        let key = match &seed.webhook_secret {
            Some(secret) => SigningKey::from_secret(secret)
                .map_err(|e| SeedError(format!("webhook secret of {}: {e}", seed.username)))?,
            None => random_signing_key(),
        };
        for token in &seed.tokens {
            self.tokens.insert(token.clone(), seed.username.clone());
        }
        let now = Instant::now();
        let account = Account {
            kind: AccountType::from(seed.kind.as_str()),
            username: seed.username.clone(),
            name: Some(seed.name.clone().unwrap_or_else(|| seed.username.clone())),
            github_url: Some(format!("https://github.com/{}", seed.username)),
            avatar_url: None,
        };
        let state = AccountState {
            account,
            secrets: vec![SecretEntry {
                key,
                retire_at: None,
            }],
            caps: seed.caps,
            rate_limit: seed.rate_limit,
            windows: [
                Window {
                    started: now,
                    used: 0,
                },
                Window {
                    started: now,
                    used: 0,
                },
            ],
        };
        self.accounts.insert(seed.username.clone(), state);
        Ok(())
    }

    /// The account behind an `Authorization` header (`Bearer <token>`, or the legacy `Token`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<String, ApiProblem> {
        let value = authorization.ok_or_else(ApiProblem::unauthenticated)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("Token "))
            .ok_or_else(ApiProblem::unauthenticated)?
            .trim();
        self.tokens
            .get(token)
            .cloned()
            .ok_or_else(ApiProblem::unauthenticated)
    }

    /// Counts a request against the account's budget; `Err` carries the 429 details.
    pub fn take_budget(
        &mut self,
        username: &str,
        bucket: Bucket,
        now: Instant,
    ) -> Result<RateInfo, RateInfo> {
        let Some(account) = self.accounts.get_mut(username) else {
            return Ok(RateInfo {
                limit: 0,
                remaining: 0,
                reset_secs: 1,
            });
        };
        // Without a configured budget, report Replicate's published one but never refuse.
        let (limits, enforced) = match account.rate_limit {
            Some(limits) => (limits, true),
            None => (RateLimitSeed::replicate(), false),
        };
        let limit = match bucket {
            Bucket::General => limits.general,
            Bucket::Predictions => limits.predictions,
        };
        let window_len = Duration::from_millis(limits.window_ms.max(1));
        let window = &mut account.windows[bucket as usize];
        if now.saturating_duration_since(window.started) >= window_len {
            window.started = now;
            window.used = 0;
        }
        let left = window_len.saturating_sub(now.saturating_duration_since(window.started));
        let reset_secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let info = |used: u32| RateInfo {
            limit,
            remaining: limit.saturating_sub(used),
            reset_secs: reset_secs.max(1),
        };
        if enforced && window.used >= limit {
            return Err(info(window.used));
        }
        window.used = window.used.saturating_add(1);
        Ok(info(window.used))
    }

    pub fn account(&self, username: &str) -> Option<&AccountState> {
        self.accounts.get(username)
    }

    fn creator(&self, username: &str) -> Account {
        self.accounts[username].account.clone()
    }

    /// The secret `GET /v1/webhooks/default/secret` returns: the newest one.
    pub fn current_secret(&self, username: &str) -> Option<SigningKey> {
        self.accounts
            .get(username)?
            .secrets
            .last()
            .map(|s| s.key.clone())
    }

    /// The keys that sign a webhook now: the current one, and older ones still in overlap.
    pub fn signing_keys(&mut self, username: &str, now: Instant) -> Vec<SigningKey> {
        let Some(account) = self.accounts.get_mut(username) else {
            return Vec::new();
        };
        account
            .secrets
            .retain(|s| s.retire_at.is_none_or(|at| at > now));
        account
            .secrets
            .iter()
            .rev()
            .map(|s| s.key.clone())
            .collect()
    }

    /// Makes a new secret current; the old one keeps signing (as a second `v1` entry) for `overlap`.
    pub fn rotate_secret(
        &mut self,
        username: &str,
        overlap: Duration,
        now: Instant,
    ) -> Option<SigningKey> {
        let account = self.accounts.get_mut(username)?;
        for old in &mut account.secrets {
            let retire = now + overlap;
            old.retire_at = Some(old.retire_at.map_or(retire, |at| at.min(retire)));
        }
        let key = random_signing_key();
        account.secrets.push(SecretEntry {
            key: key.clone(),
            retire_at: None,
        });
        Some(key)
    }

    pub fn list_deployments(
        &self,
        caller: &str,
        cursor: Option<&str>,
        list_url: &str,
    ) -> Result<Page<Deployment>, ApiProblem> {
        let before = match cursor {
            None => u64::MAX,
            Some(cursor) => {
                decode_cursor(cursor).ok_or_else(|| ApiProblem::bad_request("Invalid cursor"))?
            }
        };
        let mut owned: Vec<&DeploymentState> = self
            .deployments
            .values()
            .filter(|d| d.deployment.owner == caller && d.seq < before)
            .collect();
        owned.sort_by_key(|d| std::cmp::Reverse(d.seq));
        let page: Vec<&DeploymentState> = owned.iter().take(self.page_size).copied().collect();
        let next = (owned.len() > page.len())
            .then(|| {
                page.last()
                    .map(|last| format!("{list_url}?cursor={}", encode_cursor(last.seq)))
            })
            .flatten();
        let previous = cursor.map(|_| list_url.to_owned());
        Ok(Page {
            next,
            previous,
            results: page.into_iter().map(|d| d.deployment.clone()).collect(),
        })
    }

    pub fn get_deployment(
        &self,
        caller: &str,
        owner: &str,
        name: &str,
    ) -> Result<Deployment, ApiProblem> {
        if caller != owner {
            return Err(ApiProblem::not_found());
        }
        self.deployments
            .get(&(owner.to_owned(), name.to_owned()))
            .map(|d| d.deployment.clone())
            .ok_or_else(ApiProblem::not_found)
    }

    /// `POST /v1/deployments` with a raw JSON body.
    pub fn create_deployment_json(
        &mut self,
        caller: &str,
        body: &Value,
        now: Instant,
    ) -> Result<Deployment, ApiProblem> {
        let fields = body
            .as_object()
            .ok_or_else(|| ApiProblem::bad_request("The body must be a JSON object"))?;
        allow_only(
            fields,
            &[
                "name",
                "model",
                "version",
                "hardware",
                "min_instances",
                "max_instances",
            ],
        )?;
        let missing: Vec<&str> = [
            "name",
            "model",
            "version",
            "hardware",
            "min_instances",
            "max_instances",
        ]
        .into_iter()
        .filter(|k| fields.get(*k).is_none_or(Value::is_null))
        .collect();
        if !missing.is_empty() {
            return Err(ApiProblem::bad_request(format!(
                "Missing required fields: {}",
                missing.join(", ")
            )));
        }
        let request = CreateRaw {
            name: string_field(fields, "name")?.unwrap_or_default(),
            model: string_field(fields, "model")?.unwrap_or_default(),
            version: string_field(fields, "version")?.unwrap_or_default(),
            hardware: string_field(fields, "hardware")?.unwrap_or_default(),
            min_instances: int_field(fields, "min_instances")?.unwrap_or_default(),
            max_instances: int_field(fields, "max_instances")?.unwrap_or_default(),
        };
        self.create_deployment(caller, request, now)
    }

    /// Creates a deployment as `owner` from typed values (also the out-of-band path).
    pub fn create_deployment_typed(
        &mut self,
        owner: &str,
        request: &CreateDeployment,
        now: Instant,
    ) -> Result<Deployment, ApiProblem> {
        let raw = CreateRaw {
            name: request.name.clone(),
            model: request.model.clone(),
            version: request.version.clone(),
            hardware: request.hardware.clone(),
            min_instances: request.min_instances.into(),
            max_instances: request.max_instances.into(),
        };
        self.create_deployment(owner, raw, now)
    }

    fn create_deployment(
        &mut self,
        caller: &str,
        request: CreateRaw,
        now: Instant,
    ) -> Result<Deployment, ApiProblem> {
        check_name(&request.name)?;
        let account = self
            .accounts
            .get(caller)
            .ok_or_else(ApiProblem::unauthenticated)?;
        self.check_model_version(caller, &request.model, &request.version)?;
        self.check_hardware(&request.hardware)?;
        let (min, max) =
            check_instances(account.caps, request.min_instances, request.max_instances)?;
        let key = (caller.to_owned(), request.name.clone());
        if self.deployments.contains_key(&key) {
            return Err(ApiProblem::conflict(format!(
                "A deployment named {} already exists for {caller}",
                request.name
            )));
        }
        let deployment = Deployment {
            owner: caller.to_owned(),
            name: request.name,
            current_release: Some(Release {
                number: Some(1),
                model: Some(request.model),
                version: Some(request.version),
                created_at: Some(Timestamp::now()),
                created_by: Some(self.creator(caller)),
                configuration: Some(DeploymentConfiguration {
                    hardware: Some(request.hardware),
                    min_instances: Some(min),
                    max_instances: Some(max),
                }),
            }),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let offline_since = (max == 0).then_some(now);
        self.deployments.insert(
            key,
            DeploymentState {
                seq,
                deployment: deployment.clone(),
                offline_since,
            },
        );
        Ok(deployment)
    }

    /// `PATCH` with a raw JSON body.
    pub fn update_deployment_json(
        &mut self,
        caller: &str,
        owner: &str,
        name: &str,
        body: &Value,
        now: Instant,
    ) -> Result<Deployment, ApiProblem> {
        self.get_deployment(caller, owner, name)?;
        let fields = body
            .as_object()
            .ok_or_else(|| ApiProblem::bad_request("The body must be a JSON object"))?;
        for immutable in ["name", "model"] {
            if fields.contains_key(immutable) {
                return Err(ApiProblem::invalid(format!(
                    "The deployment's {immutable} cannot be changed; create a new deployment instead"
                )));
            }
        }
        allow_only(
            fields,
            &["version", "hardware", "min_instances", "max_instances"],
        )?;
        let update = UpdateRaw {
            version: string_field(fields, "version")?,
            hardware: string_field(fields, "hardware")?,
            min_instances: int_field(fields, "min_instances")?,
            max_instances: int_field(fields, "max_instances")?,
        };
        self.update_deployment(owner, name, update, now)
    }

    /// Applies an update as the owner (also the out-of-band path).
    pub fn update_deployment_typed(
        &mut self,
        owner: &str,
        name: &str,
        update: &UpdateDeployment,
        now: Instant,
    ) -> Result<Deployment, ApiProblem> {
        let raw = UpdateRaw {
            version: update.version.clone(),
            hardware: update.hardware.clone(),
            min_instances: update.min_instances.map(i64::from),
            max_instances: update.max_instances.map(i64::from),
        };
        self.update_deployment(owner, name, raw, now)
    }

    /// Partial update: omitted fields keep their values. Any field given makes a new release,
    /// even when the value is unchanged; an empty body changes nothing and makes no release.
    fn update_deployment(
        &mut self,
        owner: &str,
        name: &str,
        update: UpdateRaw,
        now: Instant,
    ) -> Result<Deployment, ApiProblem> {
        let key = (owner.to_owned(), name.to_owned());
        let current = self
            .deployments
            .get(&key)
            .ok_or_else(ApiProblem::not_found)?
            .deployment
            .clone();
        let release = current.current_release.clone().unwrap_or_default();
        let config = release.configuration.clone().unwrap_or_default();
        if update.version.is_none()
            && update.hardware.is_none()
            && update.min_instances.is_none()
            && update.max_instances.is_none()
        {
            return Ok(current);
        }
        let model = release.model.clone().unwrap_or_default();
        let version = update
            .version
            .clone()
            .or(release.version.clone())
            .unwrap_or_default();
        if update.version.is_some() {
            self.check_model_version(owner, &model, &version)?;
        }
        let hardware = update
            .hardware
            .clone()
            .or(config.hardware.clone())
            .unwrap_or_default();
        if update.hardware.is_some() {
            self.check_hardware(&hardware)?;
        }
        let caps = self.accounts.get(owner).map(|a| a.caps).unwrap_or_default();
        let (min, max) = check_instances(
            caps,
            update
                .min_instances
                .unwrap_or(config.min_instances.unwrap_or(0).into()),
            update
                .max_instances
                .unwrap_or(config.max_instances.unwrap_or(0).into()),
        )?;
        let creator = self.creator(owner);
        let state = self.deployments.get_mut(&key).expect("checked above");
        let was_offline = state.offline_since.is_some();
        state.deployment.current_release = Some(Release {
            number: Some(release.number.unwrap_or(0) + 1),
            model: Some(model),
            version: Some(version),
            created_at: Some(Timestamp::now()),
            created_by: Some(creator),
            configuration: Some(DeploymentConfiguration {
                hardware: Some(hardware),
                min_instances: Some(min),
                max_instances: Some(max),
            }),
        });
        let offline = min == 0 && max == 0;
        state.offline_since = match (offline, was_offline) {
            (true, true) => state.offline_since,
            (true, false) => Some(now),
            (false, _) => None,
        };
        let deployment = state.deployment.clone();
        if offline && !was_offline {
            // Disabling a deployment cancels its in-flight predictions.
            let full_name = format!("{owner}/{name}");
            for p in self.predictions.values_mut() {
                if p.prediction.deployment.as_deref() == Some(full_name.as_str())
                    && !p.prediction.status.is_terminal()
                {
                    p.cancel_requested = true;
                }
            }
        }
        Ok(deployment)
    }

    /// DELETE: only once the deployment has been offline (0/0) for the offline window.
    pub fn delete_deployment(
        &mut self,
        caller: &str,
        owner: &str,
        name: &str,
        now: Instant,
    ) -> Result<(), ApiProblem> {
        self.get_deployment(caller, owner, name)?;
        self.delete_checked(owner, name, now, false)
    }

    pub fn delete_checked(
        &mut self,
        owner: &str,
        name: &str,
        now: Instant,
        force: bool,
    ) -> Result<(), ApiProblem> {
        let key = (owner.to_owned(), name.to_owned());
        let state = self
            .deployments
            .get(&key)
            .ok_or_else(ApiProblem::not_found)?;
        if !force {
            let window = self.offline_window;
            match state.offline_since {
                None => {
                    let config = state
                        .deployment
                        .configuration()
                        .cloned()
                        .unwrap_or_default();
                    return Err(ApiProblem::conflict(format!(
                        "Deployment {owner}/{name} is online (min_instances={}, max_instances={}). Set both to 0 and \
                         wait {} before deleting it.",
                        config.min_instances.unwrap_or(0),
                        config.max_instances.unwrap_or(0),
                        human(window)
                    )));
                }
                Some(since) => {
                    let offline_for = now.saturating_duration_since(since);
                    if offline_for < window {
                        return Err(ApiProblem::conflict(format!(
                            "Deployment {owner}/{name} has been offline for {}; it can be deleted after it has been \
                             offline and unused for {}, in {}.",
                            human(offline_for),
                            human(window),
                            human(window - offline_for)
                        )));
                    }
                }
            }
        }
        self.deployments.remove(&key);
        Ok(())
    }

    pub fn model_version(
        &self,
        caller: &str,
        owner: &str,
        model: &str,
        id: &str,
    ) -> Result<ModelVersion, ApiProblem> {
        let state = self
            .models
            .get(&format!("{owner}/{model}"))
            .ok_or_else(ApiProblem::not_found)?;
        if !state.public && state.owner != caller {
            return Err(ApiProblem::not_found());
        }
        state
            .versions
            .iter()
            .find(|v| v.id == id)
            .cloned()
            .ok_or_else(ApiProblem::not_found)
    }

    fn check_model_version(
        &self,
        caller: &str,
        model: &str,
        version: &str,
    ) -> Result<(), ApiProblem> {
        let Some(state) = self
            .models
            .get(model)
            .filter(|m| m.public || m.owner == caller)
        else {
            return Err(ApiProblem::invalid(format!(
                "Model {model} does not exist or you do not have permission to use it (expected owner/name)"
            )));
        };
        if !state.versions.iter().any(|v| v.id == version) {
            return Err(ApiProblem::invalid(format!(
                "Version {version} does not exist for model {model}; versions are 64-character IDs"
            )));
        }
        Ok(())
    }

    fn check_hardware(&self, sku: &str) -> Result<(), ApiProblem> {
        if self.hardware.iter().any(|h| h.sku == sku) {
            return Ok(());
        }
        let known: Vec<&str> = self.hardware.iter().map(|h| h.sku.as_str()).collect();
        Err(ApiProblem::invalid(format!(
            "Unknown hardware {sku:?}; available: {}",
            known.join(", ")
        )))
    }

    /// `POST /v1/deployments/{owner}/{name}/predictions` with a raw JSON body.
    pub fn create_prediction_json(
        &mut self,
        caller: &str,
        owner: &str,
        name: &str,
        body: &Value,
        api_base: &str,
        allow_http_anywhere: bool,
    ) -> Result<Prediction, ApiProblem> {
        let deployment = self.get_deployment(caller, owner, name)?;
        let fields = body
            .as_object()
            .ok_or_else(|| ApiProblem::bad_request("The body must be a JSON object"))?;
        allow_only(
            fields,
            &["input", "webhook", "webhook_events_filter", "stream"],
        )?;
        let request: PredictionRequest = serde_json::from_value(body.clone())
            .map_err(|e| ApiProblem::bad_request(format!("Invalid prediction request: {e}")))?;
        if !request.input.is_object() {
            return Err(ApiProblem::bad_request(
                "input is required and must be a JSON object",
            ));
        }
        if let Some(filter) = &request.webhook_events_filter
            && let Some(bad) = filter
                .iter()
                .find(|e| matches!(e, WebhookEvent::Unknown(_)))
        {
            return Err(ApiProblem::invalid(format!(
                "Unknown webhook event {bad:?}; expected start, output, logs or completed"
            )));
        }
        if let Some(url) = &request.webhook {
            check_webhook_url(url, allow_http_anywhere)?;
        }
        let release = deployment.current_release.clone().unwrap_or_default();
        let config = release.configuration.clone().unwrap_or_default();
        if config.max_instances.unwrap_or(0) == 0 {
            return Err(ApiProblem::conflict(format!(
                "Deployment {owner}/{name} is offline (max_instances is 0); scale it up to run predictions"
            )));
        }
        let id = random_prediction_id();
        let get = format!("{api_base}/predictions/{id}");
        let prediction = Prediction {
            id: id.clone(),
            model: release.model.unwrap_or_default(),
            version: release.version.unwrap_or_default(),
            input: request.input,
            output: Value::Null,
            error: None,
            status: PredictionStatus::Starting,
            logs: Some(String::new()),
            data_removed: false,
            created_at: Some(Timestamp::now()),
            started_at: None,
            completed_at: None,
            deadline: None,
            source: Some(PredictionSource::Api),
            metrics: None,
            urls: PredictionUrls {
                cancel: format!("{get}/cancel"),
                get,
                web: format!("https://replicate.com/p/{id}"),
                stream: None,
            },
            deployment: Some(format!("{owner}/{name}")),
            webhook: request.webhook,
            webhook_events_filter: request.webhook_events_filter,
        };
        self.predictions.insert(
            id.clone(),
            PredictionState {
                owner: caller.to_owned(),
                prediction: prediction.clone(),
                cancel_requested: false,
            },
        );
        self.prediction_order.push(id);
        Ok(prediction)
    }

    pub fn get_prediction(&self, caller: &str, id: &str) -> Result<Prediction, ApiProblem> {
        self.predictions
            .get(id)
            .filter(|p| p.owner == caller)
            .map(|p| p.prediction.clone())
            .ok_or_else(ApiProblem::not_found)
    }
}

struct CreateRaw {
    name: String,
    model: String,
    version: String,
    hardware: String,
    min_instances: i64,
    max_instances: i64,
}

struct UpdateRaw {
    version: Option<String>,
    hardware: Option<String>,
    min_instances: Option<i64>,
    max_instances: Option<i64>,
}

fn allow_only(fields: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiProblem> {
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiProblem::bad_request(format!(
            "Unknown fields: {}; this operation takes {}",
            unknown.join(", "),
            allowed.join(", ")
        )))
    }
}

fn string_field(fields: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiProblem> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiProblem::bad_request(format!("{key} must be a string"))),
    }
}

fn int_field(fields: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiProblem> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiProblem::bad_request(format!("{key} must be an integer"))),
    }
}

fn check_name(name: &str) -> Result<(), ApiProblem> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > NAME_MAX_LEN || !valid_chars {
        return Err(ApiProblem::invalid(format!(
            "Invalid deployment name {name:?}: use 1 to {NAME_MAX_LEN} letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// Checks instance counts against the account's caps; returns them as u32.
fn check_instances(caps: InstanceCaps, min: i64, max: i64) -> Result<(u32, u32), ApiProblem> {
    if min < 0 {
        return Err(ApiProblem::invalid(format!(
            "min_instances must be at least 0, got {min}"
        )));
    }
    if max < 0 {
        return Err(ApiProblem::invalid(format!(
            "max_instances must be at least 0, got {max}"
        )));
    }
    if min > i64::from(caps.max_min_instances) {
        return Err(ApiProblem::invalid(format!(
            "min_instances must be at most {}, got {min}; contact support to raise the limit",
            caps.max_min_instances
        )));
    }
    if max > i64::from(caps.max_max_instances) {
        return Err(ApiProblem::invalid(format!(
            "max_instances must be at most {}, got {max}; contact support to raise the limit",
            caps.max_max_instances
        )));
    }
    if min > max {
        return Err(ApiProblem::invalid(format!(
            "min_instances ({min}) must not be greater than max_instances ({max})"
        )));
    }
    Ok((min as u32, max as u32))
}

/// Replicate wants https; the emulator also takes http to loopback so tests need no TLS.
fn check_webhook_url(url: &str, allow_http_anywhere: bool) -> Result<(), ApiProblem> {
    let parsed = url::Url::parse(url)
        .map_err(|_| ApiProblem::invalid(format!("Invalid webhook URL {url:?}")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_http_anywhere => Ok(()),
        _ => Err(ApiProblem::invalid(format!(
            "The webhook URL must use https, got {url:?}"
        ))),
    }
}

fn encode_cursor(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("before:{seq}"))
}

fn decode_cursor(cursor: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("before:")?
        .parse()
        .ok()
}

/// `3m 20s`-style text for problem details.
pub fn human(duration: Duration) -> String {
    let total = duration.as_secs();
    match total {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{total}s"),
        60..3600 => format!("{}m {}s", total / 60, total % 60),
        _ => format!("{}h {}m", total / 3600, total % 3600 / 60),
    }
}

fn random_signing_key() -> SigningKey {
    let mut bytes = vec![0u8; 24];
    rand::rng().fill(&mut bytes[..]);
    SigningKey::from_bytes(bytes)
}

/// 26 lowercase base32-like characters, like Replicate's prediction IDs.
fn random_prediction_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut rng = rand::rng();
    (0..26)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A small Cog-style schema so `openapi_schema` is not empty.
fn hello_schema() -> Value {
    serde_json::json!({
        "openapi": "3.0.2",
        "components": {"schemas": {
            "Input": {"type": "object", "title": "Input", "required": ["text"],
                      "properties": {"text": {"type": "string", "title": "Text", "x-order": 0}}},
            "Output": {"type": "string", "title": "Output"}
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::config::{DEMO_USERNAME, versions};

    fn world() -> World {
        World::new(&Seed::default(), 2, Duration::from_secs(900)).unwrap()
    }

    fn create(world: &mut World, name: &str, min: u32, max: u32) -> Result<Deployment, ApiProblem> {
        let request = CreateDeployment {
            name: name.into(),
            model: "replicate/hello-world".into(),
            version: versions::HELLO_WORLD_V1.into(),
            hardware: "cpu".into(),
            min_instances: min,
            max_instances: max,
        };
        world.create_deployment_typed(DEMO_USERNAME, &request, Instant::now())
    }

    #[test]
    fn cursor_round_trips() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("garbage!"), None);
    }

    #[test]
    fn pages_are_newest_first_and_complete() {
        let mut world = world();
        for i in 0..5 {
            create(&mut world, &format!("d{i}"), 0, 1).unwrap();
        }
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = world
                .list_deployments(DEMO_USERNAME, cursor.as_deref(), "http://x/v1/deployments")
                .unwrap();
            names.extend(page.results.iter().map(|d| d.name.clone()));
            match page.next {
                Some(next) => cursor = Some(next.split("cursor=").nth(1).unwrap().to_owned()),
                None => break,
            }
        }
        assert_eq!(names, ["d4", "d3", "d2", "d1", "d0"]);
    }

    #[test]
    fn instance_rules() {
        let caps = InstanceCaps::default();
        assert_eq!(check_instances(caps, 0, 0), Ok((0, 0)));
        assert_eq!(check_instances(caps, 5, 20), Ok((5, 20)));
        for (min, max) in [(-1, 1), (0, -1), (6, 20), (0, 21), (3, 2)] {
            assert_eq!(
                check_instances(caps, min, max).unwrap_err().status,
                422,
                "{min}/{max}"
            );
        }
    }

    #[test]
    fn duplicate_names_conflict_and_patch_bumps_the_release() {
        let mut world = world();
        create(&mut world, "app", 1, 2).unwrap();
        assert_eq!(create(&mut world, "app", 1, 2).unwrap_err().status, 409);
        let body = serde_json::json!({"max_instances": 3});
        let updated = world
            .update_deployment_json(DEMO_USERNAME, DEMO_USERNAME, "app", &body, Instant::now())
            .unwrap();
        let release = updated.current_release.unwrap();
        assert_eq!(release.number, Some(2));
        assert_eq!(release.configuration.unwrap().min_instances, Some(1));
        let model = serde_json::json!({"model": "stability-ai/sdxl"});
        let err = world
            .update_deployment_json(DEMO_USERNAME, DEMO_USERNAME, "app", &model, Instant::now())
            .unwrap_err();
        assert_eq!(err.status, 422);
        assert!(err.detail.contains("cannot be changed"), "{}", err.detail);
    }

    #[test]
    fn delete_waits_for_the_offline_window() {
        let mut world = world();
        let start = Instant::now();
        create(&mut world, "app", 1, 1).unwrap();
        assert_eq!(
            world
                .delete_deployment(DEMO_USERNAME, DEMO_USERNAME, "app", start)
                .unwrap_err()
                .status,
            409
        );
        let off = UpdateDeployment {
            min_instances: Some(0),
            max_instances: Some(0),
            ..Default::default()
        };
        world
            .update_deployment_typed(DEMO_USERNAME, "app", &off, start)
            .unwrap();
        let early = world
            .delete_deployment(
                DEMO_USERNAME,
                DEMO_USERNAME,
                "app",
                start + Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(early.detail.contains("in 14m 0s"), "{}", early.detail);
        world
            .delete_deployment(
                DEMO_USERNAME,
                DEMO_USERNAME,
                "app",
                start + Duration::from_secs(900),
            )
            .unwrap();
        assert!(world.deployments.is_empty());
    }

    #[test]
    fn rate_windows_refill() {
        let mut world = world();
        world.accounts.get_mut(DEMO_USERNAME).unwrap().rate_limit = Some(RateLimitSeed {
            general: 2,
            predictions: 1,
            window_ms: 1000,
        });
        let now = Instant::now();
        assert_eq!(
            world
                .take_budget(DEMO_USERNAME, Bucket::General, now)
                .unwrap()
                .remaining,
            1
        );
        assert_eq!(
            world
                .take_budget(DEMO_USERNAME, Bucket::General, now)
                .unwrap()
                .remaining,
            0
        );
        assert!(
            world
                .take_budget(DEMO_USERNAME, Bucket::General, now)
                .is_err()
        );
        assert!(
            world
                .take_budget(DEMO_USERNAME, Bucket::Predictions, now)
                .is_ok()
        );
        assert!(
            world
                .take_budget(DEMO_USERNAME, Bucket::General, now + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn webhook_urls() {
        assert!(check_webhook_url("https://example.com/hook", false).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/hook", false).is_ok());
        assert!(check_webhook_url("http://localhost/hook", false).is_ok());
        assert!(check_webhook_url("http://example.com/hook", false).is_err());
        assert!(check_webhook_url("http://example.com/hook", true).is_ok());
    }
}
