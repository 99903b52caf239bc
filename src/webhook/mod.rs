//! The webhook sidecar: receives Replicate's signed prediction webhooks, verifies them and
//! records their effect in the status of the matching `ReplicateDeployment`.
//!
//! Pure parts:
//! - [`crate::signature`]: Standard Webhooks verification.
//! - [`prediction`]: what a webhook body says (a prediction object), parsed leniently.
//! - [`apply`]: the new sidecar status from the current one and a batch of deliveries.
//!
//! I/O at the edges:
//! - [`server`]: the axum router and the order of checks for one delivery.
//! - [`commit`]: group commit, one status write per resource per flush interval.
//! - [`store`]: the [`store::StatusStore`] trait and an in-memory store; [`kube_store`]: the
//!   Kubernetes one (server-side apply on the status subresource).
//! - [`secrets`]: where the signing keys come from (static, Kubernetes Secret, Replicate API).
//! - [`metrics`], [`cli`] (the `webhook` subcommand), [`bench`] (verification throughput).
//!
//! Typical wiring (see [`cli`]):
//! ```no_run
//! # async fn f(store: std::sync::Arc<dyn replicate_operator::webhook::store::StatusStore>) {
//! use std::sync::Arc;
//! use replicate_operator::webhook::{secrets::StaticSecrets, server::{WebhookConfig, WebhookServer}};
//! let secrets = Arc::new(StaticSecrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
//! let server = WebhookServer::new(store, secrets, WebhookConfig::default());
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await.unwrap();
//! server.serve(listener, std::future::pending()).await.unwrap();
//! # }
//! ```

pub mod apply;
pub mod bench;
pub mod cli;
pub mod commit;
pub mod kube_store;
pub mod metrics;
pub mod prediction;
pub mod secrets;
pub mod server;
pub mod store;
