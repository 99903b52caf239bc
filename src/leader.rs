//! Leader election on a coordination.k8s.io Lease (kube-lease-manager), so that of several
//! controller replicas exactly one reconciles at a time and another takes over when it stops.

use std::future::Future;
use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Where the lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct Election {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per replica (the Pod name in a cluster).
    pub identity: String,
    /// How long a lease stays valid without renewal: the longest a failover takes.
    pub duration_secs: u64,
    /// How long before expiry the holder renews (and the clock skew tolerated).
    pub grace_secs: u64,
}

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
#[error("leader election on Lease {namespace}/{lease}: {source}")]
pub struct ElectionError {
    namespace: String,
    lease: String,
    #[source]
    source: kube_lease_manager::LeaseManagerError,
}

/// Runs `work` while this replica holds the lease, and again each time it regains it, until
/// `shutdown` resolves. `work` receives a future that resolves when it must stop (the lease
/// was lost or the process is shutting down). On shutdown the lease is released, so another
/// replica takes over at once instead of after the lease duration.
pub async fn run_as_leader<W, Fut>(
    client: Client,
    election: Election,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut work: W,
) -> Result<(), ElectionError>
where
    W: FnMut(Box<dyn Future<Output = ()> + Send + Sync + Unpin>) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.duration_secs)
        .with_grace(election.grace_secs)
        .build()
        .await
        .map_err(|source| ElectionError {
            namespace: election.namespace.clone(),
            lease: election.lease_name.clone(),
            source,
        })?;
    let (mut leading, lease_task) = manager.watch().await;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    loop {
        let mut stopping = stop_rx.clone();
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            became = leading.wait_for(|l| *l) => if became.is_err() { break },
        }
        info!(identity = %election.identity, "became the leader");
        metrics.set_leader(true);

        let mut lost = leading.clone();
        let mut stopping = stop_rx.clone();
        let stop = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {},
                _ = stopping.wait_for(|s| *s) => {},
            }
        };
        work(Box::new(Box::pin(stop))).await;
        metrics.set_leader(false);
        if *stop_rx.borrow() {
            break;
        }
        warn!(identity = %election.identity, "lost the lease; waiting to regain it");
    }

    // Closing the channel makes the lease task release the lease.
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => info!("released the lease"),
        Ok(Err(err)) => warn!(%err, "could not release the lease; it expires on its own"),
        Err(err) => warn!(%err, "the lease task failed"),
    }
    Ok(())
}
