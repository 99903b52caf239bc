//! The HTTP client: one connection pool, per-account rate limits, retries and observation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::RngExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use url::Url;

use super::error::{ApiError, ErrorClass, WaitHints, classify};
use super::pagination::{CursorTrail, cursor_of, with_cursor};
use super::rate_limit::{AccountLimiter, RateLimits};
use super::retry::RetryPolicy;
use super::token::ApiToken;
use super::types::*;

/// The base URL of the public API.
pub const DEFAULT_BASE_URL: &str = "https://api.replicate.com/v1";
/// The environment variable that overrides the base URL.
pub const BASE_URL_ENV: &str = "REPLICATE_API_BASE_URL";
/// `Prefer: wait=N` accepts 1 to 60 seconds.
pub const MAX_PREFER_WAIT_SECS: u32 = 60;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid Replicate base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// What one HTTP attempt came to; handed to the [`RequestObserver`].
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub method: Method,
    /// The route template, e.g. `/deployments/{owner}/{name}`, never the concrete path.
    pub route: &'static str,
    /// The HTTP status, when an answer arrived.
    pub status: Option<u16>,
    /// The error class, when the attempt failed.
    pub error: Option<ErrorClass>,
    /// Time on the wire, without the wait for the rate limiter.
    pub latency: Duration,
    /// How long this attempt waited for the client-side rate limiter.
    pub throttled: Duration,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// A hook that sees every attempt, for metrics. Closures implement it.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, outcome: &RequestOutcome);
}

impl<F: Fn(&RequestOutcome) + Send + Sync> RequestObserver for F {
    fn observe(&self, outcome: &RequestOutcome) {
        self(outcome)
    }
}

/// How the client talks to Replicate.
#[derive(Clone)]
pub struct ClientConfig {
    /// Up to and including `/v1`.
    pub base_url: Url,
    /// Per-token budgets (each token is an account).
    pub rate_limits: RateLimits,
    pub connect_timeout: Duration,
    /// The whole request, answer included (sync predictions add their wait to it).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub user_agent: String,
    pub observer: Option<Arc<dyn RequestObserver>>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url.as_str())
            .field("rate_limits", &self.rate_limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("user_agent", &self.user_agent)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: Url::parse(DEFAULT_BASE_URL).expect("the default base URL is valid"),
            rate_limits: RateLimits::default(),
            // Like the official Python client: 5 s to connect, 30 s for the answer.
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            user_agent: format!("replicate-operator/{}", env!("CARGO_PKG_VERSION")),
            observer: None,
        }
    }
}

impl ClientConfig {
    /// The defaults, with the base URL from `REPLICATE_API_BASE_URL` when set.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var(BASE_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Self::default().with_base_url(url.trim()),
            _ => Ok(Self::default()),
        }
    }

    /// Sets the base URL (`…/v1`); a trailing slash is ignored.
    pub fn with_base_url(mut self, url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::BaseUrl {
            url: url.to_owned(),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if parsed.cannot_be_a_base() || !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("expected an http(s) URL".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("a base URL has no query or fragment".into()));
        }
        self.base_url = parsed;
        Ok(self)
    }
}

/// Which client-side bucket a call draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    General,
    Predictions,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    limiters: Mutex<HashMap<ApiToken, Arc<AccountLimiter>>>,
}

/// A Replicate client; cheap to clone, all clones share one connection pool and one set of
/// per-token rate limiters.
#[derive(Clone)]
pub struct ReplicateClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReplicateClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl ReplicateClient {
    pub fn new(config: ClientConfig) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(config.user_agent.clone())
            // The API never redirects; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                limiters: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A handle for one account. Handles for the same token share its rate-limit budget.
    pub fn account(&self, token: ApiToken) -> AccountClient {
        let limiter = {
            let mut limiters = self
                .inner
                .limiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            limiters
                .entry(token.clone())
                .or_insert_with(|| Arc::new(AccountLimiter::new(self.inner.config.rate_limits)))
                .clone()
        };
        AccountClient {
            client: self.clone(),
            token,
            limiter,
        }
    }
}

/// The calls of one account (one API token).
#[derive(Clone)]
pub struct AccountClient {
    client: ReplicateClient,
    token: ApiToken,
    limiter: Arc<AccountLimiter>,
}

impl std::fmt::Debug for AccountClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountClient")
            .field("token", &self.token)
            .finish()
    }
}

/// One logical call: it may take several attempts.
struct Call {
    method: Method,
    route: &'static str,
    url: Url,
    body: Option<Vec<u8>>,
    bucket: Bucket,
    extra_headers: HeaderMap,
    timeout: Option<Duration>,
}

/// A successful answer's body.
struct Answer {
    body: Vec<u8>,
}

