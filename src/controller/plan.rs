//! The reconcile plan: a pure function from what the resource asks for and what Replicate has to
//! the one step that brings them together.
//!
//! Nothing here does I/O, so every decision (create, update which fields, leave alone, refuse,
//! delete in steps) is unit-tested as a table below. `reconcile.rs` gathers the inputs and carries
//! out the step.

use std::time::{Duration, SystemTime};

use crate::crd::{DeletionPolicy, ReplicateDeploymentSpec};

/// The configuration of a deployment as Replicate reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveDeployment {
    pub owner: String,
    pub name: String,
    pub release_number: Option<i64>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub hardware: Option<String>,
    pub min_instances: Option<i32>,
    pub max_instances: Option<i32>,
}

impl LiveDeployment {
    /// Whether Replicate has it at 0/0, the state it must stay in before it may be deleted.
    pub fn is_offline(&self) -> bool {
        self.min_instances == Some(0) && self.max_instances == Some(0)
    }
}

/// The fields of a partial update; `None` means "leave as it is".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub version: Option<String>,
    pub hardware: Option<String>,
    pub min_instances: Option<i32>,
    pub max_instances: Option<i32>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The names of the changed fields, for events and status messages.
    pub fn field_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.version.is_some() {
            names.push("version");
        }
        if self.hardware.is_some() {
            names.push("hardware");
        }
        if self.min_instances.is_some() {
            names.push("minInstances");
        }
        if self.max_instances.is_some() {
            names.push("maxInstances");
        }
        names
    }
}

/// Whether this resource may manage a deployment that exists under its name on Replicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The resource created (or started to create) or adopted this deployment: its claim
    /// annotation names it.
    Ours,
    /// The resource has never touched it.
    None,
    /// Another resource, created earlier, already claims the same deployment.
    HeldByOther,
}

/// Everything the plan looks at.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub spec: &'a ReplicateDeploymentSpec,
    /// The deployment name on Replicate (spec.deploymentName or metadata.name).
    pub name: &'a str,
    /// What Replicate has under that name, if anything.
    pub live: Option<&'a LiveDeployment>,
    pub claim: Claim,
    /// The resource has a deletionTimestamp.
    pub deleting: bool,
    /// When the delete is expected to be accepted (recorded when the controller took it offline).
    pub delete_not_before: Option<SystemTime>,
    pub now: SystemTime,
    /// How long Replicate wants a deployment offline before it may be deleted.
    pub offline_window: Duration,
}

/// The single next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Create the deployment (claim it first, so a lost answer is recognised as ours).
    Create,
    /// Take over an existing deployment (opted in), then update what differs.
    Adopt(Changes),
    /// PATCH only these fields. `drift` is true when the spec did not change but Replicate did.
    Update { changes: Changes, drift: bool },
    /// Already as asked: no write anywhere.
    InSync,
    /// A deployment of this name exists that the resource did not create and may not adopt.
    AlreadyExists,
    /// Another resource manages this deployment.
    Conflict,
    /// Replicate has a different model under this name; models cannot change in place.
    ModelMismatch { live_model: String },
    /// Deletion with policy Orphan, or nothing left on Replicate: drop the finalizer.
    Release,
    /// Deletion: take the deployment offline (0/0) and note when the delete may go through.
    ScaleToZero { delete_not_before: SystemTime },
    /// Deletion: the deployment is offline; wait until Replicate will accept the delete.
    WaitOffline { until: SystemTime },
    /// Deletion: ask Replicate to delete it now.
    Delete,
}

/// What the resource asks of Replicate, compared field by field with what it has.
pub fn changes(spec: &ReplicateDeploymentSpec, live: &LiveDeployment) -> Changes {
    fn differs<T: PartialEq + Clone>(want: &T, have: &Option<T>) -> Option<T> {
        (have.as_ref() != Some(want)).then(|| want.clone())
    }
    Changes {
        version: differs(&spec.version, &live.version),
        hardware: differs(&spec.hardware, &live.hardware),
        min_instances: differs(&spec.min_instances, &live.min_instances),
        max_instances: differs(&spec.max_instances, &live.max_instances),
    }
}

