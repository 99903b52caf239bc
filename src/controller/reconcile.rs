//! One reconcile: credentials → observe → plan → act → status.
//!
//! Only the edges touch the network: reading the token, reading Replicate, carrying out the plan
//! and writing the status. The decisions in between are the pure functions of `plan.rs` and
//! `status.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use rand::RngExt;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::crd::{DeletionPolicy, ReplicateDeployment};
use crate::replicate::{
    AccountClient, ApiError, ApiToken, CreateDeployment, ReplicateClient, UpdateDeployment,
};

use super::observe::{Accounts, live};
use super::plan::{Changes, Claim, LiveDeployment, Plan, PlanInput, plan};
use super::status::{Cond, ControllerStatus, Outcome, next_status, reason};

/// Kept on every resource this controller manages until Replicate is cleaned up.
pub const FINALIZER: &str = "replicate-operator.dev/finalizer";
/// Names the Replicate deployment (`owner/name`) this resource created, is creating, or adopted.
/// Written before the create request, so that a create whose answer was lost is recognised as
/// this resource's own on the next attempt.
pub const CLAIM_ANNOTATION: &str = "replicate-operator.dev/deployment";
/// The field manager of the controller's status fields (server-side apply).
pub const FIELD_MANAGER: &str = "replicate-operator-controller";

/// How the controller behaves; set from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Periodic drift check of every resource (±10 % jitter).
    pub resync_interval: Duration,
    /// How long Replicate wants a deployment offline before it accepts a delete.
    pub offline_window: Duration,
    /// How long a deletion may wait for usable credentials before the deployment is orphaned.
    pub credentials_grace: Duration,
    /// First retry delay after an error; doubles per consecutive error.
    pub backoff_base: Duration,
    /// The longest retry delay after errors.
    pub backoff_cap: Duration,
    /// Public base URL of the webhook sidecar; when set, each resource's URL goes in its status.
    pub webhook_base_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(600),
            offline_window: Duration::from_secs(15 * 60),
            credentials_grace: Duration::from_secs(300),
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(300),
            webhook_base_url: None,
        }
    }
}

/// What the controller remembers about one resource between reconciles (lost on restart, which
/// is harmless: each entry only saves calls or time).
#[derive(Default)]
struct Memory {
    /// Consecutive failed reconciles, for the per-object backoff.
    failures: u32,
    /// The last token that worked, so a deletion can proceed after its Secret is gone.
    token: Option<ApiToken>,
    /// When Replicate was last read for this resource.
    observed_at: Option<Instant>,
    /// Since when a deletion has had no usable credentials.
    delete_blocked_since: Option<Instant>,
}

/// Shared state of all reconciles.
pub struct Context {
    pub kube: kube::Client,
    pub replicate: ReplicateClient,
    pub default_token: Option<ApiToken>,
    pub settings: Settings,
    pub recorder: Recorder,
    /// Every resource the controller watches, to find two that claim one deployment.
    pub store: Store<ReplicateDeployment>,
    pub metrics: Arc<crate::metrics::Metrics>,
    accounts: Accounts,
    memory: Mutex<HashMap<String, Memory>>,
}

impl Context {
    pub fn new(
        kube: kube::Client,
        replicate: ReplicateClient,
        default_token: Option<ApiToken>,
        settings: Settings,
        recorder: Recorder,
        store: Store<ReplicateDeployment>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            kube,
            replicate,
            default_token,
            settings,
            recorder,
            store,
            metrics,
            accounts: Accounts::default(),
            memory: Mutex::new(HashMap::new()),
        }
    }

    fn remember<T>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        f(memory.entry(uid.to_string()).or_default())
    }

    fn forget(&self, uid: &str) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// The delay before retrying after the `failures`-th consecutive error: exponential with
    /// jitter, capped, and never shorter than what Replicate asked for.
    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .settings
            .backoff_base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let capped = exp.min(self.settings.backoff_cap);
        let jittered = capped.mul_f64(rand::rng().random_range(0.8..1.2));
        jittered.max(retry_after.unwrap_or_default())
    }

    fn resync(&self) -> Duration {
        self.settings
            .resync_interval
            .mul_f64(rand::rng().random_range(0.9..1.1))
    }
}

