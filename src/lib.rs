//! replicate-operator: Replicate deployments as Kubernetes resources.
//!
//! - [`crd`]: the `ReplicateDeployment` resource and its admission rules.
//! - [`replicate`]: the typed Replicate API client.
//! - [`controller`]: the reconcile loop.
//! - [`emulator`]: an in-memory Replicate API for tests, benchmarks and the local demo.
//! - [`signature`]: Standard Webhooks signing and verification.
//! - [`webhook`]: the sidecar that records verified webhooks in the status.
//! - [`metrics`], [`telemetry`], [`cli`]: running it.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod emulator;
pub mod leader;
pub mod metrics;
pub mod replicate;
pub mod signature;
pub mod telemetry;
pub mod webhook;
