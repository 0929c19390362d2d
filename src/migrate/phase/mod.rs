//! The steps of one migration, one file per phase, run by the driver in `machine.rs`.
//! [`Job`] holds what the steps share: the two sides, the migration's lease, the running
//! catch-up, the key map, and (once fenced) the translation.

mod catching_up;
mod committing;
mod copying;
mod fenced;
mod preparing;
mod release;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::catchup::{self, CatchUpError, Follow, Position};
use super::copy::CopyOutcome;
use super::machine::{Failure, Steps};
use super::marker::{self, Marker};
use super::{ops, verify, Migrator, Phase};
use crate::error::ProxyError;
use crate::keys::KeyRange;
use crate::route::fence::reserved_prefix;
use crate::route::keymap::KeyMap;
use crate::route::revision::Translation;
use crate::route::{MigrationLink, Route};
use crate::upstream::Datastore;

/// A datastore failure, named by side.
pub(super) fn on(side: &'static str) -> impl Fn(ProxyError) -> Failure {
    move |source| Failure::Datastore { side, source }
}

/// The two sides of a migration and what it moves.
pub(super) struct Sides {
    pub source: Arc<Datastore>,
    pub target: Arc<Datastore>,
    /// The source's and the target's names.
    pub from: String,
    pub to: String,
    /// The tenant's range, and cutover's reserved part of it (never copied).
    pub range: KeyRange,
    pub reserved: Bytes,
    /// The source's own translation, if the tenant came to it by an earlier migration.
    pub view: Option<Arc<Translation>>,
    /// What the data path shares with the migration (the lease map among it).
    pub link: Arc<MigrationLink>,
}

/// The running catch-up task and how to stop it (dropping it stops the task).
struct Follower {
    stop: watch::Sender<Option<i64>>,
    position: watch::Receiver<Position>,
    task: AbortOnDropHandle<(CopyOutcome, Result<Position, CatchUpError>)>,
}

/// The migration's lease on the source (lock and fence are bound to it) and its keeper.
struct MigrationLease {
    id: i64,
    keeper: crate::migrate::ops::KeptLease,
}

/// The fence this migration wrote, and when.
struct Fence {
    value: Marker,
    at: Instant,
}

pub(super) struct Job {
    m: Arc<Migrator>,
    id: String,
    overwrite: bool,
    sides: Arc<Sides>,
    lease: Option<MigrationLease>,
    /// The claim written on the target (a retry clears what it covers); `None` until then.
    claim: Option<Marker>,
    /// What the target's fence key held at Preparing (its "moved" marker, if the tenant
    /// lived there before): kept until the commit, then removed.
    target_fence: Option<Bytes>,
    /// Keeps the target's lease copies alive while the migration runs.
    mirror: Option<AbortOnDropHandle<()>>,
    /// The copy's result, until the catch-up takes it over.
    copied: Option<CopyOutcome>,
    follower: Option<Follower>,
    /// The source revision of the last change the catch-up applied.
    last_change: i64,
    /// Chunks of the key map persisted before the fence.
    base_chunks: u32,
    /// The key map as persisted before the fence, packed: the translation's K once the
    /// keys changed since are laid over it.
    base_keys: Option<KeyMap>,
    fence: Option<Fence>,
    /// Holds the tenant's leases on the fenced source until the commit or the release.
    held_leases: Option<AbortOnDropHandle<()>>,
    /// The translation persisted in the target, ready to route with.
    translation: Option<Arc<Translation>>,
    /// How long the source refused writes, once it no longer does.
    fence_ms: Option<f64>,
}

