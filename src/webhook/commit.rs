//! Group commit: verified deliveries for one resource are persisted together, one status write
//! per batch, and each delivery is answered only after the write that holds it.
//!
//! Each resource key has its own worker task fed by a bounded queue; the only shared lock
//! guards the map of queues and is never held across I/O. A worker writes as soon as a
//! delivery arrives after a quiet spell, then at most once per `flush_interval`: whatever queued
//! up meanwhile goes into the next write. So the API server sees a bounded number of writes per
//! resource however many webhooks arrive, and a lone webhook is not delayed.
//!
//! Each write reads the status afresh, applies the batch ([`super::apply`]) and writes
//! conditionally on the version read, retrying on conflict, so concurrent writers never lose
//! counts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::apply::{Delivery, apply};
use super::metrics::{Metrics, WriteOutcome};
use super::store::{ResourceKey, StatusStore, StoreError};

/// Tuning of the group commit.
#[derive(Debug, Clone)]
pub struct CommitConfig {
    /// The least time between two status writes of one resource.
    pub flush_interval: Duration,
    /// Deliveries that may wait for one resource; beyond, new ones are refused (503) rather than
    /// buffered without bound.
    pub queue_limit: usize,
    /// A worker with nothing to do for this long stops (and is started again on demand).
    pub idle_timeout: Duration,
    /// Status writes tried per batch when they keep conflicting with other writers.
    pub max_write_attempts: usize,
    /// Persisted `webhook-id`s remembered per resource, so a redelivery is answered without a
    /// write. (The status's own ID list makes a redelivery harmless anyway; this saves the write.)
    pub remembered_webhook_ids: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(100),
            queue_limit: 10_000,
            idle_timeout: Duration::from_secs(60),
            max_write_attempts: 5,
            remembered_webhook_ids: 4096,
        }
    }
}

/// How a delivery was persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// Its effect is in the status now.
    Written,
    /// The same `webhook-id` was persisted before.
    AlreadyPersisted,
}

/// Why a delivery could not be persisted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommitError {
    #[error("too many deliveries are waiting for {0}")]
    Overloaded(ResourceKey),
    #[error("{0} no longer exists")]
    ResourceGone(ResourceKey),
    #[error("the status of {key} kept changing underneath; gave up after {attempts} attempts")]
    TooManyConflicts { key: ResourceKey, attempts: usize },
    #[error(transparent)]
    Store(StoreError),
    #[error("the committer stopped before the delivery was persisted")]
    Stopped,
}

struct Pending {
    delivery: Delivery,
    reply: oneshot::Sender<Result<Persisted, CommitError>>,
}

struct Worker {
    generation: u64,
    queue: mpsc::Sender<Pending>,
}

/// Persists deliveries in per-resource batches. Cheap to share (`Arc`).
pub struct Committer {
    store: Arc<dyn StatusStore>,
    metrics: Arc<Metrics>,
    config: CommitConfig,
    workers: Mutex<(u64, HashMap<ResourceKey, Worker>)>,
}

