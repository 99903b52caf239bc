//! The Kubernetes-backed [`StatusStore`]: lookups from a reflector cache of
//! `ReplicateDeployment`s (no API call per webhook), fresh status reads with GET, and writes by
//! server-side apply on the `status` subresource under the sidecar's own field manager.
//!
//! The applied object names only the sidecar's fields, so the controller's fields (conditions,
//! observedGeneration, deployment, webhookUrl) are never touched, and carries
//! `metadata.resourceVersion`, which makes the apply conditional: because an apply replaces the
//! sidecar's values wholesale, two writers computing from the same read would otherwise lose one
//! batch of counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};

use super::apply::SidecarStatus;
use super::store::{ResourceInfo, ResourceKey, StatusStore, StoreError, Versioned};
use crate::crd::ReplicateDeployment;

/// The field manager of every status write the sidecar makes.
pub const FIELD_MANAGER: &str = "replicate-operator-webhook";

/// A [`StatusStore`] over a Kubernetes API server.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    cache: Store<ReplicateDeployment>,
    ready: Arc<AtomicBool>,
    field_manager: String,
}

impl KubeStore {
    /// Creates the store and the future that keeps its cache filled (spawn it; it runs until
    /// the process ends). `namespace`: watch one namespace only, else all.
    pub fn new(
        client: Client,
        namespace: Option<&str>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api: Api<ReplicateDeployment> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (cache, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let store = Self {
            client,
            cache: cache.clone(),
            ready: ready.clone(),
            field_manager: FIELD_MANAGER.into(),
        };
        let run = async move {
            let flag = ready.clone();
            tokio::spawn(async move {
                if cache.wait_until_ready().await.is_ok() {
                    flag.store(true, Ordering::SeqCst);
                }
            });
            reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .applied_objects()
                .for_each(|event| async move {
                    if let Err(e) = event {
                        tracing::warn!(error = %e, "watching ReplicateDeployments failed; retrying");
                    }
                })
                .await;
        };
        (store, run)
    }

    fn api(&self, key: &ResourceKey) -> Api<ReplicateDeployment> {
        Api::namespaced(self.client.clone(), &key.namespace)
    }
}

fn backend(key: &ResourceKey, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(status) if status.code == 409 => StoreError::Conflict(key.clone()),
        kube::Error::Api(status) if status.code == 404 => StoreError::NotFound(key.clone()),
        _ => StoreError::Backend {
            key: key.clone(),
            message: e.to_string(),
        },
    }
}

/// The server-side apply body: only the sidecar's fields, conditioned on `resource_version`.
pub fn apply_body(
    key: &ResourceKey,
    resource_version: &str,
    status: &SidecarStatus,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": ReplicateDeployment::api_version(&()),
        "kind": ReplicateDeployment::kind(&()),
        "metadata": {
            "name": key.name,
            "namespace": key.namespace,
            "resourceVersion": resource_version,
        },
        "status": status.to_status(),
    })
}

impl StatusStore for KubeStore {
    fn lookup<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<ResourceInfo>, StoreError>> {
        let found = self
            .cache
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let info = found.map(|rd| ResourceInfo {
            key: key.clone(),
            credentials: rd.spec.credentials_secret_ref.clone(),
        });
        Box::pin(async move { Ok(info) })
    }

    fn read_status<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        Box::pin(async move {
            let rd = match self.api(key).get_status(&key.name).await {
                Ok(rd) => rd,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => return Err(backend(key, e)),
            };
            let resource_version = rd.metadata.resource_version.clone().unwrap_or_default();
            let status = rd
                .status
                .as_ref()
                .map(SidecarStatus::from_status)
                .unwrap_or_default();
            Ok(Some(Versioned {
                resource_version,
                status,
            }))
        })
    }

    fn write_status<'a>(
        &'a self,
        key: &'a ResourceKey,
        resource_version: &'a str,
        status: &'a SidecarStatus,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // force: these fields are the sidecar's alone; if someone edited them by hand, the
            // sidecar takes them back rather than failing every write.
            let params = PatchParams::apply(&self.field_manager).force();
            let body = apply_body(key, resource_version, status);
            self.api(key)
                .patch_status(&key.name, &params, &Patch::Apply(&body))
                .await
                .map_err(|e| backend(key, e))?;
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_body_names_only_sidecar_fields_and_the_version() {
        let status = SidecarStatus {
            counted_prediction_ids: vec!["p1".into()],
            ..Default::default()
        };
        let body = apply_body(&ResourceKey::new("ns", "rd"), "42", &status);
        assert_eq!(body["apiVersion"], "replicate-operator.dev/v1alpha1");
        assert_eq!(body["kind"], "ReplicateDeployment");
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(
            body["status"],
            serde_json::json!({"countedPredictionIds": ["p1"]})
        );
        assert!(body.get("spec").is_none());
    }
}
