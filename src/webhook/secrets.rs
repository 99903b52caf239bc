//! Where the signing secrets come from, per resource.
//!
//! - [`StaticSecrets`]: a fixed list, e.g. from `REPLICATE_WEBHOOK_SECRET` (comma or space
//!   separated, so old and new can both be listed during a rotation).
//! - [`CachedSecrets`] over a [`SecretLoader`]: fetched once per account, cached, and refetched
//!   at most once per `min_refetch` when a signature fails (the secret may have been rotated).
//!   Loaders: [`KubeSecretLoader`] (a Kubernetes Secret holding the webhook secret list) and
//!   [`ReplicateApiLoader`] (Replicate's `GET /webhooks/default/secret` with the resource's
//!   own API token).
//!
//! Secrets and tokens never appear in logs or error messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::store::ResourceInfo;
pub use crate::replicate::ApiToken;
use crate::replicate::ReplicateClient;
use crate::signature::{SecretError, SigningKey, parse_secret_list};

/// The keys to try, in order.
pub type Keys = Arc<[SigningKey]>;

/// The environment variable holding static webhook secrets.
pub const WEBHOOK_SECRET_ENV: &str = "REPLICATE_WEBHOOK_SECRET";
/// How often a failing signature may trigger a refetch of one account's secret.
pub const DEFAULT_MIN_REFETCH: Duration = Duration::from_secs(30);

/// Why no secret could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretSourceError {
    #[error("no Replicate API token for {resource}: {reason}")]
    NoToken { resource: String, reason: String },
    #[error("Replicate answered HTTP {status} to the webhook secret request")]
    Http { status: u16 },
    #[error("the webhook secret request to Replicate failed: {0}")]
    Transport(String),
    #[error("the webhook secret is unusable: {0}")]
    Unusable(#[from] SecretError),
    #[error("reading Secret {secret}: {reason}")]
    KubeSecret { secret: String, reason: String },
}

/// Supplies the signing keys for a resource.
pub trait SecretSource: Send + Sync + 'static {
    /// The keys currently believed valid for this resource's account.
    fn secrets_for<'a>(
        &'a self,
        resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Keys, SecretSourceError>>;

    /// Called when no key verified a delivery. A source that can refetch does so, no more often
    /// than its rate limit allows, and returns the new keys if they differ; `None` otherwise.
    fn refresh<'a>(
        &'a self,
        _resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Option<Keys>, SecretSourceError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A fixed list of keys for every resource.
#[derive(Debug, Clone)]
pub struct StaticSecrets(Keys);

impl StaticSecrets {
    pub fn new(keys: Vec<SigningKey>) -> Self {
        Self(keys.into())
    }

    /// Parses a comma or whitespace separated list of `whsec_…` secrets.
    pub fn parse(list: &str) -> Result<Self, SecretError> {
        parse_secret_list(list).map(Self::new)
    }
}

impl SecretSource for StaticSecrets {
    fn secrets_for<'a>(
        &'a self,
        _resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Keys, SecretSourceError>> {
        let keys = self.0.clone();
        Box::pin(async move { Ok(keys) })
    }
}

/// Loads the keys of one account; [`CachedSecrets`] decides when.
pub trait SecretLoader: Send + Sync + 'static {
    /// Which account's secret signs this resource's webhooks (the cache key).
    fn account(&self, resource: &ResourceInfo) -> String;
    fn load<'a>(
        &'a self,
        resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Vec<SigningKey>, SecretSourceError>>;
}

/// Caches a loader's keys per account and refetches on failure, rate-limited.
pub struct CachedSecrets<L> {
    loader: L,
    min_refetch: Duration,
    accounts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// The last failed first fetch: not retried before `min_refetch` has passed, so requests
    /// for an account whose token is broken cannot make the sidecar hammer Replicate.
    failure: Option<(tokio::time::Instant, SecretSourceError)>,
}

struct Cached {
    /// What the loader returned last.
    fetched: Keys,
    /// `fetched`, then the keys fetched the time before (the rotation overlap).
    keys: Keys,
    fetched_at: tokio::time::Instant,
}

