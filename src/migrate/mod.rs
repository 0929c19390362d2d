//! The live migration: a state machine that drives `route` and never handles client
//! traffic.
//!
//! Ready -> Preparing -> Copying -> CatchingUp -> Fenced -> Committing -> Ready, or
//! Failed(reason) -> Ready on the source. The commit point is one Txn on the source that
//! turns the lease-bound fence into a permanent "moved" marker; before it every failure
//! leaves the tenant on the source (revoking the migration's lease drops the fence), after
//! it every proxy that reads the marker serves from the target.

pub mod catchup;
pub mod copy;
pub mod marker;
pub mod record;
mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use crate::route::fence::reserved_prefix;
use crate::route::revision::Translation;
use crate::route::{MigrationLink, Router};
use crate::server::client;
use crate::upstream::{own_request, Datastore, Retry};
use catchup::{CatchUpError, Follow, Position};
use copy::{CopyError, CopyOptions, CopyOutcome, KeyRange};
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

/// Tunables of a migration (defaults suit a kube-apiserver tenant).
#[derive(Debug, Clone)]
pub struct Settings {
    /// S = the source's revision at the fence + this gap: no client can have seen a
    /// revision above S from the source.
    pub revision_gap: i64,
    pub page_size: i64,
    pub concurrency: usize,
    /// The catch-up is close enough to fence when the target is this many source
    /// revisions behind or less.
    pub max_lag: i64,
    /// Give up if the catch-up does not get close enough in this time.
    pub catch_up_timeout: Duration,
    /// Give up (and drop the fence) if drain, verification and commit take longer.
    pub fence_timeout: Duration,
    /// TTL of the migration's lease on the source: a crashed migrator's fence and lock
    /// disappear after this.
    pub lease_ttl: i64,
    /// A pause at the start of each phase before the fence (rehearsals, demos, tests).
    pub step_delay: Duration,
    /// Extra time the source stays fenced, in Fenced and in Committing (rehearsals, tests).
    pub fence_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            revision_gap: 1_000_000,
            page_size: 1000,
            concurrency: 4,
            max_lag: 20,
            catch_up_timeout: Duration::from_secs(600),
            fence_timeout: Duration::from_secs(10),
            lease_ttl: 10,
            step_delay: Duration::ZERO,
            fence_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("migration {0} is already running")]
    AlreadyRunning(String),
    #[error("no datastore named {0:?} in the configuration")]
    UnknownDatastore(String),
    #[error("the tenant is already on datastore {0:?}")]
    AlreadyThere(String),
    #[error("migration {migration} to {to:?} is already running, led by {leader}; this proxy follows its commit")]
    LedElsewhere {
        migration: String,
        leader: String,
        to: String,
    },
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
    #[error("{0}")]
    Datastore(#[from] ProxyError),
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("aborted by request")]
    Aborted,
    #[error("{0}")]
    Copy(#[from] CopyError),
    #[error("catch-up: {0}")]
    CatchUp(#[from] CatchUpError),
    #[error("{side}: {source}")]
    Datastore {
        side: &'static str,
        #[source]
        source: ProxyError,
    },
    #[error("another migration holds the source: {0}")]
    Locked(String),
    #[error("the catch-up did not get within {max} revisions of the source in {secs} s")]
    CatchUpTimeout { max: i64, secs: u64 },
    #[error("the fence was held longer than {0:?}; released")]
    FenceTimeout(Duration),
    #[error("verification: {0}")]
    Verify(String),
    #[error("the fence was lost before the commit (the migration's lease expired?): the source holds {0:?}")]
    FenceLost(String),
    #[error("translation record: {0}")]
    Record(#[from] record::RecordError),
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

/// Copy attempts when the source is compacted under the migration.
const MAX_COPY_ATTEMPTS: u32 = 3;

impl Failure {
    /// The source compacted a revision the copy or the catch-up still needed.
    fn is_compaction(&self) -> bool {
        let compacted =
            |e: &ProxyError| matches!(e, ProxyError::Etcd(s) if s.message() == crate::error::messages::COMPACTED);
        match self {
            Failure::CatchUp(CatchUpError::Compacted(_)) => true,
            Failure::Copy(CopyError::Datastore { side: "source", source }) => compacted(source),
            Failure::CatchUp(CatchUpError::Copy(CopyError::Datastore { side: "source", source })) => compacted(source),
            Failure::Datastore { side: "source", source } => compacted(source),
            Failure::Verify(msg) => msg.contains(crate::error::messages::COMPACTED),
            _ => false,
        }
    }
}

fn on(side: &'static str) -> impl Fn(ProxyError) -> Failure {
    move |source| Failure::Datastore { side, source }
}

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
    leader: String,
}

impl Migrator {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, settings: Settings) -> Arc<Self> {
        Arc::new(Migrator {
            router,
            metrics,
            settings,
            state: watch::channel(Snapshot::default()).0,
            abort: parking_lot::Mutex::new(None),
            leader: instance_name(),
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

    /// Starts a migration of the tenant to datastore `to`.
    pub fn start(self: &Arc<Self>, to: &str, overwrite: bool, trigger: &str) -> Result<MigrationView, StartError> {
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
        drop(slot);
        self.set_phase_and(Phase::Preparing, |m| *m = Some(view.clone()));
        tracing::info!(migration = %id, from = %view.from, to = %to, overwrite, trigger, "migration started");
        let me = Arc::clone(self);
        let to = to.to_string();
        tokio::spawn(async move { me.run(id, to, overwrite, abort_rx).await });
        Ok(view)
    }

    /// Like [`Migrator::start`], after checking the migration lock in the authoritative
    /// datastore: another replica's running migration is a clear refusal, not a second
    /// migration.
    pub async fn start_checked(
        self: &Arc<Self>,
        to: &str,
        overwrite: bool,
        trigger: &str,
    ) -> Result<MigrationView, StartError> {
        let route = self.router.route();
        let lock = marker::lock_key(&self.router.fence().tenant_prefix);
        if let Ok(Some(Marker::Lock { migration, leader, to })) = marker::read_key(&route.datastore, &lock).await {
            if self.abort.lock().as_ref().is_none_or(|(id, _)| *id != migration) {
                return Err(StartError::LedElsewhere { migration, leader, to });
            }
        }
        self.start(to, overwrite, trigger)
    }

    /// Asks the running migration to stop and leave the tenant on the source.
    pub fn abort(&self) -> Result<MigrationView, AbortError> {
        let slot = self.abort.lock();
        let Some((id, tx)) = slot.as_ref() else {
            return Err(AbortError::NotRunning);
        };
        let snap = self.snapshot();
        if snap.phase == Phase::Committing {
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

    async fn run(self: Arc<Self>, id: String, to: String, overwrite: bool, abort: watch::Receiver<bool>) {
        let started = Instant::now();
        // Other replicas show this migration too: its view is published in the source.
        let source = self.router.route().datastore.clone();
        let target = self.router.datastores()[&to].clone();
        let publisher = self.publish(source.clone());
        let mut job = Job {
            m: &self,
            id: id.clone(),
            abort,
            lease: None,
            fenced_at: None,
            follower: None,
            claimed: None,
        };
        let result = job.migrate(&to, overwrite).await;
        let fence_ms = job.fenced_at.map(|t| t.elapsed().as_secs_f64() * 1000.0);
        let outcome = match &result {
            Ok(()) => Outcome::Succeeded,
            Err(Failure::Aborted) => Outcome::Aborted,
            // Another replica's lock, taken between our check and our attempt.
            Err(Failure::Locked(_)) if job.fenced_at.is_none() => Outcome::Refused,
            Err(_) => Outcome::Failed,
        };
        if let Err(e) = &result {
            tracing::error!(migration = %id, error = %e, "migration failed; the tenant stays on the source");
            job.release().await;
            if let Some(t) = job.fenced_at {
                self.metrics.fence_seconds.observe(t.elapsed().as_secs_f64());
            }
            self.set_phase_and(Phase::Failed, |m| {
                if let Some(m) = m {
                    m.error = Some(e.to_string());
                    m.phase = Phase::Failed;
                    m.fence_ms = fence_ms.or(m.fence_ms);
                }
            });
        }
        self.router.set_link(None);
        self.metrics
            .migrations
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
        *self.abort.lock() = None;
        self.set_phase_and(Phase::Ready, |m| {
            if let Some(m) = m {
                m.outcome = outcome;
                m.finished_unix_ms = Some(now_ms());
                if outcome == Outcome::Succeeded {
                    m.phase = Phase::Ready;
                }
            }
        });
        publisher.abort();
        // The final view, where the replicas read it now: the target after a commit (only
        // then is it ours to write to), else the source.
        let _ = self.publish_once(&source).await;
        if outcome == Outcome::Succeeded {
            let _ = self.publish_once(&target).await;
        }
        if outcome == Outcome::Succeeded {
            tracing::info!(migration = %id, to = %to, seconds = started.elapsed().as_secs_f64(), fence_ms = fence_ms.unwrap_or_default(), "migration committed; serving from the target");
        }
    }

    fn status_key(&self) -> Bytes {
        let mut key = BytesMut::from(&reserved_prefix(&self.router.fence().tenant_prefix)[..]);
        key.extend_from_slice(b"status");
        key.freeze()
    }

    async fn publish_once(&self, ds: &Datastore) -> Result<i64, ProxyError> {
        let view = self.snapshot().migration;
        let json = serde_json::to_vec(&view).unwrap_or_default();
        ops::put(ds, self.status_key(), Bytes::from(json)).await
    }

    /// Writes the migration's view to `ds` on every change, at most four times a second.
    fn publish(self: &Arc<Self>, ds: Arc<Datastore>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        let mut changes = self.subscribe();
        tokio::spawn(async move {
            loop {
                if me.publish_once(&ds).await.is_err() {
                    tracing::debug!("could not publish the migration's status");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// On a replica that runs no migration: shows the one another replica runs (or ran
    /// last), as published in the authoritative datastore.
    pub fn spawn_status_follower(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if me.abort.lock().is_some() {
                    continue;
                }
                let route = me.router.route();
                let ds = route.datastore.clone();
                // A leader that died right after its commit marker never wrote its final
                // view; this replica following the marker to the target says how it ended.
                let current = me.snapshot();
                if let Some(m) = current.migration.as_ref() {
                    if m.outcome == Outcome::Running
                        && m.leader != me.leader
                        && m.to == route.datastore_name
                        && route.stranded.is_none()
                    {
                        let mut done = m.clone();
                        done.outcome = Outcome::Succeeded;
                        done.phase = Phase::Ready;
                        done.finished_unix_ms = Some(route.since_unix_ms);
                        me.state.send_replace(Snapshot {
                            phase: Phase::Ready,
                            migration: Some(done),
                        });
                        continue;
                    }
                }
                let Ok(resp) = ops::range(
                    &ds,
                    RangeRequest {
                        key: me.status_key(),
                        ..Default::default()
                    },
                )
                .await
                else {
                    continue;
                };
                let Some(view) = resp
                    .kvs
                    .first()
                    .and_then(|kv| serde_json::from_slice::<Option<MigrationView>>(&kv.value).ok())
                    .flatten()
                else {
                    continue;
                };
                if view.leader == me.leader || me.abort.lock().is_some() {
                    continue;
                }
                let phase = if view.outcome == Outcome::Running {
                    view.phase
                } else {
                    Phase::Ready
                };
                let current = me.snapshot();
                if current.migration.as_ref() != Some(&view) || current.phase != phase {
                    me.state.send_replace(Snapshot {
                        phase,
                        migration: Some(view),
                    });
                }
            }
        })
    }

    /// Deletes the tenant's data from a datastore it has left (keeping the marker that
    /// sends stale proxies to the new one). Returns the number of keys deleted.
    pub async fn cleanup(&self, name: &str) -> Result<i64, CleanupError> {
        let ds = self
            .router
            .datastores()
            .get(name)
            .cloned()
            .ok_or_else(|| CleanupError::UnknownDatastore(name.to_string()))?;
        if let Some((id, _)) = self.abort.lock().as_ref() {
            return Err(CleanupError::Running(id.clone()));
        }
        if self.router.route().datastore_name == name {
            return Err(CleanupError::Authoritative(name.to_string()));
        }
        let prefix = &self.router.fence().tenant_prefix;
        match marker::read(&ds, &self.router.fence().guard).await? {
            Some(Marker::Moved { .. }) => {}
            _ => return Err(CleanupError::NotLeft(name.to_string())),
        }
        // Everything under the prefix but cutover's reserved keys (the marker stays).
        let range = KeyRange::prefix(prefix);
        let reserved = reserved_prefix(prefix);
        let mut deleted = 0;
        for (start, end) in [
            (range.start.clone(), reserved.clone()),
            (copy::prefix_end(&reserved), range.end.clone()),
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

/// The two sides of a migration and what it moves.
struct Sides {
    source: Arc<Datastore>,
    target: Arc<Datastore>,
    /// The tenant's range, and cutover's reserved part of it (never copied).
    range: KeyRange,
    reserved: Bytes,
    /// The source's own translation, if the tenant came to it by an earlier migration.
    view: Option<Arc<Translation>>,
    /// The target's name.
    to: String,
    /// What the data path shares with the migration (the lease map among it).
    link: Arc<MigrationLink>,
}

/// The running catch-up task and how to stop it.
struct Follower {
    stop: watch::Sender<Option<i64>>,
    position: watch::Receiver<Position>,
    task: tokio::task::JoinHandle<(CopyOutcome, Result<Position, CatchUpError>)>,
}

struct Job<'a> {
    m: &'a Arc<Migrator>,
    id: String,
    abort: watch::Receiver<bool>,
    /// The migration's lease on the source (lock and fence are bound to it).
    lease: Option<(Arc<Datastore>, i64, tokio::task::JoinHandle<()>)>,
    fenced_at: Option<Instant>,
    follower: Option<Follower>,
    /// The target's tenant range once it is ours to fill (emptied in Preparing): a failed
    /// migration clears it again, so a retry needs no --overwrite.
    claimed: Option<(Arc<Datastore>, KeyRange)>,
}

impl Job<'_> {
    /// Runs `fut` unless an abort comes first.
    async fn step<T>(&mut self, fut: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        if *self.abort.borrow() {
            return Err(Failure::Aborted);
        }
        let mut abort = self.abort.clone();
        tokio::select! {
            r = fut => r,
            _ = abort.wait_for(|a| *a) => Err(Failure::Aborted),
        }
    }

    fn phase(&self, p: Phase) {
        tracing::info!(migration = %self.id, phase = p.as_str(), "migration phase");
        self.m.set_phase_and(p, |_| {});
    }

    /// The configured pause at the start of a phase (none by default).
    async fn pause(&mut self) -> Result<(), Failure> {
        let d = self.m.settings.step_delay;
        self.pause_for(d).await
    }

    async fn pause_for(&mut self, d: Duration) -> Result<(), Failure> {
        if d.is_zero() {
            return Ok(());
        }
        self.step(async move {
            tokio::time::sleep(d).await;
            Ok(())
        })
        .await
    }

    async fn migrate(&mut self, to: &str, overwrite: bool) -> Result<(), Failure> {
        let m = Arc::clone(self.m);
        let router = &m.router;
        let settings = &m.settings;
        let route = router.route();
        let source = route.datastore.clone();
        let view = route.translation.clone();
        let target = router.datastores()[to].clone();
        let prefix = router.fence().tenant_prefix.clone();
        let guard = router.fence().guard.clone();
        let range = KeyRange::prefix(&prefix);
        let reserved = reserved_prefix(&prefix);

        // Preparing: the target answers and is empty for the tenant; the lock is ours.
        self.pause().await?;
        let tenant_keys = self
            .step(async {
                ops::count_tenant(&target, &range, &reserved, 0)
                    .await
                    .map_err(on("target"))
            })
            .await?;
        if tenant_keys > 0 && !overwrite {
            return Err(CopyError::TargetNotEmpty { count: tenant_keys }.into());
        }
        let total = self
            .step(async {
                ops::count_tenant(&source, &range, &reserved, 0)
                    .await
                    .map_err(on("source"))
            })
            .await?;
        m.update(|v| v.keys_total = total as u64);
        let lease = self
            .step(async { ops::grant(&source, settings.lease_ttl).await.map_err(on("source")) })
            .await?;
        let keeper = ops::keep_alive(source.clone(), lease, settings.lease_ttl);
        self.lease = Some((source.clone(), lease, keeper));
        let lock = marker::Marker::Lock {
            migration: self.id.clone(),
            leader: m.leader.clone(),
            to: to.to_string(),
        };
        if let Some(holder) = self
            .step(async {
                marker::put_if_absent(&source, &marker::lock_key(&prefix), &lock, lease)
                    .await
                    .map_err(on("source"))
            })
            .await?
        {
            return Err(Failure::Locked(holder));
        }
        // Clear the tenant range on the target: old data on request, and cutover's own
        // keys from an earlier migration away from it (its "moved" marker among them).
        let clear_from = if tenant_keys > 0 {
            range.start.clone()
        } else {
            reserved.clone()
        };
        let clear_to = if tenant_keys > 0 {
            range.end.clone()
        } else {
            copy::prefix_end(&reserved)
        };
        self.step(async { ops::delete(&target, clear_from, clear_to).await.map_err(on("target")) })
            .await?;
        self.claimed = Some((target.clone(), range.clone()));
        let link = Arc::new(MigrationLink::new(target.clone()));
        router.set_link(Some(link.clone()));

        let sides = Arc::new(Sides {
            source: source.clone(),
            target: target.clone(),
            range: range.clone(),
            reserved: reserved.clone(),
            view: view.clone(),
            to: to.to_string(),
            link: link.clone(),
        });
        // Copying, then CatchingUp. A source compaction past the copy's pinned revision
        // (another tenant's compactor, etcd's auto-compaction; the tenant's own Compacts
        // are deferred) makes both impossible to continue: copy again at a newer revision.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.copy_and_follow(&sides, &link, &guard).await {
                Err(e) if e.is_compaction() && attempt < MAX_COPY_ATTEMPTS && self.fenced_at.is_none() => {
                    tracing::warn!(migration = %self.id, error = %e, attempt, "the source was compacted under the migration; copying again from a newer revision");
                    if let Some(f) = self.follower.take() {
                        f.task.abort();
                    }
                    self.step(async {
                        ops::delete(&target, range.start.clone(), range.end.clone())
                            .await
                            .map_err(on("target"))
                    })
                    .await?;
                    link.leases.lock().clear();
                }
                other => return other,
            }
        }
    }

    async fn copy_and_follow(
        &mut self,
        sides: &Arc<Sides>,
        link: &Arc<MigrationLink>,
        guard: &crate::route::fence::Guard,
    ) -> Result<(), Failure> {
        let (source, target, range, reserved, view) = (
            &sides.source,
            &sides.target,
            &sides.range,
            &sides.reserved,
            sides.view.clone(),
        );
        let m = Arc::clone(self.m);
        let settings = &m.settings;
        self.phase(Phase::Copying);
        self.pause().await?;
        let opts = CopyOptions {
            page_size: settings.page_size,
            concurrency: settings.concurrency,
            exclude: Some(reserved.clone()),
            view: view.clone(),
            link: Some(link.clone()),
            ..Default::default()
        };
        // From the first lease copied on, the target's copies live as long as the source's.
        let mirror = ops::mirror_leases(source.clone(), link.clone());
        let copy_started = Instant::now();
        let copied = {
            let m2 = Arc::clone(&m);
            let (source, target, range) = (source.clone(), target.clone(), range.clone());
            self.step(async move {
                copy::copy_range(&source, &target, &range, &opts, |st| {
                    m2.update(|v| {
                        v.keys_copied = st.keys;
                        v.bytes_copied = st.bytes;
                        v.leases_copied = st.leases;
                    });
                })
                .await
                .map_err(Failure::from)
            })
            .await
        };
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                mirror.abort();
                return Err(e);
            }
        };
        m.metrics.keys_copied.inc_by(copied.stats.keys);
        m.metrics.bytes_copied.inc_by(copied.stats.bytes);
        link.leases
            .lock()
            .extend(copied.lease_ids.iter().map(|(a, b)| (*a, *b)));
        tracing::info!(migration = %self.id, keys = copied.stats.keys, bytes = copied.stats.bytes, leases = copied.stats.leases, revision = copied.stats.revision, seconds = copy_started.elapsed().as_secs_f64(), "copy done");
        let r0 = copied.stats.revision;

        // CatchingUp: follow the source; verify everything once at a consistent point,
        // then the keys changed since, in rounds, until the lag is small.
        self.phase(Phase::CatchingUp);
        let result = self.catch_up_and_commit(sides, copied, r0, link, guard).await;
        mirror.abort();
        result
    }

    fn start_follower(&mut self, sides: &Arc<Sides>, mut copied: CopyOutcome, from: i64) {
        let (stop, stop_rx) = watch::channel(None);
        let (pos_tx, position) = watch::channel(Position {
            applied: from - 1,
            source: from - 1,
            events_through: from - 1,
            ..Default::default()
        });
        let sides = Arc::clone(sides);
        let task = tokio::spawn(async move {
            let spec = Follow {
                source: &sides.source,
                target: &sides.target,
                range: &sides.range,
                exclude: Some(&sides.reserved),
                from,
                view: sides.view.as_deref(),
                strict: true,
                link: Some(&sides.link),
            };
            let r = catchup::follow(spec, &mut copied, stop_rx, &pos_tx).await;
            (copied, r)
        });
        self.follower = Some(Follower { stop, position, task });
    }

    /// Waits until the restarted catch-up watch delivers new events. etcd serves a watch
    /// that starts in the past from a background loop that runs every 100 ms; fencing
    /// before it caught up would add that wait to the fence. A write to a reserved key
    /// (inside the watched range, never applied, never shown to clients) shows when the
    /// watch is live.
    async fn until_follower_is_live(&mut self, sides: &Sides) -> Result<(), Failure> {
        let rev = self.reserved_write(sides, "catch-up").await?;
        let mut position = self.follower.as_ref().expect("follower running").position.clone();
        let live = tokio::time::timeout(Duration::from_secs(5), position.wait_for(|p| p.events_through >= rev)).await;
        if live.is_err() {
            tracing::warn!(migration = %self.id, "the catch-up watch did not show its marker write within 5 s; fencing anyway");
        }
        Ok(())
    }

    /// Writes cutover's reserved key `name` on the source (inside the followed range, never
    /// copied): the catch-up sees its revision. Returns that revision.
    async fn reserved_write(&mut self, sides: &Sides, name: &str) -> Result<i64, Failure> {
        let mut key = BytesMut::from(&sides.reserved[..]);
        key.extend_from_slice(name.as_bytes());
        let value = Bytes::from(self.id.clone());
        self.step(async { ops::put(&sides.source, key.freeze(), value).await.map_err(on("source")) })
            .await
    }

    /// Stops the catch-up once it has applied `at` (None: what it knows of now).
    async fn stop_follower(&mut self, at: Option<i64>) -> Result<(CopyOutcome, Position), Failure> {
        let f = self.follower.take().expect("follower running");
        // Without a revision: stop where the events received so far reach.
        let at = at.unwrap_or_else(|| f.position.borrow().events_through);
        let _ = f.stop.send(Some(at));
        let mut abort = self.abort.clone();
        let mut task = f.task;
        let joined = tokio::select! {
            j = &mut task => j,
            _ = abort.wait_for(|a| *a) => { task.abort(); return Err(Failure::Aborted); }
        };
        let (copied, r) = joined.map_err(|e| Failure::Verify(format!("catch-up task: {e}")))?;
        Ok((copied, r?))
    }

    async fn catch_up_and_commit(
        &mut self,
        sides: &Arc<Sides>,
        copied: CopyOutcome,
        r0: i64,
        link: &Arc<MigrationLink>,
        guard: &crate::route::fence::Guard,
    ) -> Result<(), Failure> {
        let (source, target, range, reserved, view, to) = (
            &sides.source,
            &sides.target,
            &sides.range,
            &sides.reserved,
            sides.view.clone(),
            sides.to.as_str(),
        );
        let m = Arc::clone(self.m);
        let settings = &m.settings;
        let prefix = m.router.fence().tenant_prefix.clone();
        let deadline = Instant::now() + settings.catch_up_timeout;
        let mut last_change = r0;
        let base_chunks: u32;
        self.start_follower(sides, copied, r0 + 1);
        self.pause().await?;

        // First verification: everything, at a consistent pair of revisions.
        let (mut copied, pos) = self.stop_follower(None).await?;
        last_change = last_change.max(pos.last_change);
        copied.touched.clear();
        let snapshot = copied.keys.clone();
        let target_rev = ops::current_revision(target).await.map_err(on("target"))?;
        self.start_follower(sides, copied, pos.events_through + 1);
        let full = {
            let (s, t, r, x, v) = (
                source.clone(),
                target.clone(),
                range.clone(),
                reserved.clone(),
                view.clone(),
            );
            let leases = link.leases.lock().clone();
            self.step(async move {
                verify::full(
                    &s,
                    &t,
                    &r,
                    &x,
                    v.as_deref(),
                    &snapshot,
                    &leases,
                    pos.events_through,
                    target_rev,
                )
                .await
                .map_err(Failure::Verify)
            })
            .await?
        };
        m.update(|v| {
            v.verified_keys = full.keys;
            v.digest = Some(full.digest_hex());
        });
        tracing::info!(migration = %self.id, keys = full.keys, digest = %full.digest_hex(), at = pos.events_through, "verified the copy");

        // Rounds: wait for a small lag, verify what changed, until little changes.
        loop {
            let mut pos_rx = self.follower.as_ref().unwrap().position.clone();
            let wait = async {
                loop {
                    let p = *pos_rx.borrow_and_update();
                    m.update(|v| v.lag_revisions = p.lag());
                    m.metrics.catch_up_lag.set(p.lag());
                    if p.lag() <= settings.max_lag {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(Failure::CatchUpTimeout {
                            max: settings.max_lag,
                            secs: settings.catch_up_timeout.as_secs(),
                        });
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(200), pos_rx.changed()).await;
                }
            };
            self.step(wait).await?;
            let (mut copied, pos) = self.stop_follower(None).await?;
            last_change = last_change.max(pos.last_change);
            let changed: Vec<Bytes> = copied.touched.drain().collect();
            let few = changed.len() <= 64;
            let checked = self.shadow(sides, &copied, &changed, pos.events_through).await?;
            m.update(|v| v.verified_keys += checked);
            if few {
                // The last round before the fence: write the bulk of the record, and
                // check the key counts at this consistent point, so that the fenced
                // steps only deal with what changes from here on.
                let chunks = self
                    .step(async {
                        record::persist_keys(target, &prefix, &copied.keys)
                            .await
                            .map_err(Failure::from)
                    })
                    .await?;
                base_chunks = chunks;
                self.step(async {
                    verify::counts(source, target, range, reserved, pos.events_through)
                        .await
                        .map_err(Failure::Verify)
                })
                .await?;
                self.start_follower(sides, copied, pos.events_through + 1);
                self.until_follower_is_live(sides).await?;
                break;
            }
            self.start_follower(sides, copied, pos.events_through + 1);
        }

        // Fenced: the source refuses tenant writes from here on.
        let _ = link.fenced.send(true);
        let fence_value = Marker::Fenced {
            migration: self.id.clone(),
            to: to.to_string(),
        };
        let lease = self.lease.as_ref().map_or(0, |l| l.1);
        let fence_key = guard.fence_key().clone();
        let fenced = self
            .step(async {
                marker::put_if_absent_rev(source, &fence_key, &fence_value, lease)
                    .await
                    .map_err(on("source"))
            })
            .await?;
        let fence_rev = match fenced {
            Ok(rev) => rev,
            Err(holder) => return Err(Failure::Locked(holder)),
        };
        self.fenced_at = Some(Instant::now());
        self.phase(Phase::Fenced);
        self.pause_for(settings.fence_delay).await?;
        let fence_deadline = tokio::time::Instant::now() + settings.fence_timeout;
        let committed = tokio::time::timeout_at(fence_deadline, async {
            // The fence stops every tenant write but a lease expiry. Once the catch-up has
            // seen the fence (so the lease map names every lease a tenant key is on), hold
            // those leases until the commit, and drain to a write made after the deletes of
            // the ones that had already expired: nothing of the tenant changes after it.
            let mut position = self.follower.as_ref().expect("follower running").position.clone();
            let _ = position.wait_for(|p| p.events_through >= fence_rev).await;
            let ids: Vec<i64> = link.leases.lock().keys().copied().collect();
            let _held = tokio_util::task::AbortOnDropHandle::new(
                ops::hold_leases(source.clone(), ids).await.map_err(on("source"))?,
            );
            let settled_rev = self.reserved_write(sides, "settled").await?;

            // Drain: every change up to that write is on the target.
            let (copied, pos) = self.stop_follower(Some(settled_rev)).await?;
            let mut copied = copied;
            last_change = last_change.max(pos.last_change);
            let changed: Vec<Bytes> = copied.touched.drain().collect();
            let checked = self.shadow(sides, &copied, &changed, settled_rev).await?;
            m.update(|v| v.verified_keys += checked);

            // The translation, persisted in the target; T is its revision.
            let virt = |r: i64| view.as_deref().map_or(r, |v| v.to_virtual(r));
            let s = virt(settled_rev) + settings.revision_gap;
            let l = virt(last_change);
            // Every lease the target has a copy of: copied with a key, or a grant the
            // data path mirrored (it may have no key yet).
            let mut all_leases = link.leases.lock().clone();
            all_leases.extend(copied.lease_ids.iter().map(|(a, b)| (*a, *b)));
            let mut leases: HashMap<i64, i64> = HashMap::new();
            for (src, tgt) in &all_leases {
                let client_id = view
                    .as_deref()
                    .map_or(*src, |v| crate::route::translate::lease_id_to_virtual(v, *src));
                if client_id != *tgt {
                    leases.insert(client_id, *tgt);
                }
            }
            let t = record::persist_final(target, &prefix, s, l, base_chunks, &changed, &copied.keys, &leases).await?;
            let translation = Arc::new(Translation {
                s,
                t,
                l,
                keys: copied.keys,
                leases,
            });

            // Committing: the marker replaces our fence, or nothing happens.
            self.phase(Phase::Committing);
            if !settings.fence_delay.is_zero() {
                tokio::time::sleep(settings.fence_delay).await;
            }
            let moved = Marker::Moved {
                migration: self.id.clone(),
                to: to.to_string(),
            };
            crate::failpoint!("migrate.commit.before_send")?;
            let committed = marker::commit(source, &fence_key, &fence_value, &moved).await;
            crate::failpoint!("migrate.commit.after_send")?;
            committed.map_err(on("source"))?.map_err(Failure::FenceLost)?;
            m.update(|v| v.committed_unix_ms = Some(now_ms()));
            Ok::<_, Failure>(translation)
        })
        .await;
        let translation = match committed {
            Ok(r) => r?,
            Err(_) => return Err(Failure::FenceTimeout(settings.fence_timeout)),
        };
        // The commit point has passed: from here on, only forward. A rehearsal
        // (fenceDelay) lingers here too, so a test can kill the leader right after the marker.
        if !settings.fence_delay.is_zero() {
            tokio::time::sleep(settings.fence_delay).await;
        }
        m.router
            .switch_to(to, Some(translation))
            .expect("the target is a configured datastore");
        let fence_secs = self.fenced_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let _ = link.fenced.send(false);
        m.metrics.fence_seconds.observe(fence_secs);
        m.update(|v| {
            v.fence_ms = Some(fence_secs * 1000.0);
            v.lag_revisions = 0;
        });
        m.metrics.catch_up_lag.set(0);
        // The lock goes with the lease; the marker has none and stays.
        if let Some((ds, lease, keeper)) = self.lease.take() {
            keeper.abort();
            let _ = ops::revoke(&ds, lease).await;
        }
        if let Some(rev) = link.deferred_compaction() {
            let _ = ops::compact_client_revision(&m.router, rev).await;
        }
        Ok(())
    }

    /// Compares `keys` on both sides (source at `at`, target now) and counts the reads.
    async fn shadow(&mut self, sides: &Sides, copied: &CopyOutcome, keys: &[Bytes], at: i64) -> Result<u64, Failure> {
        let m = Arc::clone(self.m);
        let result = verify::keys(
            &sides.source,
            &sides.target,
            sides.view.as_deref(),
            &copied.keys,
            &copied.lease_ids,
            keys,
            at,
        )
        .await;
        let n = keys.len() as u64;
        m.metrics.shadow_reads.inc_by(n);
        m.update(|v| v.shadow_reads += n);
        match result {
            Ok(()) => Ok(n),
            Err(e) => {
                m.metrics.shadow_mismatches.inc();
                m.update(|v| v.shadow_mismatches += 1);
                Err(Failure::Verify(e))
            }
        }
    }

    /// Undoes what a failed migration holds: the catch-up, the fence and the lock.
    async fn release(&mut self) {
        if let Some(f) = self.follower.take() {
            f.task.abort();
        }
        if let Some(link) = self.m.router.link() {
            let _ = link.fenced.send(false);
            if let Some(rev) = link.deferred_compaction() {
                let _ = ops::compact_client_revision(&self.m.router, rev).await;
            }
        }
        if let Some((target, range)) = self.claimed.take() {
            // Only what this migration wrote: the range was empty (or emptied) before.
            if let Err(e) = ops::delete(&target, range.start, range.end).await {
                tracing::warn!(migration = %self.id, error = %e, "could not clear the partial copy on the target; a retry will need --overwrite");
            }
        }
        if let Some((ds, lease, keeper)) = self.lease.take() {
            keeper.abort();
            // Revoking drops the lock and the fence together; if the source cannot be
            // reached, they go when the lease expires.
            if let Err(e) = ops::revoke(&ds, lease).await {
                tracing::warn!(migration = %self.id, error = %e, "could not revoke the migration's lease; the fence lifts when it expires");
            }
        }
    }
}

/// The requests the migrator makes itself.
pub(crate) mod ops {
    use super::*;

    pub async fn txn(ds: &Datastore, req: TxnRequest) -> Result<TxnResponse, ProxyError> {
        copy::txn(ds, req).await
    }

    pub async fn range(
        ds: &Datastore,
        req: RangeRequest,
    ) -> Result<crate::proto::etcdserverpb::RangeResponse, ProxyError> {
        ds.unary(Retry::Idempotent, |ch, token| {
            let r = own_request(req.clone(), token);
            async move { client!(KvClient, ch).range(r).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn current_revision(ds: &Datastore) -> Result<i64, ProxyError> {
        let r = range(
            ds,
            RangeRequest {
                key: Bytes::from_static(b"\0"),
                count_only: true,
                ..Default::default()
            },
        )
        .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// Keys of the tenant range, cutover's own left out.
    /// At `revision` (0: now).
    pub async fn count_tenant(
        ds: &Datastore,
        range_: &KeyRange,
        reserved: &Bytes,
        revision: i64,
    ) -> Result<i64, ProxyError> {
        let all = range(
            ds,
            RangeRequest {
                key: range_.start.clone(),
                range_end: range_.end.clone(),
                count_only: true,
                revision,
                ..Default::default()
            },
        )
        .await?;
        let rev = all.header.map_or(0, |h| h.revision);
        let own = range(
            ds,
            RangeRequest {
                key: reserved.clone(),
                range_end: copy::prefix_end(reserved),
                count_only: true,
                revision: rev,
                ..Default::default()
            },
        )
        .await?;
        Ok(all.count - own.count)
    }

    pub async fn delete(ds: &Datastore, key: Bytes, range_end: Bytes) -> Result<i64, ProxyError> {
        let resp = txn(
            ds,
            TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key,
                        range_end,
                        prev_kv: false,
                    })),
                }],
                ..Default::default()
            },
        )
        .await?;
        Ok(resp
            .responses
            .into_iter()
            .next()
            .and_then(|r| match r.response {
                Some(crate::proto::etcdserverpb::response_op::Response::ResponseDeleteRange(d)) => Some(d.deleted),
                _ => None,
            })
            .unwrap_or(0))
    }

    /// A plain Put (of cutover's own keys); the revision it made.
    pub async fn put(ds: &Datastore, key: Bytes, value: Bytes) -> Result<i64, ProxyError> {
        let req = PutRequest {
            key,
            value,
            ..Default::default()
        };
        ds.unary(Retry::IfNotSent, |ch, token| {
            let r = own_request(req.clone(), token);
            async move { client!(KvClient, ch).put(r).await }
        })
        .await
        .map(|r| r.into_inner().header.map_or(0, |h| h.revision))
    }

    pub async fn grant(ds: &Datastore, ttl: i64) -> Result<i64, ProxyError> {
        ds.unary(Retry::IfNotSent, |ch, token| {
            let r = own_request(LeaseGrantRequest { ttl, id: 0 }, token);
            async move { client!(LeaseClient, ch).lease_grant(r).await }
        })
        .await
        .map(|r| r.into_inner().id)
    }

    pub async fn revoke(ds: &Datastore, id: i64) -> Result<(), ProxyError> {
        ds.unary(Retry::IfNotSent, |ch, token| {
            let r = own_request(LeaseRevokeRequest { id }, token);
            async move { client!(LeaseClient, ch).lease_revoke(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Refreshes `ids` on `ds` once (one keep-alive stream, one message per lease).
    /// Returns the ones the datastore no longer keeps (expired, or revoked).
    pub async fn refresh(ds: &Datastore, ids: &[i64]) -> Result<Vec<i64>, ProxyError> {
        let mut gone = Vec::new();
        if ids.is_empty() {
            return Ok(gone);
        }
        let (_, channel) = ds.pick();
        let token = ds.token(&channel).await.map_err(ProxyError::Etcd)?;
        let msgs: Vec<LeaseKeepAliveRequest> = ids.iter().map(|id| LeaseKeepAliveRequest { id: *id }).collect();
        let n = msgs.len();
        let req = own_request(futures::stream::iter(msgs), token);
        let mut stream = client!(LeaseClient, channel)
            .lease_keep_alive(req)
            .await
            .map_err(ProxyError::Etcd)?
            .into_inner();
        for _ in 0..n {
            match stream.message().await {
                Ok(Some(r)) if r.ttl <= 0 => gone.push(r.id),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(s) => return Err(ProxyError::Etcd(s)),
            }
        }
        Ok(gone)
    }

    /// Keeps the source's copies of `ids` from expiring while the source is fenced: the
    /// fence stops every tenant write but a lease expiry, and a key deleted by an expiry
    /// after the drain point would be on the target and not on the source. etcd itself
    /// extends every lease on a leader change; this extends them by the fence window.
    /// Returns the task (abort it at the commit or the release) once the leases that had
    /// already expired are revoked, so that their deletes come before the next write.
    pub async fn hold_leases(ds: Arc<Datastore>, ids: Vec<i64>) -> Result<tokio::task::JoinHandle<()>, ProxyError> {
        let gone = refresh(&ds, &ids).await?;
        // etcd's smallest lease TTL is above a second: refreshing twice a second holds all.
        let holder = {
            let ds = ds.clone();
            let ids: Vec<i64> = ids.iter().copied().filter(|id| !gone.contains(id)).collect();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Err(e) = refresh(&ds, &ids).await {
                        tracing::warn!(error = %e, "could not hold the tenant's leases on the fenced source");
                    }
                }
            })
        };
        // An expired lease stays listed until etcd's revoke (and its deletes) is applied.
        while !gone.is_empty() {
            match source_leases(&ds).await {
                Ok(listed) if gone.iter().all(|id| !listed.contains(id)) => break,
                Ok(_) => {}
                Err(e) => {
                    holder.abort();
                    return Err(e);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(holder)
    }

    /// Keeps the migration's lease alive until the task is aborted.
    pub fn keep_alive(ds: Arc<Datastore>, id: i64, ttl: i64) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = refresh(&ds, &[id]).await {
                    tracing::warn!(error = %e, "could not refresh the migration's lease");
                }
            }
        })
    }

    /// While the migration runs, keeps the target's copies of the tenant's leases alive
    /// as long as the source's are: a lease the source lets expire takes its keys with it
    /// there, and the catch-up carries the deletes over.
    pub fn mirror_leases(source: Arc<Datastore>, link: Arc<MigrationLink>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let pairs: Vec<(i64, i64)> = link.leases.lock().iter().map(|(a, b)| (*a, *b)).collect();
                if pairs.is_empty() {
                    continue;
                }
                let alive: Vec<i64> = match source_leases(&source).await {
                    Ok(ids) => pairs.iter().filter(|(s, _)| ids.contains(s)).map(|(_, t)| *t).collect(),
                    Err(_) => continue,
                };
                if let Err(e) = refresh(&link.target, &alive).await {
                    tracing::debug!(error = %e, "could not refresh the target's leases");
                }
            }
        })
    }

    async fn source_leases(ds: &Datastore) -> Result<std::collections::HashSet<i64>, ProxyError> {
        let r = ds
            .unary(Retry::Idempotent, |ch, token| {
                let r = own_request(crate::proto::etcdserverpb::LeaseLeasesRequest {}, token);
                async move { client!(LeaseClient, ch).lease_leases(r).await }
            })
            .await?
            .into_inner();
        Ok(r.leases.into_iter().map(|l| l.id).collect())
    }

    /// Applies a client's Compact (in the client's revision space) to the authoritative
    /// datastore.
    pub async fn compact_client_revision(router: &Router, revision: i64) -> Result<(), ProxyError> {
        let route = router.route();
        let mut req = CompactionRequest {
            revision,
            physical: false,
        };
        if let Some(t) = &route.translation {
            crate::route::translate::compact_request(t, &mut req);
        }
        route
            .datastore
            .unary(Retry::IfNotSent, |ch, token| {
                let r = own_request(req, token);
                async move { client!(KvClient, ch).compact(r).await }
            })
            .await
            .map(|_| ())
    }

    pub fn put_op(key: Bytes, value: Bytes, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key,
                value,
                lease,
                ..Default::default()
            })),
        }
    }

    pub fn version_is(key: &Bytes, version: i64) -> Compare {
        Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: key.clone(),
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::Version(version)),
        }
    }
}
