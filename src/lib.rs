//! replicate-operator: Replicate deployments as Kubernetes resources.
//!
//! - [`crd`]: the `ReplicateDeployment` resource and its admission rules.
//! - [`replicate`]: the typed Replicate API client.
//! - [`controller`]: the reconcile loop.
//! - [`signature`]: Standard Webhooks signing and verification.
//! - [`metrics`], [`telemetry`], [`cli`]: running it.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod replicate;
pub mod signature;
pub mod telemetry;
