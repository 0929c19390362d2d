//! The live migration: a state machine that drives `route` and never handles client
//! traffic.
//!
//! Ready -> Preparing -> Copying -> CatchingUp -> Fenced -> Committing -> Ready, or
//! Failed(reason) -> Ready on the source. The commit point is one Txn on the source that
//! turns the lease-bound fence into a permanent "moved" marker; before it every failure
//! leaves the tenant on the source (revoking the migration's lease drops the fence), after
//! it every proxy that reads the marker serves from the target.
//!
//! - `machine.rs`: the phases, the table of transitions and the driver (timeouts, aborts);
//! - `phase/`: one file per phase, the steps the driver runs;
//! - `copy.rs`, `catchup.rs`, `verify.rs`, `record.rs`: what the steps are made of;
//! - `marker.rs`: cutover's keys in a datastore (lock, fence, "moved", claim) and the
//!   replicas that follow them;
//! - `status.rs`: the migration's view, shared between replicas through the source;
//! - `ops.rs`: the requests the migrator makes with its own credentials.

pub mod catchup;
pub mod copy;
pub(crate) mod machine;
pub mod marker;
pub mod ops;
mod phase;
pub mod prune;
pub mod record;
mod status;
pub mod verify;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::keys::KeyRange;
use crate::metrics::Metrics;
use crate::route::fence::reserved_prefix;
use crate::route::Router;
use marker::Marker;

/// Where the tenant is in a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Phase {
    #[default]
    Ready,
    Preparing,
    Copying,
    CatchingUp,
    Fenced,
    Committing,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ready => "Ready",
            Phase::Preparing => "Preparing",
            Phase::Copying => "Copying",
            Phase::CatchingUp => "CatchingUp",
            Phase::Fenced => "Fenced",
            Phase::Committing => "Committing",
            Phase::Failed => "Failed",
        }
    }

    /// The value of the `cutover_migration_phase` gauge.
    pub fn number(self) -> i64 {
        self as i64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Outcome {
    #[default]
    Running,
    Succeeded,
    Failed,
    Aborted,
    /// Another proxy replica took the migration lock first: this one never started.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
            Outcome::Refused => "refused",
        }
    }
}

/// One migration, as /v1/status and `cutover status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationView {
    pub id: String,
    pub from: String,
    pub to: String,
    /// The proxy instance that runs it (host and process).
    pub leader: String,
    /// What started it: "api", "config".
    pub trigger: String,
    pub phase: Phase,
    pub outcome: Outcome,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub keys_total: u64,
    pub keys_copied: u64,
    pub bytes_copied: u64,
    pub leases_copied: u64,
    /// Source revisions the target is behind during the catch-up.
    pub lag_revisions: i64,
    pub shadow_reads: u64,
    pub shadow_mismatches: u64,
    /// How long the source refused writes (fence written to route swapped, or released).
    pub fence_ms: Option<f64>,
    /// When the commit marker was written (Unix ms).
    #[serde(default)]
    pub committed_unix_ms: Option<u64>,
    /// Keys compared by the verification, and the digest both sides agreed on.
    pub verified_keys: u64,
    pub digest: Option<String>,
    pub error: Option<String>,
}

/// The proxy's migration state: the phase now and the current or last migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub phase: Phase,
    pub migration: Option<MigrationView>,
}

/// Tunables of a migration, as the configuration checked them.
pub use crate::config::MigrationSettings as Settings;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("migration {0} is already running")]
    AlreadyRunning(String),
    #[error("no datastore named {0:?} in the configuration")]
    UnknownDatastore(String),
    #[error("the tenant is already on datastore {0:?}")]
    AlreadyThere(String),
    #[error("no prefix is configured, so the tenant's range is the whole key space: overwriting would delete every key on datastore {0:?}, whoever wrote it; if that datastore holds this tenant alone, say so with --delete-whole-keyspace")]
    WholeKeyspace(String),
    #[error("migration {migration} to {to:?} is already running, led by {leader}; this proxy follows its commit")]
    LedElsewhere {
        migration: String,
        leader: String,
        to: String,
    },
}