/// Failures that stop a reconcile before it reaches a decision: they are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the resource has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// A stable name for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kubernetes",
            Error::MissingMetadata(_) => "metadata",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// Why there is no token to use.
enum CredentialsProblem {
    Missing(String),
}

/// The result of the Replicate-facing part of a reconcile.
struct Step {
    outcome: Outcome,
    action: Action,
    events: Vec<(EventType, String, String)>,
    /// Deletion is complete (or abandoned): remove the finalizer.
    release: bool,
    /// Count this reconcile as a failure for the backoff.
    failed: bool,
    /// The wait Replicate asked for (Retry-After), the least the backoff may wait.
    retry_after: Option<Duration>,
}

impl Step {
    fn new(outcome: Outcome, action: Action) -> Self {
        Self {
            outcome,
            action,
            events: Vec::new(),
            release: false,
            failed: false,
            retry_after: None,
        }
    }
    /// Ready and Synced both False for the same reason: nothing can go on until it is fixed.
    fn blocked(cond: Cond, action: Action) -> Self {
        Self::new(
            Outcome {
                ready: Some(cond.clone()),
                synced: Some(cond),
                ..Default::default()
            },
            action,
        )
    }
    fn event(mut self, type_: EventType, reason: &'static str, note: impl Into<String>) -> Self {
        self.events.push((type_, reason.to_string(), note.into()));
        self
    }
}

/// The entry point kube-runtime calls for each resource.
pub async fn reconcile(rd: Arc<ReplicateDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&rd, &ctx).await;
    ctx.metrics.reconciled(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    result
}

