//! Where the sidecar finds resources and writes their status: the [`StatusStore`] trait, and
//! [`MemoryStore`], an in-memory implementation for tests and local runs. The Kubernetes-backed
//! implementation is [`super::kube_store::KubeStore`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::apply::SidecarStatus;
use crate::crd::SecretKeyRef;

/// Which `ReplicateDeployment` a webhook is for: the URL path `/webhooks/{namespace}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the sidecar needs to know about a resource before verifying a webhook for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    pub key: ResourceKey,
    /// `spec.credentialsSecretRef`: whose account signs this resource's webhooks.
    pub credentials: Option<SecretKeyRef>,
}

/// The sidecar's status fields as last read, with the version to write against.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub resource_version: String,
    pub status: SidecarStatus,
}

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The resource changed since it was read; read again and recompute.
    #[error("{0} changed since it was read")]
    Conflict(ResourceKey),
    /// The resource is gone.
    #[error("{0} does not exist")]
    NotFound(ResourceKey),
    #[error("the store failed for {key}: {message}")]
    Backend { key: ResourceKey, message: String },
}

/// The resource store the router and the committer work against.
///
/// `write_status` must be conditional on `resource_version` (an optimistic lock) and must only
/// change the sidecar's own fields, so concurrent writers (another sidecar replica, the
/// controller) never lose each other's updates.
pub trait StatusStore: Send + Sync + 'static {
    /// Cheap lookup (a cache is fine) of whether the resource exists and whose credentials it
    /// uses. `Ok(None)`: no such resource.
    fn lookup<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<ResourceInfo>, StoreError>>;

    /// Fresh read of the sidecar's status fields. `Ok(None)`: no such resource.
    fn read_status<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>>;

    /// Writes the sidecar's status fields if the resource is still at `resource_version`.
    fn write_status<'a>(
        &'a self,
        key: &'a ResourceKey,
        resource_version: &'a str,
        status: &'a SidecarStatus,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether the store can answer lookups yet (for `/readyz`).
    fn is_ready(&self) -> bool {
        true
    }
}

/// An in-memory [`StatusStore`] that counts writes and can be told to fail, conflict or hold
/// them, so the router's behaviour under each can be tested without Kubernetes.
#[derive(Default)]
pub struct MemoryStore {
    resources: Mutex<HashMap<ResourceKey, Entry>>,
    writes: AtomicUsize,
    failing_writes: AtomicUsize,
    conflicting_writes: AtomicUsize,
    gate: Arc<tokio::sync::RwLock<()>>,
    held: Mutex<Option<tokio::sync::OwnedRwLockWriteGuard<()>>>,
}

struct Entry {
    info: ResourceInfo,
    version: u64,
    status: SidecarStatus,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource with an empty sidecar status.
    pub fn insert(&self, key: ResourceKey, credentials: Option<SecretKeyRef>) {
        let info = ResourceInfo {
            key: key.clone(),
            credentials,
        };
        let entry = Entry {
            info,
            version: 1,
            status: SidecarStatus::default(),
        };
        self.resources.lock().unwrap().insert(key, entry);
    }

    /// The stored sidecar status of a resource.
    pub fn status(&self, key: &ResourceKey) -> Option<SidecarStatus> {
        self.resources
            .lock()
            .unwrap()
            .get(key)
            .map(|e| e.status.clone())
    }

    /// Successful status writes so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// Makes the next `n` writes fail with a backend error.
    pub fn fail_next_writes(&self, n: usize) {
        self.failing_writes.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` writes find that someone else changed the resource in between (the
    /// other writer's change bumps the version, as a concurrent update would).
    pub fn conflict_next_writes(&self, n: usize) {
        self.conflicting_writes.store(n, Ordering::SeqCst);
    }

    /// Holds every write until [`MemoryStore::release_writes`]: lets a test pile up deliveries
    /// behind a write in progress without relying on timing.
    pub fn hold_writes(&self) {
        let guard = Arc::clone(&self.gate)
            .try_write_owned()
            .expect("writes are not already held");
        *self.held.lock().unwrap() = Some(guard);
    }

    /// Lets held writes proceed.
    pub fn release_writes(&self) {
        self.held.lock().unwrap().take();
    }
}

impl StatusStore for MemoryStore {
    fn lookup<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<ResourceInfo>, StoreError>> {
        let found = self
            .resources
            .lock()
            .unwrap()
            .get(key)
            .map(|e| e.info.clone());
        Box::pin(async move { Ok(found) })
    }

    fn read_status<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        let found = self.resources.lock().unwrap().get(key).map(|e| Versioned {
            resource_version: e.version.to_string(),
            status: e.status.clone(),
        });
        Box::pin(async move { Ok(found) })
    }

    fn write_status<'a>(
        &'a self,
        key: &'a ResourceKey,
        resource_version: &'a str,
        status: &'a SidecarStatus,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _open = self.gate.read().await;
            if take_one(&self.failing_writes) {
                return Err(StoreError::Backend {
                    key: key.clone(),
                    message: "injected failure".into(),
                });
            }
            let mut resources = self.resources.lock().unwrap();
            let entry = resources
                .get_mut(key)
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            if take_one(&self.conflicting_writes) {
                entry.version += 1;
            }
            if entry.version.to_string() != resource_version {
                return Err(StoreError::Conflict(key.clone()));
            }
            entry.version += 1;
            entry.status = status.clone();
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// Decrements `counter` if it is positive; true if it did.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