/// Whether the operator agreed to deletions over the whole key space of a datastore,
/// which is what the tenant's range is when no prefix is configured: other tenants' keys
/// on the same etcd would go too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WholeKeyspace {
    #[default]
    Refused,
    Allowed,
}

#[derive(Debug, thiserror::Error)]
pub enum AbortError {
    #[error("no migration is running")]
    NotRunning,
    #[error("migration {0} is committing; it can no longer be aborted")]
    Committing(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("no datastore named {0:?} in the configuration")]
    UnknownDatastore(String),
    #[error("datastore {0:?} is authoritative for the tenant; cleanup only removes data the tenant left behind")]
    Authoritative(String),
    #[error("migration {0} is running; clean up after it ends")]
    Running(String),
    #[error("datastore {0:?} is not marked as left by the tenant (no commit marker); refusing to delete")]
    NotLeft(String),
    #[error("no prefix is configured, so the tenant's range is the whole key space: cleanup would delete every key on datastore {0:?}, whoever wrote it; if that datastore held this tenant alone, say so with --delete-whole-keyspace")]
    WholeKeyspace(String),
    #[error("datastores {name:?} and {authoritative:?} are the same etcd cluster (a key written on one showed on the other): cleaning one would delete the tenant's live data")]
    SameCluster { name: String, authoritative: String },
    #[error("{0}")]
    Datastore(#[from] ProxyError),
}

/// Copy attempts when the source is compacted under the migration.
const MAX_COPY_ATTEMPTS: u32 = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This process, as named in the lock and in status.
pub(crate) fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}/{}", std::process::id())
}

pub struct Migrator {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    settings: Settings,
    state: watch::Sender<Snapshot>,
    /// Set while a migration runs: sending `true` asks it to abort.
    abort: parking_lot::Mutex<Option<(String, watch::Sender<bool>)>>,
    /// Migrations started here, counted under the `abort` lock: the status follower
    /// shows another replica's view only if none started (and perhaps ended) meanwhile.
    starts: std::sync::atomic::AtomicU64,
    leader: String,
    /// The lock marker the running migration wrote, once it has it: only then does it
    /// publish its view (see `publish_once`).
    lock_value: parking_lot::Mutex<Option<bytes::Bytes>>,
    /// The tasks this migrator spawned (the running migration, the status follower).
    tasks: tokio_util::task::TaskTracker,
}