/// Decides the next step. `spec_changed` says whether the spec's generation is newer than the one
/// last reconciled, which tells an update (the user changed something) from drift (Replicate did).
pub fn plan(input: &PlanInput<'_>, spec_changed: bool) -> Plan {
    if input.deleting {
        return plan_deletion(input);
    }
    if input.claim == Claim::HeldByOther {
        return Plan::Conflict;
    }
    let Some(live) = input.live else {
        // Nothing on Replicate: create it, also when it was ours before (deleted out of band).
        return Plan::Create;
    };
    if let Some(live_model) = &live.model
        && live_model != &input.spec.model
    {
        // The CRD forbids changing the model, so this is either an adopted deployment of another
        // model or an edit that bypassed admission; PATCH cannot fix it.
        if input.claim == Claim::Ours || input.spec.adopt_existing {
            return Plan::ModelMismatch {
                live_model: live_model.clone(),
            };
        }
    }
    match input.claim {
        Claim::Ours => {
            let changes = changes(input.spec, live);
            if changes.is_empty() {
                Plan::InSync
            } else {
                Plan::Update {
                    changes,
                    drift: !spec_changed,
                }
            }
        }
        Claim::None if input.spec.adopt_existing => Plan::Adopt(changes(input.spec, live)),
        Claim::None => Plan::AlreadyExists,
        Claim::HeldByOther => unreachable!("handled above"),
    }
}