impl Committer {
    pub fn new(
        store: Arc<dyn StatusStore>,
        metrics: Arc<Metrics>,
        config: CommitConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            config,
            workers: Mutex::new((0, HashMap::new())),
        })
    }

    /// Queues a verified delivery and waits until the status write that holds it is done.
    pub async fn commit(
        self: &Arc<Self>,
        key: ResourceKey,
        delivery: Delivery,
    ) -> Result<Persisted, CommitError> {
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending { delivery, reply };
        loop {
            let (generation, queue) = self.queue_for(&key);
            match queue.try_send(pending) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(CommitError::Overloaded(key));
                }
                // The worker retired between our lookup and our send: start a fresh one.
                Err(mpsc::error::TrySendError::Closed(p)) => {
                    self.retire(&key, generation);
                    pending = p;
                }
            }
        }
        self.metrics.awaiting_persist(1);
        let result = answer.await.unwrap_or(Err(CommitError::Stopped));
        self.metrics.awaiting_persist(-1);
        result
    }

    fn queue_for(self: &Arc<Self>, key: &ResourceKey) -> (u64, mpsc::Sender<Pending>) {
        let mut guard = self.workers.lock().unwrap();
        let (next_generation, workers) = &mut *guard;
        if let Some(w) = workers.get(key) {
            return (w.generation, w.queue.clone());
        }
        *next_generation += 1;
        let generation = *next_generation;
        let (queue, inbox) = mpsc::channel(self.config.queue_limit);
        workers.insert(
            key.clone(),
            Worker {
                generation,
                queue: queue.clone(),
            },
        );
        tokio::spawn(Arc::clone(self).run(key.clone(), generation, inbox));
        (generation, queue)
    }

    /// Forgets a worker, unless it has been replaced already.
    fn retire(&self, key: &ResourceKey, generation: u64) {
        let mut guard = self.workers.lock().unwrap();
        if guard.1.get(key).is_some_and(|w| w.generation == generation) {
            guard.1.remove(key);
        }
    }

    async fn run(
        self: Arc<Self>,
        key: ResourceKey,
        generation: u64,
        mut inbox: mpsc::Receiver<Pending>,
    ) {
        let mut persisted = RecentIds::new(self.config.remembered_webhook_ids);
        let mut last_write: Option<Instant> = None;
        let mut retired = false;
        loop {
            let first = if retired {
                // Closed: drain what was queued before the close, then stop.
                match inbox.recv().await {
                    Some(p) => p,
                    None => return,
                }
            } else {
                match tokio::time::timeout(self.config.idle_timeout, inbox.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) => return,
                    Err(_idle) => {
                        self.retire(&key, generation);
                        inbox.close();
                        retired = true;
                        continue;
                    }
                }
            };
            if let Some(at) = last_write {
                tokio::time::sleep_until(at + self.config.flush_interval).await;
            }
            let mut batch = vec![first];
            while let Ok(p) = inbox.try_recv() {
                batch.push(p);
            }
            let (repeats, batch): (Vec<Pending>, Vec<Pending>) = batch
                .into_iter()
                .partition(|p| persisted.contains(&p.delivery.webhook_id));
            for p in repeats {
                let _ = p.reply.send(Ok(Persisted::AlreadyPersisted));
            }
            if batch.is_empty() {
                continue;
            }
            let deliveries: Vec<Delivery> = batch.iter().map(|p| p.delivery.clone()).collect();
            let result = self.write(&key, &deliveries).await;
            last_write = Some(Instant::now());
            if result.is_ok() {
                for d in &deliveries {
                    persisted.insert(&d.webhook_id);
                }
            }
            for p in batch {
                let _ = p.reply.send(result.clone().map(|()| Persisted::Written));
            }
        }
    }

    /// One batch: read, apply, conditional write; again on conflict.
    async fn write(&self, key: &ResourceKey, batch: &[Delivery]) -> Result<(), CommitError> {
        let attempts = self.config.max_write_attempts.max(1);
        for _ in 0..attempts {
            let current = match self.store.read_status(key).await {
                Ok(Some(current)) => current,
                Ok(None) | Err(StoreError::NotFound(_)) => {
                    return Err(CommitError::ResourceGone(key.clone()));
                }
                Err(e) => return Err(CommitError::Store(e)),
            };
            let applied = apply(&current.status, batch);
            if applied.status == current.status {
                return Ok(());
            }
            match self
                .store
                .write_status(key, &current.resource_version, &applied.status)
                .await
            {
                Ok(()) => {
                    self.metrics.status_write(WriteOutcome::Ok, batch.len());
                    tracing::debug!(resource = %key, batch = batch.len(), counted = applied.newly_counted, "status written");
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => self
                    .metrics
                    .status_write(WriteOutcome::Conflict, batch.len()),
                Err(StoreError::NotFound(_)) => return Err(CommitError::ResourceGone(key.clone())),
                Err(e) => {
                    self.metrics.status_write(WriteOutcome::Error, batch.len());
                    return Err(CommitError::Store(e));
                }
            }
        }
        Err(CommitError::TooManyConflicts {
            key: key.clone(),
            attempts,
        })
    }
}

/// A bounded set of recent IDs, oldest forgotten first.
struct RecentIds {
    limit: usize,
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.limit == 0 || !self.set.insert(id.to_owned()) {
            return;
        }
        self.order.push_back(id.to_owned());
        while self.order.len() > self.limit {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut ids = RecentIds::new(2);
        for id in ["a", "b", "a", "c"] {
            ids.insert(id);
        }
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
    }
}