impl Migrator {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, settings: Settings) -> Arc<Self> {
        Arc::new(Migrator {
            router,
            metrics,
            settings,
            state: watch::channel(Snapshot::default()).0,
            abort: parking_lot::Mutex::new(None),
            starts: std::sync::atomic::AtomicU64::new(0),
            leader: instance_name(),
            lock_value: parking_lot::Mutex::new(None),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    /// Notified on every change of phase or progress.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Whether this replica runs a migration now.
    fn leading(&self) -> bool {
        self.abort.lock().is_some()
    }

    /// Starts a migration of the tenant to datastore `to`.
    pub fn start(
        self: &Arc<Self>,
        to: &str,
        overwrite: bool,
        whole: WholeKeyspace,
        trigger: &str,
    ) -> Result<MigrationView, StartError> {
        if overwrite && self.router.fence().tenant_prefix.is_empty() && whole != WholeKeyspace::Allowed {
            return Err(StartError::WholeKeyspace(to.to_string()));
        }
        let mut slot = self.abort.lock();
        if let Some((id, _)) = slot.as_ref() {
            return Err(StartError::AlreadyRunning(id.clone()));
        }
        if !self.router.datastores().contains_key(to) {
            return Err(StartError::UnknownDatastore(to.to_string()));
        }
        let route = self.router.route();
        if route.datastore_name == to {
            return Err(StartError::AlreadyThere(to.to_string()));
        }
        let started = now_ms();
        let id = format!(
            "m-{}-{:04x}",
            started / 1000,
            (started ^ std::process::id() as u64) & 0xffff
        );
        let view = MigrationView {
            id: id.clone(),
            from: route.datastore_name.clone(),
            to: to.to_string(),
            leader: self.leader.clone(),
            trigger: trigger.to_string(),
            phase: Phase::Preparing,
            started_unix_ms: started,
            ..Default::default()
        };
        let (abort_tx, abort_rx) = watch::channel(false);
        *slot = Some((id.clone(), abort_tx));
        self.starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.lock_value.lock() = None;
        // Installed before the slot is released: the status follower, which shows other
        // replicas' migrations, checks the slot under the same lock before it replaces
        // the view.
        self.set_phase_and(Phase::Preparing, |m| *m = Some(view.clone()));
        drop(slot);
        tracing::info!(migration = %id, from = %view.from, to = %to, overwrite, trigger, "migration started");
        let job = phase::Job::new(Arc::clone(self), id, route, to, overwrite);
        let me = Arc::clone(self);
        self.tasks.spawn(async move { me.run(job, abort_rx).await });
        Ok(view)
    }

    /// Like [`Migrator::start`], after checking the migration lock in the authoritative
    /// datastore: another replica's running migration is a clear refusal, not a second
    /// migration.
    pub async fn start_checked(
        self: &Arc<Self>,
        to: &str,
        overwrite: bool,
        whole: WholeKeyspace,
        trigger: &str,
    ) -> Result<MigrationView, StartError> {
        let route = self.router.route();
        let lock = marker::lock_key(&self.router.fence().tenant_prefix);
        if let Ok(Some(Marker::Lock { migration, leader, to })) = marker::read_key(&route.datastore, &lock).await {
            if self.abort.lock().as_ref().is_none_or(|(id, _)| *id != migration) {
                return Err(StartError::LedElsewhere { migration, leader, to });
            }
        }
        self.start(to, overwrite, whole, trigger)
    }

    /// Asks the running migration to stop and leave the tenant on the source.
    pub fn abort(&self) -> Result<MigrationView, AbortError> {
        let slot = self.abort.lock();
        let Some((id, tx)) = slot.as_ref() else {
            return Err(AbortError::NotRunning);
        };
        let snap = self.snapshot();
        if !machine::abortable(snap.phase) {
            return Err(AbortError::Committing(id.clone()));
        }
        let _ = tx.send(true);
        tracing::info!(migration = %id, "abort requested");
        Ok(snap.migration.unwrap_or_default())
    }

    fn set_phase_and(&self, phase: Phase, f: impl FnOnce(&mut Option<MigrationView>)) {
        self.metrics.migration_phase.set(phase.number());
        self.state.send_modify(|s| {
            s.phase = phase;
            f(&mut s.migration);
            if let Some(m) = &mut s.migration {
                if m.outcome == Outcome::Running {
                    m.phase = phase;
                }
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut MigrationView)) {
        self.state.send_modify(|s| {
            if let Some(m) = &mut s.migration {
                f(m);
            }
        });
    }

    /// Runs one migration through the state machine and records how it ended.
    async fn run(self: Arc<Self>, mut job: phase::Job, abort: watch::Receiver<bool>) {
        let started = tokio::time::Instant::now();
        let id = job.id().to_string();
        let to = job.to().to_string();
        let limits = machine::Limits {
            catch_up: self.settings.catch_up_timeout,
            fence: self.settings.fence_timeout,
            max_lag: self.settings.max_lag,
            copy_attempts: MAX_COPY_ATTEMPTS,
        };
        let publisher = self.publish(job.source().clone());
        let end = machine::drive(&mut job, limits, abort).await;
        let fence_ms = job.fence_ms();
        tracing::info!(migration = %id, outcome = ?end.outcome, path = ?end.path, "migration ended");
        let outcome = match (&end.outcome, &end.failure) {
            // Another replica's lock, taken between our check and our attempt.
            (Outcome::Failed, Some(machine::Failure::Locked(_))) if fence_ms.is_none() => Outcome::Refused,
            (o, _) => *o,
        };
        self.router.set_link(None);
        self.metrics
            .migrations
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
        // The end is written into this migration's view while the slot still holds it, so
        // the status follower cannot show another replica's view in between and have
        // this outcome stamped on that one.
        {
            let mut slot = self.abort.lock();
            self.set_phase_and(Phase::Ready, |m| {
                if let Some(m) = m.as_mut().filter(|m| m.id == id) {
                    m.outcome = outcome;
                    m.finished_unix_ms = Some(now_ms());
                    m.fence_ms = fence_ms.or(m.fence_ms);
                    match &end.failure {
                        Some(f) if outcome != Outcome::Succeeded => {
                            m.error = Some(f.to_string());
                            m.phase = Phase::Failed;
                        }
                        _ => m.phase = Phase::Ready,
                    }
                }
            });
            *slot = None;
        }
        drop(publisher);
        // The final view, where the replicas read it now: the target after a commit (only
        // then is it ours to write to), else the source.
        let _ = self.publish_once(job.source()).await;
        if outcome == Outcome::Succeeded {
            let _ = self.publish_on_target(job.target()).await;
            tracing::info!(migration = %id, to = %to, seconds = started.elapsed().as_secs_f64(), fence_ms = fence_ms.unwrap_or_default(), "migration committed; serving from the target");
        }
        // The working key map (a hash map of every copied key) is gone with the job: give
        // its memory back, or the process keeps its peak size.
        drop(job);
        crate::memory::return_free_memory().await;
    }

    /// Deletes the tenant's data from a datastore it has left (keeping the marker that
    /// sends stale proxies to the new one). Returns the number of keys deleted.
    pub async fn cleanup(&self, name: &str, whole: WholeKeyspace) -> Result<i64, CleanupError> {
        let ds = self
            .router
            .datastores()
            .get(name)
            .cloned()
            .ok_or_else(|| CleanupError::UnknownDatastore(name.to_string()))?;
        if let Some((id, _)) = self.abort.lock().as_ref() {
            return Err(CleanupError::Running(id.clone()));
        }
        let route = self.router.route();
        if route.datastore_name == name {
            return Err(CleanupError::Authoritative(name.to_string()));
        }
        let prefix = &self.router.fence().tenant_prefix;
        if prefix.is_empty() && whole != WholeKeyspace::Allowed {
            return Err(CleanupError::WholeKeyspace(name.to_string()));
        }
        // The same etcd under a second name (`localhost:P` beside `127.0.0.1:P`) carries
        // the tenant's live data, and the marker of a move away from it once.
        if ops::same_cluster(&ds, &route.datastore, &reserved_prefix(prefix)).await? {
            return Err(CleanupError::SameCluster {
                name: name.to_string(),
                authoritative: route.datastore_name.clone(),
            });
        }
        match marker::read(&ds, &self.router.fence().guard).await? {
            Some(Marker::Moved { .. }) => {}
            _ => return Err(CleanupError::NotLeft(name.to_string())),
        }
        // A replica that has not followed the tenant yet may still watch there: as before
        // a migration writes to a store the tenant left (see route::proof).
        tokio::time::sleep(crate::route::proof::LEFT_STORE_QUIET).await;
        // Everything under the prefix but cutover's reserved keys (the marker stays).
        let range = KeyRange::prefix(prefix);
        let reserved = reserved_prefix(prefix);
        let mut deleted = 0;
        for (start, end) in [
            (range.start.clone(), reserved.clone()),
            (crate::keys::prefix_end(&reserved), range.end.clone()),
        ] {
            if start >= end && end[..] != b"\0"[..] {
                continue;
            }
            let resp = ops::delete(&ds, start, end).await?;
            deleted += resp;
        }
        tracing::info!(datastore = %name, keys = deleted, "cleaned up the tenant's old data");
        Ok(deleted)
    }
}
