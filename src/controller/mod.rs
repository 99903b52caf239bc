//! The controller: keeps every `ReplicateDeployment` and its Replicate deployment in step.
//!
//! - `plan`: the pure decision (create / update which fields / nothing / refuse / delete steps).
//! - `status`: the pure status computation (conditions, observed deployment).
//! - `observe`: per-account knowledge (owner, the shared LIST snapshot for resyncs).
//! - `reconcile`: the I/O around them, one resource at a time.

pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info};

use crate::crd::ReplicateDeployment;
use crate::metrics::Metrics;
use crate::replicate::{ApiToken, ReplicateClient};

pub use reconcile::{CLAIM_ANNOTATION, Context, FIELD_MANAGER, FINALIZER, Settings};

/// Which resources this controller instance handles, and how hard it may work.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only this namespace (otherwise all namespaces).
    pub namespace: Option<String>,
    /// Only resources matching this label selector, e.g. `shard=a`.
    pub selector: Option<String>,
    /// Reconciles running at once (0 = unbounded).
    pub concurrency: u16,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    replicate: ReplicateClient,
    default_token: Option<ApiToken>,
    settings: Settings,
    scope: Scope,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (resources, secrets): (Api<ReplicateDeployment>, Api<PartialObjectMeta<Secret>>) =
        match &scope.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let mut watch_config = watcher::Config::default();
    if let Some(selector) = &scope.selector {
        watch_config = watch_config.labels(selector);
    }

    let (store, writer) = reflector::store();
    // Only spec changes (generation) and finalizer changes start a reconcile; the controller's
    // own status and annotation writes do not, so they cost no extra Replicate calls.
    let resource_events = watcher(resources, watch_config)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation::<ReplicateDeployment>.combine(predicates::finalizers),
            Default::default(),
        );

    // Credentials Secrets: only their metadata is watched (no token is cached), and a change
    // reconciles every resource that references the Secret.
    let secret_events = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());
    let referencing = store.clone();
    let by_secret = move |secret: PartialObjectMeta<Secret>| {
        let (ns, name) = (secret.namespace(), secret.name_any());
        referencing
            .state()
            .into_iter()
            .filter(|rd| {
                rd.namespace() == ns
                    && rd
                        .spec
                        .credentials_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
            })
            .map(|rd| ObjectRef::from_obj(rd.as_ref()))
            .collect::<Vec<_>>()
    };

    let reporter = Reporter {
        controller: "replicate-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client,
        replicate,
        default_token,
        settings,
        recorder,
        store.clone(),
        metrics.clone(),
    ));

    info!(namespace = ?scope.namespace, selector = ?scope.selector, "controller starting");
    Controller::for_stream(resource_events, store)
        .watches_stream(secret_events, by_secret)
        .with_config(ControllerConfig::default().concurrency(scope.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(resource = %obj, "reconciled"),
                Err(err) => debug!(error = %err, "reconcile error"),
            }
        })
        .await;
    info!("controller stopped");
}