impl Job {
    pub(super) fn new(m: Arc<Migrator>, id: String, route: Arc<Route>, to: &str, overwrite: bool) -> Job {
        let prefix = m.router.fence().tenant_prefix.clone();
        let target = m.router.datastores()[to].clone();
        let sides = Arc::new(Sides {
            source: route.datastore.clone(),
            link: Arc::new(MigrationLink::new(target.clone())),
            target,
            from: route.datastore_name.clone(),
            to: to.to_string(),
            range: KeyRange::prefix(&prefix),
            reserved: reserved_prefix(&prefix),
            view: route.translation.clone(),
        });
        Job {
            m,
            id,
            overwrite,
            sides,
            lease: None,
            claim: None,
            target_fence: None,
            mirror: None,
            copied: None,
            follower: None,
            last_change: 0,
            base_chunks: 0,
            base_keys: None,
            fence: None,
            held_leases: None,
            translation: None,
            fence_ms: None,
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn to(&self) -> &str {
        &self.sides.to
    }

    pub(super) fn source(&self) -> &Arc<Datastore> {
        &self.sides.source
    }

    pub(super) fn target(&self) -> &Arc<Datastore> {
        &self.sides.target
    }

    /// How long the source refused writes (None: it was never fenced).
    pub(super) fn fence_ms(&self) -> Option<f64> {
        self.fence_ms
            .or_else(|| self.fence.as_ref().map(|f| f.at.elapsed().as_secs_f64() * 1000.0))
    }

    fn prefix(&self) -> &Bytes {
        &self.m.router.fence().tenant_prefix
    }

    /// The configured pause at the start of each phase before the fence (rehearsals).
    async fn pause(&self) {
        let d = self.m.settings.step_delay;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn start_follower(&mut self, mut copied: CopyOutcome, from: i64) {
        let (stop, stop_rx) = watch::channel(None);
        let (pos_tx, position) = watch::channel(Position {
            applied: from - 1,
            source: from - 1,
            events_through: from - 1,
            ..Default::default()
        });
        let sides = Arc::clone(&self.sides);
        let claim = self
            .claim
            .as_ref()
            .map(|c| (marker::claim_key(self.prefix()), c.to_bytes()));
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
                claim: claim.as_ref(),
            };
            let r = catchup::follow(spec, &mut copied, stop_rx, &pos_tx).await;
            (copied, r)
        });
        self.follower = Some(Follower {
            stop,
            position,
            task: AbortOnDropHandle::new(task),
        });
    }

    fn follower_position(&self) -> Result<watch::Receiver<Position>, Failure> {
        self.follower
            .as_ref()
            .map(|f| f.position.clone())
            .ok_or_else(|| Failure::Task("the catch-up is not running".into()))
    }

    /// Stops the catch-up once it has applied `at` (None: what it knows of now).
    async fn stop_follower(&mut self, at: Option<i64>) -> Result<(CopyOutcome, Position), Failure> {
        let f = self
            .follower
            .take()
            .ok_or_else(|| Failure::Task("the catch-up is not running".into()))?;
        // Without a revision: stop where the events received so far reach.
        let at = at.unwrap_or_else(|| f.position.borrow().events_through);
        let _ = f.stop.send(Some(at));
        let (copied, r) = f.task.await.map_err(|e| Failure::Task(e.to_string()))?;
        Ok((copied, r?))
    }

    /// Writes cutover's reserved key `name` on the source (inside the followed range, never
    /// copied): the catch-up sees its revision. Returns that revision.
    async fn reserved_write(&self, name: &str) -> Result<i64, Failure> {
        let mut key = BytesMut::from(&self.sides.reserved[..]);
        key.extend_from_slice(name.as_bytes());
        ops::put(&self.sides.source, key.freeze(), Bytes::from(self.id.clone()))
            .await
            .map_err(on("source"))
    }

    /// Waits until the restarted catch-up watch delivers new events. etcd serves a watch
    /// that starts in the past from a background loop that runs every 100 ms; fencing
    /// before it caught up would add that wait to the fence. A write to a reserved key
    /// (inside the watched range, never applied, never shown to clients) shows when the
    /// watch is live.
    async fn until_follower_is_live(&self) -> Result<(), Failure> {
        let rev = self.reserved_write("catch-up").await?;
        let mut position = self.follower_position()?;
        let live = tokio::time::timeout(Duration::from_secs(5), position.wait_for(|p| p.events_through >= rev))
            .await
            .is_ok();
        if !live {
            let p = *position.borrow();
            tracing::warn!(migration = %self.id, marker = rev, events_through = p.events_through, applied = p.applied, source = p.source, "the catch-up watch did not show its marker write within 5 s; fencing anyway");
        }
        Ok(())
    }

