//! The webhook sidecar: receives Replicate's signed prediction webhooks, verifies them and
//! records their effect in the status of the matching `ReplicateDeployment`.
//!
//! - [`prediction`]: what a webhook body says (a prediction object), parsed leniently.
//! - [`apply`]: pure status computation from a batch of verified deliveries.

pub mod apply;
pub mod commit;
pub mod kube_store;
pub mod metrics;
pub mod prediction;
pub mod secrets;
pub mod server;
pub mod store;
pub mod bench;