impl AccountClient {
    /// Every deployment of the account, following the pagination to the end (newest first).
    pub async fn list_deployments(&self) -> Result<Vec<Deployment>, ApiError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        let mut trail = CursorTrail::default();
        loop {
            let page = self.list_deployments_page(cursor.as_deref()).await?;
            all.extend(page.results);
            match page.next.as_deref().filter(|n| !n.is_empty()) {
                None => return Ok(all),
                Some(next) => {
                    let next_cursor = cursor_of(next)?;
                    trail.visit(&next_cursor)?;
                    cursor = Some(next_cursor);
                }
            }
        }
    }

    /// One page of deployments; `cursor` comes from a previous page's `next` (see
    /// [`super::pagination::cursor_of`]).
    pub async fn list_deployments_page(
        &self,
        cursor: Option<&str>,
    ) -> Result<Page<Deployment>, ApiError> {
        let mut url = self.endpoint(&["deployments"]);
        if let Some(cursor) = cursor {
            url = with_cursor(&url, cursor);
        }
        self.get_json("/deployments", url).await
    }

    pub async fn get_deployment(&self, owner: &str, name: &str) -> Result<Deployment, ApiError> {
        let url = self.endpoint(&["deployments", owner, name]);
        self.get_json("/deployments/{owner}/{name}", url).await
    }

    /// Creates a deployment. Never retried: when the answer is lost, look it up by name.
    pub async fn create_deployment(
        &self,
        request: &CreateDeployment,
    ) -> Result<Deployment, ApiError> {
        let url = self.endpoint(&["deployments"]);
        let answer = self
            .send(self.call(Method::POST, "/deployments", url).json(request)?)
            .await?;
        decode(&answer.body)
    }

    /// Changes only the fields that are `Some`; every success makes a new release.
    pub async fn update_deployment(
        &self,
        owner: &str,
        name: &str,
        update: &UpdateDeployment,
    ) -> Result<Deployment, ApiError> {
        let url = self.endpoint(&["deployments", owner, name]);
        let call = self
            .call(Method::PATCH, "/deployments/{owner}/{name}", url)
            .json(update)?;
        decode(&self.send(call).await?.body)
    }

    /// Deletes a deployment. Replicate refuses until it has been offline (0/0) for a while.
    pub async fn delete_deployment(&self, owner: &str, name: &str) -> Result<(), ApiError> {
        let url = self.endpoint(&["deployments", owner, name]);
        self.send(self.call(Method::DELETE, "/deployments/{owner}/{name}", url))
            .await?;
        Ok(())
    }

    pub async fn list_hardware(&self) -> Result<Vec<Hardware>, ApiError> {
        self.get_json("/hardware", self.endpoint(&["hardware"]))
            .await
    }

    pub async fn get_model_version(
        &self,
        owner: &str,
        model: &str,
        id: &str,
    ) -> Result<ModelVersion, ApiError> {
        let url = self.endpoint(&["models", owner, model, "versions", id]);
        self.get_json("/models/{owner}/{name}/versions/{id}", url)
            .await
    }

    /// The account that owns the token (deployments are created under it).
    pub async fn get_account(&self) -> Result<Account, ApiError> {
        self.get_json("/account", self.endpoint(&["account"])).await
    }

    /// The account's webhook signing secret (`whsec_…`).
    pub async fn default_webhook_secret(&self) -> Result<WebhookSecret, ApiError> {
        self.get_json(
            "/webhooks/default/secret",
            self.endpoint(&["webhooks", "default", "secret"]),
        )
        .await
    }

    /// Starts a prediction on a deployment. With `wait = Some(n)` the API holds the answer up
    /// to `n` seconds (1–60) for the prediction to finish ("sync mode"); it may still come back
    /// unfinished. Never retried: a repeat would run the model twice.
    pub async fn create_deployment_prediction(
        &self,
        owner: &str,
        name: &str,
        request: &PredictionRequest,
        wait: Option<u32>,
    ) -> Result<Prediction, ApiError> {
        let url = self.endpoint(&["deployments", owner, name, "predictions"]);
        let mut call = self
            .call(Method::POST, "/deployments/{owner}/{name}/predictions", url)
            .json(request)?;
        call.bucket = Bucket::Predictions;
        if let Some(wait) = wait {
            let wait = wait.clamp(1, MAX_PREFER_WAIT_SECS);
            let value = HeaderValue::from_str(&format!("wait={wait}")).expect("ASCII header");
            call.extra_headers.insert("prefer", value);
            call.timeout =
                Some(self.client.inner.config.request_timeout + Duration::from_secs(wait.into()));
        }
        decode(&self.send(call).await?.body)
    }

    pub async fn get_prediction(&self, id: &str) -> Result<Prediction, ApiError> {
        self.get_json("/predictions/{id}", self.endpoint(&["predictions", id]))
            .await
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.client.inner.config.base_url.clone();
        url.path_segments_mut()
            .expect("validated as a base URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn call(&self, method: Method, route: &'static str, url: Url) -> Call {
        Call {
            method,
            route,
            url,
            body: None,
            bucket: Bucket::General,
            extra_headers: HeaderMap::new(),
            timeout: None,
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        route: &'static str,
        url: Url,
    ) -> Result<T, ApiError> {
        decode(&self.send(self.call(Method::GET, route, url)).await?.body)
    }

    /// Runs a call with rate limiting and retries; returns the 2xx answer or the last error.
    async fn send(&self, call: Call) -> Result<Answer, ApiError> {
        let config = &self.client.inner.config;
        let span =
            tracing::debug_span!("replicate_request", method = %call.method, route = call.route);
        async {
            let mut attempt = 1;
            loop {
                let bucket = match call.bucket {
                    Bucket::General => &self.limiter.general,
                    Bucket::Predictions => &self.limiter.predictions,
                };
                let throttled = bucket.acquire().await;
                let started = Instant::now();
                let result = self.attempt(&call).await;
                let latency = started.elapsed();
                let outcome = RequestOutcome {
                    method: call.method.clone(),
                    route: call.route,
                    status: match &result {
                        Ok((status, _)) => Some(status.as_u16()),
                        Err(err) => err.status(),
                    },
                    error: result.as_ref().err().map(ApiError::class),
                    latency,
                    throttled,
                    attempt,
                };
                tracing::debug!(
                    status = outcome.status,
                    error = outcome.error.map(ErrorClass::as_str),
                    latency_ms = latency.as_millis() as u64,
                    attempt,
                    "replicate request finished"
                );
                if let Some(observer) = &config.observer {
                    observer.observe(&outcome);
                }
                let error = match result {
                    Ok((_, body)) => return Ok(Answer { body }),
                    Err(error) => error,
                };
                let jitter = rand::rng().random::<f64>();
                match config.retry.delay_before_retry(&call.method, &error, attempt, jitter) {
                    Some(delay) => {
                        tracing::debug!(delay_ms = delay.as_millis() as u64, error = %error, "retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(error),
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, call: &Call) -> Result<(StatusCode, Vec<u8>), ApiError> {
        let inner = &self.client.inner;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", self.token.expose())).map_err(|_| {
                ApiError::Invalid {
                    status: 0,
                    detail: Some("the API token is not a valid header value".into()),
                }
            })?;
        auth.set_sensitive(true);
        let mut request = inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, "application/json")
            .headers(call.extra_headers.clone());
        if let Some(body) = &call.body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let hints = WaitHints {
            retry_after: header_text(response.headers(), "retry-after"),
            ratelimit_reset: header_text(response.headers(), "ratelimit-reset"),
        };
        let body = response.bytes().await.map_err(transport_error)?.to_vec();
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(classify(status.as_u16(), &hints, &body, SystemTime::now()))
        }
    }
}

impl Call {
    fn json<T: Serialize>(mut self, body: &T) -> Result<Self, ApiError> {
        self.body = Some(serde_json::to_vec(body).map_err(|e| ApiError::Invalid {
            status: 0,
            detail: Some(format!("could not encode the request body: {e}")),
        })?);
        Ok(self)
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::UnexpectedResponse {
        message: format!("could not decode the answer: {e}"),
    })
}

/// reqwest's messages name the URL (never the token); the source chain says what happened.
fn transport_error(error: reqwest::Error) -> ApiError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        ApiError::Timeout { message }
    } else {
        ApiError::Transport { message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_validated() {
        let config = ClientConfig::default()
            .with_base_url("http://127.0.0.1:8787/v1/")
            .unwrap();
        let client = ReplicateClient::new(config)
            .unwrap()
            .account(ApiToken::new("r8_x"));
        assert_eq!(
            client.endpoint(&["deployments", "acme", "a b"]).as_str(),
            "http://127.0.0.1:8787/v1/deployments/acme/a%20b"
        );
        assert!(ClientConfig::default().with_base_url("mailto:x@y").is_err());
        assert!(
            ClientConfig::default()
                .with_base_url("http://h/v1?x=1")
                .is_err()
        );
    }

    #[test]
    fn the_default_user_agent_names_the_operator() {
        assert!(
            ClientConfig::default()
                .user_agent
                .starts_with("replicate-operator/")
        );
        assert_eq!(ClientConfig::default().base_url.as_str(), DEFAULT_BASE_URL);
    }

    #[test]
    fn debug_of_handles_hides_the_token() {
        let client = ReplicateClient::new(ClientConfig::default()).unwrap();
        let account = client.account(ApiToken::new("r8_topsecret"));
        assert!(!format!("{account:?} {client:?}").contains("topsecret"));
    }

    #[test]
    fn the_same_token_shares_one_limiter() {
        let client = ReplicateClient::new(ClientConfig::default()).unwrap();
        let a = client.account(ApiToken::new("r8_a"));
        let b = client.clone().account(ApiToken::new("r8_a"));
        let c = client.account(ApiToken::new("r8_c"));
        assert!(Arc::ptr_eq(&a.limiter, &b.limiter));
        assert!(!Arc::ptr_eq(&a.limiter, &c.limiter));
    }
}