async fn reconcile_inner(rd: &ReplicateDeployment, ctx: &Context) -> Result<Action, Error> {
    let namespace = rd.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let uid = rd.uid().ok_or(Error::MissingMetadata("uid"))?;
    let api: Api<ReplicateDeployment> = Api::namespaced(ctx.kube.clone(), &namespace);
    let deleting = rd.metadata.deletion_timestamp.is_some();
    let has_finalizer = rd.finalizers().iter().any(|f| f == FINALIZER);

    if deleting && !has_finalizer {
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }
    if !deleting && !has_finalizer {
        // Before anything exists on Replicate, so that a deletion can always clean up after us.
        // The finalizer change itself triggers the next reconcile, which does the work; going on
        // here would only race that one.
        add_finalizer(&api, rd).await?;
        return Ok(Action::await_change());
    }

    let step = sync(rd, ctx, &api, &uid, deleting).await?;

    let stored = ControllerStatus::from_stored(rd.status.as_ref());
    let webhook_url = ctx.settings.webhook_base_url.as_ref().map(|base| {
        format!(
            "{}/webhooks/{}/{}",
            base.trim_end_matches('/'),
            namespace,
            rd.name_any()
        )
    });
    let now = Time(jiff::Timestamp::now());
    let next = next_status(
        &stored,
        &step.outcome,
        rd.metadata.generation,
        webhook_url,
        &now,
    );

    if let Some(synced) = &step.outcome.synced
        && !synced.status
    {
        ctx.metrics.reconcile_error(synced.reason);
    }
    let mut events = step.events;
    // One Warning per new problem, not one per retry: only when Synced turns False or its
    // reason changes (a retry of the same problem may word it differently, e.g. a new wait).
    if let (Some(new), old) = (
        next.condition(super::status::SYNCED),
        stored.condition(super::status::SYNCED),
    ) && new.status == "False"
        && old.is_none_or(|o| o.status != "False" || o.reason != new.reason)
    {
        events.push((EventType::Warning, new.reason.clone(), new.message.clone()));
    }

    if next != stored && !step.release {
        let patch = json!({
            "apiVersion": ReplicateDeployment::api_version(&()),
            "kind": ReplicateDeployment::kind(&()),
            "status": next,
        });
        api.patch_status(
            &rd.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_err("writing the status"))?;
        ctx.metrics.status_written();
    }

    let reference = rd.object_ref(&());
    for (type_, reason, note) in events {
        let event = Event {
            type_,
            reason,
            note: Some(truncate(&note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!(%err, "could not publish an event");
        }
    }

    if step.release {
        remove_finalizer(&api, rd).await?;
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }

    let failures = ctx.remember(&uid, |m| {
        if step.failed {
            m.failures += 1;
        } else {
            m.failures = 0;
        }
        m.failures
    });
    Ok(if step.failed {
        Action::requeue(ctx.backoff(failures, step.retry_after))
    } else {
        step.action
    })
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Credentials → observe → plan → act.
async fn sync(
    rd: &ReplicateDeployment,
    ctx: &Context,
    api: &Api<ReplicateDeployment>,
    uid: &str,
    deleting: bool,
) -> Result<Step, Error> {
    let name = rd.deployment_name();

    // Credentials.
    let token = match token_for(rd, ctx).await? {
        Ok(token) => {
            ctx.remember(uid, |m| m.token = Some(token.clone()));
            token
        }
        Err(CredentialsProblem::Missing(why)) => {
            let remembered = ctx.remember(uid, |m| m.token.clone());
            match remembered {
                // A deletion may use the last token that worked: a namespace being deleted
                // often loses its Secret before the resource.
                Some(token) if deleting => token,
                _ if deleting => return Ok(deletion_without_credentials(rd, ctx, uid, &why)),
                _ => {
                    let cond = Cond::no(reason::CREDENTIALS_MISSING, why);
                    let mut step = Step::blocked(cond, Action::await_change());
                    step.failed = true;
                    return Ok(step);
                }
            }
        }
    };
    let account = ctx.replicate.account(token.clone());

    let owner = match ctx.accounts.owner(&account, &token).await {
        Ok(owner) => owner,
        Err(err) => {
            return Ok(replicate_failure(
                rd,
                ctx,
                uid,
                deleting,
                &err,
                "looking up the account",
            ));
        }
    };
    let target = format!("{owner}/{name}");

    // A claim for another deployment name means the name changed behind the CRD's back.
    let claimed = rd.annotations().get(CLAIM_ANNOTATION).cloned();
    if !deleting
        && let Some(claimed) = &claimed
        && claimed != &target
    {
        let cond = Cond::no(
            reason::INVALID_SPEC,
            format!(
                "this resource manages the Replicate deployment {claimed}, but its spec now names {target}; a deployment cannot be renamed, so restore the previous name or create a new ReplicateDeployment"
            ),
        );
        return Ok(Step::blocked(cond, Action::await_change()));
    }
    let claim = claim_of(rd, &ctx.store, &target);

    // Observe: a periodic resync reads the account's shared snapshot; anything else reads the
    // deployment itself.
    let generation_seen =
        rd.status.as_ref().and_then(|s| s.observed_generation) == rd.metadata.generation;
    let last_observed = ctx.remember(uid, |m| m.observed_at);
    let is_resync = generation_seen
        && !deleting
        && last_observed.is_none_or(|at| at.elapsed() >= ctx.settings.resync_interval / 2);
    let observed = if is_resync {
        ctx.accounts
            .from_snapshot(&account, &token, &name, ctx.settings.resync_interval / 2)
            .await
    } else {
        match account.get_deployment(&owner, &name).await {
            Ok(d) => Ok(Some(live(&d))),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    };
    let live_now = match observed {
        Ok(live) => live,
        Err(err) => {
            return Ok(replicate_failure(
                rd,
                ctx,
                uid,
                deleting,
                &err,
                "reading the deployment",
            ));
        }
    };
    ctx.remember(uid, |m| {
        m.observed_at = Some(Instant::now());
        m.delete_blocked_since = None;
    });
    ctx.accounts.record(&token, &name, live_now.as_ref()).await;

    let delete_not_before = rd
        .status
        .as_ref()
        .and_then(|s| s.delete_not_before.as_ref())
        .map(|t| SystemTime::from(t.0));
    let input = PlanInput {
        spec: &rd.spec,
        name: &name,
        live: live_now.as_ref(),
        claim,
        deleting,
        delete_not_before,
        now: SystemTime::now(),
        offline_window: ctx.settings.offline_window,
    };
    let planned = plan(&input, !generation_seen);
    debug!(?planned, deployment = %target, "planned");
    act(
        rd, ctx, api, &account, &token, &owner, &name, live_now, planned,
    )
    .await
}

/// Reads the API token: the referenced Secret's key, else the operator's default token.
async fn token_for(
    rd: &ReplicateDeployment,
    ctx: &Context,
) -> Result<Result<ApiToken, CredentialsProblem>, Error> {
    let Some(reference) = &rd.spec.credentials_secret_ref else {
        return Ok(ctx.default_token.clone().ok_or_else(|| {
            CredentialsProblem::Missing(
                "no spec.credentialsSecretRef and the operator has no default REPLICATE_API_TOKEN"
                    .into(),
            )
        }));
    };
    let namespace = rd.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(kube_err("reading the credentials Secret"))?;
    let Some(secret) = secret else {
        return Ok(Err(CredentialsProblem::Missing(format!(
            "Secret {namespace}/{} (spec.credentialsSecretRef) does not exist",
            reference.name
        ))));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    match value.map(ApiToken::new).filter(|t| !t.expose().is_empty()) {
        Some(token) => Ok(Ok(token)),
        None => Ok(Err(CredentialsProblem::Missing(format!(
            "Secret {namespace}/{} has no non-empty key {:?}",
            reference.name, reference.key
        )))),
    }
}

/// Whether this resource may manage `target`: by its own claim, unless an older resource (or
/// one that claimed first) holds the same claim.
fn claim_of(rd: &ReplicateDeployment, store: &Store<ReplicateDeployment>, target: &str) -> Claim {
    let ours = rd
        .annotations()
        .get(CLAIM_ANNOTATION)
        .is_some_and(|c| c == target);
    let key = |r: &ReplicateDeployment| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.namespace(),
            r.name_any(),
        )
    };
    let held_by_other = store.state().iter().any(|other| {
        other.uid() != rd.uid()
            && other.metadata.deletion_timestamp.is_none()
            && other
                .annotations()
                .get(CLAIM_ANNOTATION)
                .is_some_and(|c| c == target)
            && (!ours || key(other) < key(rd))
    });
    match (held_by_other, ours) {
        (true, _) => Claim::HeldByOther,
        (false, true) => Claim::Ours,
        (false, false) => Claim::None,
    }
}

/// Carries out the plan.
#[allow(clippy::too_many_arguments)]
async fn act(
    rd: &ReplicateDeployment,
    ctx: &Context,
    api: &Api<ReplicateDeployment>,
    account: &AccountClient,
    token: &ApiToken,
    owner: &str,
    name: &str,
    live_now: Option<LiveDeployment>,
    planned: Plan,
) -> Result<Step, Error> {
    let uid = rd.uid().unwrap_or_default();
    let target = format!("{owner}/{name}");
    let deleting = rd.metadata.deletion_timestamp.is_some();
    let available = |live: LiveDeployment| Outcome {
        ready: Some(Cond::yes(
            reason::AVAILABLE,
            format!("Replicate deployment {target} matches the spec"),
        )),
        synced: Some(Cond::yes(
            reason::SYNCED,
            "The last reconcile reached Replicate and applied the spec",
        )),
        live: Some(Some(live)),
        delete_not_before: Some(None),
    };
    let resync = Action::requeue(ctx.resync());

    match planned {
        Plan::InSync => Ok(Step::new(
            available(live_now.expect("in sync means observed")),
            resync,
        )),

        Plan::Create => {
            set_claim(api, rd, Some(&target)).await?;
            let request = CreateDeployment {
                name: name.to_string(),
                model: rd.spec.model.clone(),
                version: rd.spec.version.clone(),
                hardware: rd.spec.hardware.clone(),
                min_instances: rd.spec.min_instances.max(0) as u32,
                max_instances: rd.spec.max_instances.max(0) as u32,
            };
            match account.create_deployment(&request).await {
                Ok(created) => {
                    let live = live(&created);
                    ctx.accounts.record(token, name, Some(&live)).await;
                    let existed_before = rd.status.as_ref().is_some_and(|s| s.deployment.is_some());
                    let (why, note) = if existed_before {
                        (
                            reason::RECREATED,
                            format!(
                                "Recreated Replicate deployment {target}, which had been deleted outside Kubernetes"
                            ),
                        )
                    } else {
                        (
                            reason::CREATED,
                            format!("Created Replicate deployment {target}"),
                        )
                    };
                    info!(deployment = %target, "created");
                    Ok(Step::new(available(live), resync).event(EventType::Normal, why, note))
                }
                Err(ApiError::Conflict { detail }) => {
                    // The name was taken between our read and our create, by someone else.
                    set_claim(api, rd, None).await?;
                    Ok(already_exists(&target, detail.as_deref(), ctx))
                }
                Err(err) => {
                    // The deployment may exist even though the answer was lost: the claim is
                    // already written, so the next attempt finds it by name and takes it as ours.
                    Ok(replicate_failure(
                        rd,
                        ctx,
                        &uid,
                        deleting,
                        &err,
                        "creating the deployment",
                    ))
                }
            }
        }

        Plan::Adopt(changes) => {
            set_claim(api, rd, Some(&target)).await?;
            let live = live_now.expect("adopt means observed");
            let note = format!("Adopted existing Replicate deployment {target}");
            if changes.is_empty() {
                return Ok(Step::new(available(live), resync).event(
                    EventType::Normal,
                    reason::ADOPTED,
                    note,
                ));
            }
            match patch(account, owner, name, &changes).await {
                Ok(updated) => {
                    ctx.accounts.record(token, name, Some(&updated)).await;
                    let note = format!("{note} and updated {}", changes.field_names().join(", "));
                    Ok(Step::new(available(updated), resync).event(
                        EventType::Normal,
                        reason::ADOPTED,
                        note,
                    ))
                }
                Err(err) => Ok(replicate_failure(
                    rd,
                    ctx,
                    &uid,
                    deleting,
                    &err,
                    "updating the adopted deployment",
                )),
            }
        }

        Plan::Update { changes, drift } => match patch(account, owner, name, &changes).await {
            Ok(updated) => {
                ctx.accounts.record(token, name, Some(&updated)).await;
                let fields = changes.field_names().join(", ");
                let step = Step::new(available(updated), resync);
                Ok(if drift {
                    step.event(
                        EventType::Normal,
                        reason::DRIFT_CORRECTED,
                        format!("Reverted {fields} of Replicate deployment {target}, changed outside Kubernetes"),
                    )
                } else {
                    step.event(
                        EventType::Normal,
                        reason::UPDATED,
                        format!("Updated {fields} of Replicate deployment {target}"),
                    )
                })
            }
            Err(err) => {
                let mut step =
                    replicate_failure(rd, ctx, &uid, deleting, &err, "updating the deployment");
                // The deployment differs from the spec until the update goes through.
                if step.outcome.ready.is_none() && !step.release {
                    step.outcome.ready = Some(Cond::no(
                        reason::UPDATING,
                        format!(
                            "Replicate deployment {target} differs from the spec in {}; the update has not gone through yet",
                            changes.field_names().join(", ")
                        ),
                    ));
                }
                Ok(step)
            }
        },

        Plan::AlreadyExists => Ok(already_exists(&target, None, ctx)),

        Plan::Conflict => {
            let holder = ctx
                .store
                .state()
                .iter()
                .find(|o| {
                    o.uid() != rd.uid()
                        && o.annotations()
                            .get(CLAIM_ANNOTATION)
                            .is_some_and(|c| c == &target)
                })
                .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
                .unwrap_or_else(|| "another ReplicateDeployment".into());
            let cond = Cond::no(
                reason::CONFLICT,
                format!(
                    "Replicate deployment {target} is already managed by ReplicateDeployment {holder}; give this resource another deploymentName or delete one of the two"
                ),
            );
            Ok(Step::blocked(cond, resync))
        }

        Plan::ModelMismatch { live_model } => {
            let cond = Cond::no(
                reason::MODEL_MISMATCH,
                format!(
                    "Replicate deployment {target} serves {live_model}, not {}; a deployment's model cannot change, so name another deployment or create a new ReplicateDeployment",
                    rd.spec.model
                ),
            );
            Ok(Step::new(
                Outcome {
                    ready: Some(cond.clone()),
                    synced: Some(cond),
                    live: Some(live_now),
                    ..Default::default()
                },
                resync,
            ))
        }

        Plan::Release => {
            let mut step = Step::new(Outcome::default(), Action::await_change());
            step.release = true;
            if rd.spec.deletion_policy == DeletionPolicy::Orphan && live_now.is_some() {
                step = step.event(
                    EventType::Normal,
                    reason::ORPHANED,
                    format!("Left Replicate deployment {target} in place (deletionPolicy: Orphan)"),
                );
            }
            Ok(step)
        }

        Plan::ScaleToZero { delete_not_before } => {
            let changes = Changes {
                min_instances: Some(0),
                max_instances: Some(0),
                ..Default::default()
            };
            match patch(account, owner, name, &changes).await {
                Ok(updated) => {
                    ctx.accounts.record(token, name, Some(&updated)).await;
                    let until = Time(
                        jiff::Timestamp::try_from(delete_not_before)
                            .unwrap_or_else(|_| jiff::Timestamp::now()),
                    );
                    let cond = Cond::no(
                        reason::WAITING_FOR_OFFLINE,
                        format!(
                            "Took Replicate deployment {target} offline (0/0); Replicate deletes a deployment only after it has been offline for {}, so the delete is expected at about {}",
                            human(ctx.settings.offline_window),
                            until.0
                        ),
                    );
                    let wait = delete_not_before
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    Ok(Step::new(
                        Outcome {
                            ready: Some(cond.clone()),
                            synced: Some(Cond::yes(reason::DELETING, cond.message.clone())),
                            live: Some(Some(updated)),
                            delete_not_before: Some(Some(until)),
                        },
                        Action::requeue(wait),
                    )
                    .event(
                        EventType::Normal,
                        reason::DELETING,
                        format!("Took Replicate deployment {target} offline before deleting it"),
                    ))
                }
                Err(err) => Ok(replicate_failure(
                    rd,
                    ctx,
                    &uid,
                    deleting,
                    &err,
                    "taking the deployment offline",
                )),
            }
        }

        Plan::WaitOffline { until } => {
            let cond = Cond::no(
                reason::WAITING_FOR_OFFLINE,
                format!(
                    "Replicate deployment {target} is offline; waiting until about {} to delete it",
                    jiff::Timestamp::try_from(until)
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                ),
            );
            let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
            Ok(Step::new(
                Outcome {
                    ready: Some(cond.clone()),
                    synced: Some(Cond::yes(reason::DELETING, cond.message)),
                    ..Default::default()
                },
                Action::requeue(wait),
            ))
        }

        Plan::Delete => match account.delete_deployment(owner, name).await {
            Ok(()) | Err(ApiError::NotFound { .. }) => {
                ctx.accounts.record(token, name, None).await;
                let mut step = Step::new(Outcome::default(), Action::await_change()).event(
                    EventType::Normal,
                    reason::DELETED,
                    format!("Deleted Replicate deployment {target}"),
                );
                step.release = true;
                Ok(step)
            }
            Err(ApiError::Conflict { detail } | ApiError::Invalid { detail, .. }) => {
                // Refused: not offline long enough yet (Replicate does not document the code).
                let cond = Cond::no(
                    reason::WAITING_FOR_OFFLINE,
                    format!(
                        "Replicate refused to delete {target} yet: {}; retrying with backoff",
                        detail.unwrap_or_else(|| "no reason given".into())
                    ),
                );
                let mut step = Step::new(
                    Outcome {
                        ready: Some(cond.clone()),
                        synced: Some(Cond::yes(reason::DELETING, cond.message)),
                        ..Default::default()
                    },
                    Action::await_change(),
                );
                step.failed = true;
                Ok(step)
            }
            Err(err) => Ok(replicate_failure(
                rd,
                ctx,
                &uid,
                deleting,
                &err,
                "deleting the deployment",
            )),
        },
    }
}

fn already_exists(target: &str, detail: Option<&str>, ctx: &Context) -> Step {
    let mut message = format!(
        "a Replicate deployment named {target} already exists and was not created by this resource; set spec.adoptExisting: true to manage it, or choose another spec.deploymentName"
    );
    if let Some(detail) = detail {
        message.push_str(&format!(" (Replicate: {detail})"));
    }
    let cond = Cond::no(reason::ALREADY_EXISTS, message);
    Step::blocked(cond, Action::requeue(ctx.resync()))
}

/// PATCH with only the changed fields; the answer is the new release.
async fn patch(
    account: &AccountClient,
    owner: &str,
    name: &str,
    changes: &Changes,
) -> Result<LiveDeployment, ApiError> {
    let update = UpdateDeployment {
        version: changes.version.clone(),
        hardware: changes.hardware.clone(),
        min_instances: changes.min_instances.map(|n| n.max(0) as u32),
        max_instances: changes.max_instances.map(|n| n.max(0) as u32),
    };
    account
        .update_deployment(owner, name, &update)
        .await
        .map(|d| live(&d))
}

/// Turns a failed Replicate call into conditions and a retry: retryable errors back off (and
/// honour Retry-After), invalid input waits for the next resync or a spec change.
fn replicate_failure(
    rd: &ReplicateDeployment,
    ctx: &Context,
    uid: &str,
    deleting: bool,
    err: &ApiError,
    doing: &str,
) -> Step {
    let message = format!("Replicate answered while {doing}: {err}");
    warn!(error = %err, "{doing} failed");
    if deleting
        && matches!(
            err,
            ApiError::Unauthenticated { .. } | ApiError::Forbidden { .. }
        )
    {
        return deletion_without_credentials(rd, ctx, uid, &message);
    }
    let (cond, ready, retry_after) = match err {
        ApiError::Unauthenticated { .. } | ApiError::Forbidden { .. } => {
            let c = Cond::no(reason::UNAUTHORIZED, message);
            (c.clone(), Some(c), None)
        }
        ApiError::Invalid { .. } => {
            let c = Cond::no(reason::INVALID_SPEC, message);
            // Terminal: the same request will fail the same way until the spec changes.
            return Step::blocked(c, Action::requeue(ctx.resync()));
        }
        ApiError::RateLimited { retry_after, .. } => {
            (Cond::no(reason::RATE_LIMITED, message), None, *retry_after)
        }
        other => (
            Cond::no(reason::REPLICATE_ERROR, message),
            None,
            other.retry_after(),
        ),
    };
    // Ready stays as it was on transient errors; before the first success it says Creating.
    let ready = ready.or_else(|| {
        let has_ready = rd
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == super::status::READY));
        (!has_ready).then(|| Cond::no(reason::CREATING, "waiting for Replicate"))
    });
    let mut step = Step::new(
        Outcome {
            ready,
            synced: Some(cond),
            ..Default::default()
        },
        Action::await_change(),
    );
    step.failed = true;
    step.retry_after = retry_after;
    step
}

/// A deletion whose credentials are gone or refused retries for a grace period, then removes
/// the finalizer and leaves the deployment on Replicate, with a Warning Event that names it.
/// Never stuck forever in Terminating.
fn deletion_without_credentials(
    rd: &ReplicateDeployment,
    ctx: &Context,
    uid: &str,
    why: &str,
) -> Step {
    let since = ctx.remember(uid, |m| {
        *m.delete_blocked_since.get_or_insert_with(Instant::now)
    });
    let target = rd
        .annotations()
        .get(CLAIM_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| rd.deployment_name());
    let claimed = rd.annotations().contains_key(CLAIM_ANNOTATION);
    let policy_orphan = rd.spec.deletion_policy == DeletionPolicy::Orphan;
    if !claimed || policy_orphan || since.elapsed() >= ctx.settings.credentials_grace {
        let mut step = Step::new(Outcome::default(), Action::await_change());
        step.release = true;
        if claimed && !policy_orphan {
            step = step.event(
                EventType::Warning,
                reason::ORPHANED,
                format!(
                    "Gave up deleting Replicate deployment {target} after {} without usable credentials ({why}); it was left on Replicate: delete it there by hand",
                    human(ctx.settings.credentials_grace)
                ),
            );
        }
        return step;
    }
    let remaining = ctx
        .settings
        .credentials_grace
        .saturating_sub(since.elapsed());
    let cond = Cond::no(
        reason::CREDENTIALS_MISSING,
        format!(
            "cannot delete Replicate deployment {target}: {why}; fix the credentials within {} or the finalizer is removed and the deployment left on Replicate",
            human(remaining)
        ),
    );
    Step::blocked(
        cond,
        Action::requeue(remaining.min(ctx.settings.backoff_cap)),
    )
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

async fn add_finalizer(
    api: &Api<ReplicateDeployment>,
    rd: &ReplicateDeployment,
) -> Result<(), Error> {
    let mut finalizers = rd.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    set_finalizers(api, rd, finalizers, "adding the finalizer").await
}

async fn remove_finalizer(
    api: &Api<ReplicateDeployment>,
    rd: &ReplicateDeployment,
) -> Result<(), Error> {
    let finalizers: Vec<String> = rd
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    match set_finalizers(api, rd, finalizers, "removing the finalizer").await {
        Err(Error::Kube {
            source: kube::Error::Api(e),
            ..
        }) if e.code == 404 => Ok(()),
        other => other,
    }
}

/// Replaces the finalizer list, conditioned on the resourceVersion we read, so that a
/// concurrent change to the list (another controller's finalizer) is never lost: the patch
/// fails with a conflict instead and the reconcile is retried.
async fn set_finalizers(
    api: &Api<ReplicateDeployment>,
    rd: &ReplicateDeployment,
    finalizers: Vec<String>,
    action: &'static str,
) -> Result<(), Error> {
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": rd.resource_version() } });
    api.patch(
        &rd.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err(action))?;
    Ok(())
}

/// Writes (or, with `None`, removes) the claim annotation.
async fn set_claim(
    api: &Api<ReplicateDeployment>,
    rd: &ReplicateDeployment,
    target: Option<&str>,
) -> Result<(), Error> {
    if rd.annotations().get(CLAIM_ANNOTATION).map(String::as_str) == target {
        return Ok(());
    }
    let patch = json!({ "metadata": { "annotations": { CLAIM_ANNOTATION: target } } });
    api.patch(
        &rd.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err("writing the claim annotation"))?;
    Ok(())
}

/// kube-runtime's error policy: Kubernetes errors back off per object like Replicate errors.
pub fn error_policy(rd: Arc<ReplicateDeployment>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %err, "reconcile failed");
    let uid = rd.uid().unwrap_or_default();
    let failures = ctx.remember(&uid, |m| {
        m.failures += 1;
        m.failures
    });
    Action::requeue(ctx.backoff(failures, None))
}
