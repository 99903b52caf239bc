//! What the controller knows about each Replicate account between reconciles: who the account
//! is (its username owns the deployments) and, for periodic resyncs, one snapshot of all its
//! deployments taken by a single paged LIST and shared by every resource of that account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::replicate::{AccountClient, ApiError, ApiToken, Deployment};

use super::plan::LiveDeployment;

/// How long an account's username is trusted before it is looked up again.
const OWNER_TTL: Duration = Duration::from_secs(600);

/// The client's view of a deployment, in the plan's terms.
pub fn live(d: &Deployment) -> LiveDeployment {
    let release = d.current_release.as_ref();
    let config = release.and_then(|r| r.configuration.as_ref());
    LiveDeployment {
        owner: d.owner.clone(),
        name: d.name.clone(),
        release_number: release.and_then(|r| r.number).map(|n| n as i64),
        model: release.and_then(|r| r.model.clone()),
        version: release.and_then(|r| r.version.clone()),
        hardware: config.and_then(|c| c.hardware.clone()),
        min_instances: config.and_then(|c| c.min_instances).map(|n| n as i32),
        max_instances: config.and_then(|c| c.max_instances).map(|n| n as i32),
    }
}

/// All deployments of one account at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub taken: Instant,
    pub deployments: HashMap<String, LiveDeployment>,
}

#[derive(Default)]
struct Account {
    owner: Option<(String, Instant)>,
    /// Held across the LIST so that concurrent resyncs of one account share a single LIST.
    snapshot: Arc<tokio::sync::Mutex<Option<Snapshot>>>,
}

/// Per-account knowledge, keyed by API token (a token is an account).
#[derive(Default)]
pub struct Accounts {
    accounts: Mutex<HashMap<ApiToken, Account>>,
}

impl Accounts {
    /// The username that owns the account's deployments (`GET /v1/account`, cached).
    pub async fn owner(&self, api: &AccountClient, token: &ApiToken) -> Result<String, ApiError> {
        if let Some((owner, at)) = self.lock().get(token).and_then(|a| a.owner.clone())
            && at.elapsed() < OWNER_TTL
        {
            return Ok(owner);
        }
        let account = api.get_account().await?;
        self.lock().entry(token.clone()).or_default().owner =
            Some((account.username.clone(), Instant::now()));
        Ok(account.username)
    }

    /// The account's deployments from a snapshot no older than `max_age`, listing them anew (one
    /// paged LIST, shared by concurrent callers) when the snapshot is older.
    pub async fn from_snapshot(
        &self,
        api: &AccountClient,
        token: &ApiToken,
        name: &str,
        max_age: Duration,
    ) -> Result<Option<LiveDeployment>, ApiError> {
        let cell = self
            .lock()
            .entry(token.clone())
            .or_default()
            .snapshot
            .clone();
        let mut snapshot = cell.lock().await;
        let fresh = snapshot
            .as_ref()
            .is_some_and(|s| s.taken.elapsed() < max_age);
        if !fresh {
            let taken = Instant::now();
            let deployments = api.list_deployments().await?;
            *snapshot = Some(Snapshot {
                taken,
                deployments: deployments
                    .iter()
                    .map(|d| (d.name.clone(), live(d)))
                    .collect(),
            });
        }
        Ok(snapshot
            .as_ref()
            .and_then(|s| s.deployments.get(name).cloned()))
    }

    /// Keeps a snapshot in step with what this controller itself just saw or wrote, so a resync
    /// shortly after a write does not act on the state from before it.
    pub async fn record(&self, token: &ApiToken, name: &str, seen: Option<&LiveDeployment>) {
        let cell = match self.lock().get(token) {
            Some(account) => account.snapshot.clone(),
            None => return,
        };
        let mut snapshot = cell.lock().await;
        if let Some(s) = snapshot.as_mut() {
            match seen {
                Some(live) => s.deployments.insert(name.to_string(), live.clone()),
                None => s.deployments.remove(name),
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ApiToken, Account>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}