    /// Compares `keys` on both sides (source at `at`, target now) and counts the reads.
    async fn shadow(&self, copied: &CopyOutcome, keys: &[Bytes], at: i64) -> Result<u64, Failure> {
        crate::failpoint!("migrate.verify.round")?;
        let s = &self.sides;
        let result = verify::keys(
            &s.source,
            &s.target,
            s.view.as_deref(),
            &copied.keys,
            &copied.lease_ids,
            keys,
            at,
        )
        .await;
        let result = match crate::failpoint!("migrate.verify.mismatch") {
            Err(e) => Err(verify::Difference::Injected(e.to_string()).into()),
            Ok(()) => result,
        };
        let n = keys.len() as u64;
        self.m.metrics.shadow_reads.inc_by(n);
        self.m.update(|v| v.shadow_reads += n);
        match result {
            Ok(()) => Ok(n),
            Err(e) => {
                if matches!(e, verify::VerifyError::Mismatch(_)) {
                    self.m.metrics.shadow_mismatches.inc();
                    self.m.update(|v| v.shadow_mismatches += 1);
                }
                Err(Failure::Verify(e))
            }
        }
    }

    /// The claim this migration writes on the target.
    fn claim_value(&self) -> Marker {
        Marker::Copying {
            migration: self.id.clone(),
            from: self.sides.from.clone(),
            leader: self.m.leader.clone(),
        }
    }
}

impl Job {
    /// Whether the migration's lease is gone (never, before Preparing granted it).
    fn lease_lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.lease.as_ref().map(|l| l.keeper.lost.clone())
    }
}

/// Runs `step` while the migration's lease lives: once the source has dropped it, the
/// lock is gone (another replica may start a migration) and so is any fence, so the
/// migration fails at once instead of finding out at its next write.
async fn while_leased<T>(
    lost: Option<tokio::sync::watch::Receiver<bool>>,
    step: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let Some(mut lost) = lost else {
        return step.await;
    };
    tokio::select! {
        r = step => r,
        _ = lost.wait_for(|gone| *gone) => Err(Failure::LeaseLost),
    }
}

impl Steps for Job {
    fn entered(&mut self, phase: Phase) {
        tracing::info!(migration = %self.id, phase = phase.as_str(), "migration phase");
        if phase != Phase::Ready {
            self.m.set_phase_and(phase, |_| {});
        }
    }

    // Each phase starts at a failpoint of its own name, where tests stop or delay it.
    async fn prepare(&mut self) -> Result<(), Failure> {
        crate::failpoint!("migrate.preparing")?;
        preparing::run(self).await
    }

    async fn copy(&mut self) -> Result<(), Failure> {
        let lost = self.lease_lost();
        while_leased(lost, async {
            crate::failpoint!("migrate.copying")?;
            copying::run(self).await
        })
        .await
    }

    async fn catch_up(&mut self) -> Result<(), Failure> {
        let lost = self.lease_lost();
        while_leased(lost, async {
            crate::failpoint!("migrate.catching_up")?;
            catching_up::run(self).await
        })
        .await
    }

    async fn fence(&mut self) -> Result<(), Failure> {
        let lost = self.lease_lost();
        while_leased(lost, fenced::run(self)).await
    }

    async fn commit(&mut self) -> Result<(), Failure> {
        committing::run(self).await
    }

    async fn release(&mut self, why: &Failure) -> bool {
        release::run(self, why).await
    }

    async fn reset_copy(&mut self) -> Result<(), Failure> {
        copying::reset(self).await
    }
}

/// Reads the source's fence key: what a datastore says about the tenant now.
async fn fence_marker(job: &Job) -> Result<Option<Marker>, ProxyError> {
    marker::read(&job.sides.source, &job.m.router.fence().guard).await
}
