//! A typed client for the parts of the Replicate HTTP API the operator uses: deployments,
//! hardware, model versions, the account, the webhook secret and deployment predictions.
//!
//! - [`client`]: [`ReplicateClient`] (shared pool and limiters) and [`AccountClient`] (calls).
//! - [`types`]: the API objects. [`error`]: [`ApiError`] and how answers are classified.
//! - [`retry`], [`rate_limit`], [`pagination`]: the pure policies behind the client.
//! - [`token`]: [`ApiToken`], which never shows up in logs or errors.

pub mod client;
pub mod error;
pub mod pagination;
pub mod rate_limit;
pub mod retry;
pub mod token;
pub mod types;

pub use client::{
    AccountClient, BASE_URL_ENV, ClientConfig, ConfigError, DEFAULT_BASE_URL, ReplicateClient,
    RequestObserver, RequestOutcome,
};
pub use error::{ApiError, ErrorClass};
pub use rate_limit::{Budget, RateLimits};
pub use retry::RetryPolicy;
pub use token::{ApiToken, TOKEN_ENV};
pub use types::*;