impl<L: SecretLoader> CachedSecrets<L> {
    pub fn new(loader: L, min_refetch: Duration) -> Self {
        Self {
            loader,
            min_refetch,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// One slot per account; its async lock makes concurrent misses share one fetch.
    fn slot(&self, resource: &ResourceInfo) -> Arc<tokio::sync::Mutex<Slot>> {
        let account = self.loader.account(resource);
        self.accounts
            .lock()
            .unwrap()
            .entry(account)
            .or_default()
            .clone()
    }

    async fn fetch(&self, resource: &ResourceInfo) -> Result<Cached, SecretSourceError> {
        let fetched: Keys = self.loader.load(resource).await?.into();
        Ok(Cached {
            keys: fetched.clone(),
            fetched,
            fetched_at: tokio::time::Instant::now(),
        })
    }
}

impl<L: SecretLoader> SecretSource for CachedSecrets<L> {
    fn secrets_for<'a>(
        &'a self,
        resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Keys, SecretSourceError>> {
        Box::pin(async move {
            let slot = self.slot(resource);
            let mut slot = slot.lock().await;
            if let Some(c) = slot.cached.as_ref() {
                return Ok(c.keys.clone());
            }
            if let Some((at, error)) = &slot.failure
                && at.elapsed() < self.min_refetch
            {
                return Err(error.clone());
            }
            match self.fetch(resource).await {
                Ok(fresh) => {
                    let keys = fresh.keys.clone();
                    *slot = Slot {
                        cached: Some(fresh),
                        failure: None,
                    };
                    Ok(keys)
                }
                Err(e) => {
                    slot.failure = Some((tokio::time::Instant::now(), e.clone()));
                    Err(e)
                }
            }
        })
    }

    fn refresh<'a>(
        &'a self,
        resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Option<Keys>, SecretSourceError>> {
        Box::pin(async move {
            let slot = self.slot(resource);
            let mut slot = slot.lock().await;
            let cached = &mut slot.cached;
            let previous = match cached.as_ref() {
                Some(c) if c.fetched_at.elapsed() < self.min_refetch => return Ok(None),
                Some(c) => c.fetched.clone(),
                None => Keys::from(Vec::new()),
            };
            let mut fresh = self.fetch(resource).await?;
            if fresh.fetched == previous {
                cached.as_mut().expect("present when unchanged").fetched_at = fresh.fetched_at;
                return Ok(None);
            }
            // Keep the previous generation too (one generation only): deliveries signed just
            // before the rotation may still be in flight, or be retried, and must not be dropped.
            let mut merged: Vec<SigningKey> = fresh.fetched.to_vec();
            merged.extend(
                previous
                    .iter()
                    .filter(|k| !fresh.fetched.contains(k))
                    .cloned(),
            );
            fresh.keys = merged.into();
            let keys = fresh.keys.clone();
            *cached = Some(fresh);
            Ok(Some(keys))
        })
    }
}

/// Webhook secrets kept in a Kubernetes Secret (value: a `whsec_…` list), for clusters that
/// provision the secret themselves. Every resource uses the same account.
pub struct KubeSecretLoader {
    api: Api<Secret>,
    name: String,
    key: String,
}

impl KubeSecretLoader {
    pub fn new(client: Client, namespace: &str, name: &str, key: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            key: key.into(),
        }
    }
}

impl SecretLoader for KubeSecretLoader {
    fn account(&self, _resource: &ResourceInfo) -> String {
        String::new()
    }

    fn load<'a>(
        &'a self,
        _resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Vec<SigningKey>, SecretSourceError>> {
        Box::pin(async move {
            let value = read_secret_value(&self.api, &self.name, &self.key).await?;
            Ok(parse_secret_list(&value)?)
        })
    }
}

async fn read_secret_value(
    api: &Api<Secret>,
    name: &str,
    key: &str,
) -> Result<String, SecretSourceError> {
    let fail = |reason: String| SecretSourceError::KubeSecret {
        secret: name.to_owned(),
        reason,
    };
    let secret = api.get(name).await.map_err(|e| fail(e.to_string()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| fail(format!("it has no key {key:?}")))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| fail(format!("the value of {key:?} is not UTF-8")))
}

/// Finds the Replicate API token a resource acts with.
pub trait TokenSource: Send + Sync + 'static {
    fn token_for<'a>(
        &'a self,
        resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<ApiToken, SecretSourceError>>;
}

/// One token for every resource.
pub struct FixedToken(pub ApiToken);

impl TokenSource for FixedToken {
    fn token_for<'a>(
        &'a self,
        _resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<ApiToken, SecretSourceError>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// `spec.credentialsSecretRef` (a Secret in the resource's namespace), else the operator's
/// default token.
pub struct KubeTokens {
    pub client: Client,
    pub default_token: Option<ApiToken>,
}

impl TokenSource for KubeTokens {
    fn token_for<'a>(
        &'a self,
        resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<ApiToken, SecretSourceError>> {
        Box::pin(async move {
            match &resource.credentials {
                Some(r) => {
                    let api = Api::namespaced(self.client.clone(), &resource.key.namespace);
                    let value = read_secret_value(&api, &r.name, &r.key).await?;
                    Ok(ApiToken::new(value))
                }
                None => self
                    .default_token
                    .clone()
                    .ok_or_else(|| SecretSourceError::NoToken {
                        resource: resource.key.to_string(),
                        reason: format!(
                            "no credentialsSecretRef and {} is not set",
                            crate::replicate::TOKEN_ENV
                        ),
                    }),
            }
        })
    }
}

/// The account's default webhook secret from Replicate's API, with the resource's own token.
pub struct ReplicateApiLoader<T> {
    /// The operator's shared Replicate client (rate limits, retries, timeouts).
    pub replicate: ReplicateClient,
    pub tokens: T,
}

impl<T: TokenSource> SecretLoader for ReplicateApiLoader<T> {
    fn account(&self, resource: &ResourceInfo) -> String {
        // Resources naming the same Secret act as the same account; the rest share the default.
        match &resource.credentials {
            Some(r) => format!("{}/{}/{}", resource.key.namespace, r.name, r.key),
            None => String::new(),
        }
    }

    fn load<'a>(
        &'a self,
        resource: &'a ResourceInfo,
    ) -> BoxFuture<'a, Result<Vec<SigningKey>, SecretSourceError>> {
        Box::pin(async move {
            let token = self.tokens.token_for(resource).await?;
            let key = fetch_default_webhook_secret(&self.replicate, &token).await?;
            Ok(vec![key])
        })
    }
}

/// `GET /v1/webhooks/default/secret` → `{"key": "whsec_…"}`, as the account of `token`.
pub async fn fetch_default_webhook_secret(
    replicate: &ReplicateClient,
    token: &ApiToken,
) -> Result<SigningKey, SecretSourceError> {
    let secret = replicate
        .account(token.clone())
        .default_webhook_secret()
        .await
        .map_err(|e| match e.status() {
            Some(status) => SecretSourceError::Http { status },
            None => SecretSourceError::Transport(e.to_string()),
        })?;
    Ok(SigningKey::from_secret(&secret.key)?)
}