fn plan_deletion(input: &PlanInput<'_>) -> Plan {
    // Orphan never calls Replicate; neither does a resource that never owned anything.
    if input.spec.deletion_policy == DeletionPolicy::Orphan || input.claim != Claim::Ours {
        return Plan::Release;
    }
    let Some(live) = input.live else {
        return Plan::Release;
    };
    if !live.is_offline() {
        return Plan::ScaleToZero {
            delete_not_before: input.now + input.offline_window,
        };
    }
    match input.delete_not_before {
        Some(until) if until > input.now => Plan::WaitOffline { until },
        // Offline, and either the window has passed or we never saw it go offline (it may have
        // been offline for long): try; Replicate's refusal is handled as a wait.
        _ => Plan::Delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn spec() -> ReplicateDeploymentSpec {
        ReplicateDeploymentSpec {
            model: "acme/model".into(),
            version: V1.into(),
            hardware: "cpu".into(),
            min_instances: 0,
            max_instances: 2,
            deployment_name: None,
            credentials_secret_ref: None,
            deletion_policy: DeletionPolicy::Delete,
            adopt_existing: false,
        }
    }

    fn live() -> LiveDeployment {
        LiveDeployment {
            owner: "acme".into(),
            name: "dep".into(),
            release_number: Some(1),
            model: Some("acme/model".into()),
            version: Some(V1.into()),
            hardware: Some("cpu".into()),
            min_instances: Some(0),
            max_instances: Some(2),
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    struct Case {
        name: &'static str,
        spec: ReplicateDeploymentSpec,
        live: Option<LiveDeployment>,
        claim: Claim,
        deleting: bool,
        delete_not_before: Option<SystemTime>,
        spec_changed: bool,
        want: Plan,
    }

    fn case(name: &'static str, want: Plan) -> Case {
        Case {
            name,
            spec: spec(),
            live: Some(live()),
            claim: Claim::Ours,
            deleting: false,
            delete_not_before: None,
            spec_changed: false,
            want,
        }
    }

    #[test]
    fn plan_table() {
        let window = Duration::from_secs(900);
        let cases = vec![
            Case {
                live: None,
                claim: Claim::None,
                ..case("nothing on Replicate: create", Plan::Create)
            },
            Case {
                live: None,
                ..case("ours but deleted out of band: recreate", Plan::Create)
            },
            case("ours and equal: nothing to do", Plan::InSync),
            Case {
                spec: ReplicateDeploymentSpec {
                    version: V2.into(),
                    max_instances: 3,
                    ..spec()
                },
                spec_changed: true,
                ..case(
                    "spec changed: only the differing fields",
                    Plan::Update {
                        changes: Changes {
                            version: Some(V2.into()),
                            max_instances: Some(3),
                            ..Default::default()
                        },
                        drift: false,
                    },
                )
            },
            Case {
                live: Some(LiveDeployment {
                    hardware: Some("gpu-t4".into()),
                    ..live()
                }),
                ..case(
                    "Replicate changed behind our back: drift",
                    Plan::Update {
                        changes: Changes {
                            hardware: Some("cpu".into()),
                            ..Default::default()
                        },
                        drift: true,
                    },
                )
            },
            Case {
                live: Some(LiveDeployment {
                    min_instances: None,
                    max_instances: None,
                    ..live()
                }),
                ..case(
                    "unknown live bounds are set",
                    Plan::Update {
                        changes: Changes {
                            min_instances: Some(0),
                            max_instances: Some(2),
                            ..Default::default()
                        },
                        drift: true,
                    },
                )
            },
            Case {
                claim: Claim::None,
                ..case(
                    "someone else's deployment without opt-in",
                    Plan::AlreadyExists,
                )
            },
            Case {
                claim: Claim::None,
                spec: ReplicateDeploymentSpec {
                    adopt_existing: true,
                    ..spec()
                },
                ..case(
                    "opted in and equal: adopt without changes",
                    Plan::Adopt(Changes::default()),
                )
            },
            Case {
                claim: Claim::None,
                spec: ReplicateDeploymentSpec {
                    adopt_existing: true,
                    hardware: "gpu-t4".into(),
                    ..spec()
                },
                ..case(
                    "opted in: adopt and update",
                    Plan::Adopt(Changes {
                        hardware: Some("gpu-t4".into()),
                        ..Default::default()
                    }),
                )
            },
            Case {
                claim: Claim::None,
                spec: ReplicateDeploymentSpec {
                    adopt_existing: true,
                    ..spec()
                },
                live: Some(LiveDeployment {
                    model: Some("other/model".into()),
                    ..live()
                }),
                ..case(
                    "opted in but another model",
                    Plan::ModelMismatch {
                        live_model: "other/model".into(),
                    },
                )
            },
            Case {
                claim: Claim::None,
                live: Some(LiveDeployment {
                    model: Some("other/model".into()),
                    ..live()
                }),
                ..case(
                    "another model, not opted in: still just exists",
                    Plan::AlreadyExists,
                )
            },
            Case {
                claim: Claim::HeldByOther,
                ..case("claimed by an older resource", Plan::Conflict)
            },
            Case {
                claim: Claim::HeldByOther,
                live: None,
                ..case("claimed by another, even if absent", Plan::Conflict)
            },
            // Deletion.
            Case {
                deleting: true,
                spec: ReplicateDeploymentSpec {
                    deletion_policy: DeletionPolicy::Orphan,
                    ..spec()
                },
                ..case("orphan: release without calling Replicate", Plan::Release)
            },
            Case {
                deleting: true,
                claim: Claim::None,
                ..case("never ours: release", Plan::Release)
            },
            Case {
                deleting: true,
                claim: Claim::HeldByOther,
                ..case("held by another: release", Plan::Release)
            },
            Case {
                deleting: true,
                live: None,
                ..case("already gone: release", Plan::Release)
            },
            Case {
                deleting: true,
                ..case(
                    "online: scale to zero first",
                    Plan::ScaleToZero {
                        delete_not_before: t(0) + window,
                    },
                )
            },
            Case {
                deleting: true,
                live: Some(LiveDeployment {
                    min_instances: Some(0),
                    max_instances: Some(0),
                    ..live()
                }),
                delete_not_before: Some(t(60)),
                ..case(
                    "offline, window not over: wait",
                    Plan::WaitOffline { until: t(60) },
                )
            },
            Case {
                deleting: true,
                live: Some(LiveDeployment {
                    min_instances: Some(0),
                    max_instances: Some(0),
                    ..live()
                }),
                delete_not_before: Some(t(0)),
                ..case("offline, window over: delete", Plan::Delete)
            },
            Case {
                deleting: true,
                live: Some(LiveDeployment {
                    min_instances: Some(0),
                    max_instances: Some(0),
                    ..live()
                }),
                ..case("offline since before we knew: try the delete", Plan::Delete)
            },
        ];
        let mut failures = Vec::new();
        for c in &cases {
            let input = PlanInput {
                spec: &c.spec,
                name: "dep",
                live: c.live.as_ref(),
                claim: c.claim,
                deleting: c.deleting,
                delete_not_before: c.delete_not_before,
                now: t(0),
                offline_window: window,
            };
            let got = plan(&input, c.spec_changed);
            if got != c.want {
                failures.push(format!("{}: want {:?}, got {:?}", c.name, c.want, got));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn change_names_follow_the_crd_field_names() {
        let c = Changes {
            hardware: Some("cpu".into()),
            min_instances: Some(1),
            ..Default::default()
        };
        assert_eq!(c.field_names(), ["hardware", "minInstances"]);
        assert!(!c.is_empty());
        assert!(Changes::default().is_empty());
    }
}
