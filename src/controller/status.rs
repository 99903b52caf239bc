//! The controller's part of the status, computed as a pure function of the outcome of one
//! reconcile and the status already stored.
//!
//! Conditions keep their `lastTransitionTime` unless their status really flips, and the whole
//! controller-owned status is compared with what is stored so that a no-op reconcile writes
//! nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

use crate::crd::{ObservedDeployment, ReplicateDeploymentStatus};

use super::plan::LiveDeployment;

/// Condition types.
pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";

/// Stable reason strings for conditions and Events. Tools and alerts may match on them.
pub mod reason {
    pub const AVAILABLE: &str = "Available";
    pub const SYNCED: &str = "Synced";
    pub const CREATING: &str = "Creating";
    pub const CREATED: &str = "Created";
    pub const UPDATING: &str = "Updating";
    pub const UPDATED: &str = "Updated";
    pub const ADOPTED: &str = "Adopted";
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    pub const RECREATED: &str = "Recreated";
    pub const DELETING: &str = "Deleting";
    pub const WAITING_FOR_OFFLINE: &str = "WaitingForOffline";
    pub const DELETED: &str = "Deleted";
    pub const ORPHANED: &str = "Orphaned";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const ALREADY_EXISTS: &str = "AlreadyExists";
    pub const CONFLICT: &str = "Conflict";
    pub const MODEL_MISMATCH: &str = "ModelMismatch";
    pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const RATE_LIMITED: &str = "RateLimited";
    pub const REPLICATE_ERROR: &str = "ReplicateError";
}

/// One condition as the reconcile wants it, before times and generations are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: true,
            reason,
            message: message.into(),
        }
    }
    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// The fields of the status that the controller owns, exactly as it applies them with
/// server-side apply. The webhook sidecar's fields are absent, so neither overwrites the other.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<ObservedDeployment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_not_before: Option<Time>,
}

impl ControllerStatus {
    /// The controller's fields of a stored status.
    pub fn from_stored(status: Option<&ReplicateDeploymentStatus>) -> Self {
        let Some(s) = status else {
            return Self::default();
        };
        Self {
            observed_generation: s.observed_generation,
            conditions: s.conditions.clone(),
            deployment: s.deployment.clone(),
            webhook_url: s.webhook_url.clone(),
            delete_not_before: s.delete_not_before.clone(),
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// What one reconcile learned, to be turned into a status.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `None` leaves the stored Ready condition as it is (a transient error says nothing new
    /// about the deployment, so Ready must not flap).
    pub ready: Option<Cond>,
    pub synced: Option<Cond>,
    /// The deployment as last seen; `None` keeps the stored one, `Some(None)` clears it.
    pub live: Option<Option<LiveDeployment>>,
    pub delete_not_before: Option<Option<Time>>,
}

/// The observed-deployment block of the status.
pub fn observed(live: &LiveDeployment) -> ObservedDeployment {
    ObservedDeployment {
        owner: live.owner.clone(),
        name: live.name.clone(),
        release_number: live.release_number,
        model: live.model.clone(),
        version: live.version.clone(),
        short_version: live.version.as_ref().map(|v| v.chars().take(12).collect()),
        hardware: live.hardware.clone(),
        min_instances: live.min_instances,
        max_instances: live.max_instances,
    }
}

/// The new controller status: the stored one with this outcome applied.
pub fn next_status(
    stored: &ControllerStatus,
    outcome: &Outcome,
    generation: Option<i64>,
    webhook_url: Option<String>,
    now: &Time,
) -> ControllerStatus {
    let mut next = stored.clone();
    next.observed_generation = generation;
    next.webhook_url = webhook_url;
    if let Some(ready) = &outcome.ready {
        set_condition(&mut next.conditions, READY, ready, generation, now);
    }
    if let Some(synced) = &outcome.synced {
        set_condition(&mut next.conditions, SYNCED, synced, generation, now);
    }
    if let Some(live) = &outcome.live {
        next.deployment = live.as_ref().map(observed);
    }
    if let Some(until) = &outcome.delete_not_before {
        next.delete_not_before = until.clone();
    }
    next.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    next
}

/// Sets one condition; `lastTransitionTime` moves only when the status flips.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    want: &Cond,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if want.status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status.to_string();
            existing.reason = want.reason.to_string();
            existing.message = want.message.clone();
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: want.reason.to_string(),
            message: want.message.clone(),
            last_transition_time: now.clone(),
            observed_generation: generation,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn live() -> LiveDeployment {
        LiveDeployment {
            owner: "acme".into(),
            name: "dep".into(),
            release_number: Some(3),
            model: Some("acme/m".into()),
            version: Some("0123456789abcdef".repeat(4)),
            hardware: Some("cpu".into()),
            min_instances: Some(0),
            max_instances: Some(1),
        }
    }

    fn ready_outcome() -> Outcome {
        Outcome {
            ready: Some(Cond::yes(reason::AVAILABLE, "ok")),
            synced: Some(Cond::yes(reason::SYNCED, "ok")),
            live: Some(Some(live())),
            delete_not_before: None,
        }
    }

    #[test]
    fn a_repeated_outcome_changes_nothing() {
        let first = next_status(
            &ControllerStatus::default(),
            &ready_outcome(),
            Some(1),
            None,
            &time(0),
        );
        let second = next_status(&first, &ready_outcome(), Some(1), None, &time(600));
        assert_eq!(
            first, second,
            "a no-op reconcile must produce an identical status"
        );
        assert_eq!(
            first.deployment.as_ref().unwrap().short_version.as_deref(),
            Some("0123456789ab")
        );
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = next_status(
            &ControllerStatus::default(),
            &ready_outcome(),
            Some(1),
            None,
            &time(0),
        );
        let updating = Outcome {
            ready: Some(Cond::yes(reason::AVAILABLE, "updated")),
            ..ready_outcome()
        };
        let second = next_status(&first, &updating, Some(2), None, &time(10));
        let ready = second.condition(READY).unwrap();
        assert_eq!(
            ready.last_transition_time,
            time(0),
            "True→True keeps the time"
        );
        assert_eq!(ready.message, "updated");
        assert_eq!(ready.observed_generation, Some(2));

        let failing = Outcome {
            ready: Some(Cond::no(reason::INVALID_SPEC, "bad hardware")),
            ..ready_outcome()
        };
        let third = next_status(&second, &failing, Some(3), None, &time(20));
        let ready = third.condition(READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.clone()),
            ("False", time(20))
        );
    }

    #[test]
    fn a_transient_error_leaves_ready_alone() {
        let first = next_status(
            &ControllerStatus::default(),
            &ready_outcome(),
            Some(1),
            None,
            &time(0),
        );
        let transient = Outcome {
            ready: None,
            synced: Some(Cond::no(reason::RATE_LIMITED, "429")),
            ..Default::default()
        };
        let second = next_status(&first, &transient, Some(1), None, &time(5));
        assert_eq!(second.condition(READY), first.condition(READY));
        assert_eq!(
            second.condition(SYNCED).unwrap().reason,
            reason::RATE_LIMITED
        );
        assert_eq!(
            second.deployment, first.deployment,
            "an unobserved deployment keeps its last view"
        );
    }

    #[test]
    fn only_controller_fields_are_serialized() {
        let status = next_status(
            &ControllerStatus::default(),
            &ready_outcome(),
            Some(1),
            Some("https://hooks.example/webhooks/ns/dep".into()),
            &time(0),
        );
        let json = serde_json::to_value(&status).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "conditions",
                "deployment",
                "observedGeneration",
                "webhookUrl"
            ]
        );
    }
}
