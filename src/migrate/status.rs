//! The migration's view, shared between replicas: the leader publishes it under the
//! reserved prefix of the source (and of the target once committed), every other replica
//! reads it from its authoritative datastore and shows it in its own status.
//!
//! A replica that reads a running migration also watches over its leader: when the
//! migration's lock is gone (its lease expired: the leader died or lost the source) and
//! the leader has published no end, the migration failed with "leader lost". One replica
//! records that in the source (a compare-and-swap on the published view, so a leader that
//! comes back and publishes its own end wins), and every replica shows it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::marker::{self, Marker};
use super::{now_ms, ops, MigrationView, Migrator, Outcome, Phase, Snapshot};
use crate::error::ProxyError;
use crate::proto::etcdserverpb::{RangeRequest, TxnRequest};
use crate::route::fence::reserved_prefix;
use crate::upstream::Datastore;

/// How often a replica that does not lead reads the published view.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// How long a running migration's lock must be gone before its leader counts as lost:
/// enough for a leader that released it itself to publish its own end.
const LEADER_GRACE: Duration = Duration::from_millis(500);

impl Migrator {
    pub(super) fn status_key(&self) -> Bytes {
        let mut key = BytesMut::from(&reserved_prefix(&self.router.fence().tenant_prefix)[..]);
        key.extend_from_slice(b"status");
        key.freeze()
    }

    /// Writes this replica's view of its migration to the source `ds`, if the migration
    /// took the migration lock: one refused at the lock publishes nothing, or it would hide
    /// the migration that holds it. While the lock is still this migration's, the view is
    /// written as it is; once it is not (the migration's lease is gone: it ended, or was
    /// lost, and another replica may have started one), only over a view of this same
    /// migration (its own, or another replica's "leader lost" verdict on it), never over
    /// another migration's.
    pub(super) async fn publish_once(&self, ds: &Datastore) -> Result<(), ProxyError> {
        let Some(lock) = self.lock_value.lock().clone() else {
            return Ok(());
        };
        let Some(view) = self.snapshot().migration else {
            return Ok(());
        };
        let json = Bytes::from(serde_json::to_vec(&Some(&view)).unwrap_or_default());
        let key = self.status_key();
        let lock_key = marker::lock_key(&self.router.fence().tenant_prefix);
        let holding = ops::txn(
            ds,
            TxnRequest {
                compare: vec![ops::value_is(&lock_key, lock)],
                success: vec![ops::put_op(key.clone(), json.clone(), 0)],
                failure: vec![],
            },
        )
        .await?;
        if holding.succeeded {
            return Ok(());
        }
        let compare = match self.read_view(ds).await? {
            Some((raw, shown)) if shown.id == view.id => ops::value_is(&key, raw),
            Some(_) => return Ok(()),
            None => ops::version_is(&key, 0),
        };
        ops::txn(
            ds,
            TxnRequest {
                compare: vec![compare],
                success: vec![ops::put_op(key, json, 0)],
                failure: vec![],
            },
        )
        .await
        .map(drop)
    }

    /// Writes the final view of a committed migration to its target, where replicas read
    /// it from now on: the tenant lives there, and the view is this migration's to write.
    pub(super) async fn publish_on_target(&self, ds: &Datastore) -> Result<(), ProxyError> {
        let view = self.snapshot().migration;
        let json = serde_json::to_vec(&view).unwrap_or_default();
        ops::put(ds, self.status_key(), Bytes::from(json)).await.map(|_| ())
    }

    /// Writes the migration's view to `ds` on every change, at most four times a second,
    /// until the handle is dropped.
    pub(super) fn publish(self: &Arc<Self>, ds: Arc<Datastore>) -> tokio_util::task::AbortOnDropHandle<()> {
        let me = Arc::clone(self);
        let mut changes = self.subscribe();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                if me.publish_once(&ds).await.is_err() {
                    tracing::debug!("could not publish the migration's status");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }))
    }

    /// On a replica that runs no migration: shows the one another replica runs (or ran
    /// last), as published in the authoritative datastore, and ends it as "leader lost"
    /// when its leader is gone. It ends once the migrator is dropped (a gateway's tenant
    /// that was deleted).
    pub fn spawn_status_follower(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.tasks.spawn(async move {
            // Since when the lock has been seen without the running migration's marker, and
            // for which migration (a view of another one starts the wait again).
            let mut lock_gone_since: Option<(String, tokio::time::Instant)> = None;
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let Some(me) = weak.upgrade() else { return };
                if me.leading() {
                    lock_gone_since = None;
                    continue;
                }
                if me.ended_by_following_the_commit() {
                    continue;
                }
                let starts_at = me.starts.load(std::sync::atomic::Ordering::SeqCst);
                let ds = me.router.route().datastore.clone();
                let Ok(Some((raw, view))) = me.read_view(&ds).await else {
                    continue;
                };
                if view.leader == me.leader || me.leading() {
                    continue;
                }
                let view = if view.outcome == Outcome::Running {
                    match me.leader_lost(&ds, &view, &mut lock_gone_since).await {
                        Some(failed) => {
                            me.record_leader_lost(&ds, raw, &failed).await;
                            // Where a test holds this replica between reading another's
                            // view and showing it (a migration may start here meanwhile).
                            let _ = crate::failpoint!("migrate.status.adopt");
                            failed
                        }
                        None => view,
                    }
                } else {
                    lock_gone_since = None;
                    view
                };
                let phase = if view.outcome == Outcome::Running {
                    view.phase
                } else {
                    Phase::Ready
                };
                // The reads above take time, and a migration may have started here since
                // (and may even have ended): its view is the one to show. Checked and
                // replaced under the lock `start` and the migration's end hold while they
                // write their view, so neither can overwrite the other.
                let running_here = me.abort.lock();
                if running_here.is_some() || me.starts.load(std::sync::atomic::Ordering::SeqCst) != starts_at {
                    continue;
                }
                let current = me.snapshot();
                if current.migration.as_ref() != Some(&view) || current.phase != phase {
                    me.state.send_replace(Snapshot {
                        phase,
                        migration: Some(view),
                    });
                }
                drop(running_here);
            }
        });
    }

    /// A leader that died right after its commit marker never wrote its final view; a
    /// replica that followed the marker to the target says how it ended.
    fn ended_by_following_the_commit(&self) -> bool {
        let running_here = self.abort.lock();
        if running_here.is_some() {
            return false;
        }
        let route = self.router.route();
        let current = self.snapshot();
        let Some(m) = current.migration.as_ref() else {
            return false;
        };
        if m.outcome != Outcome::Running
            || m.leader == self.leader
            || m.to != route.datastore_name
            || route.stranded.is_some()
        {
            return false;
        }
        let mut done = m.clone();
        done.outcome = Outcome::Succeeded;
        done.phase = Phase::Ready;
        done.finished_unix_ms = Some(route.since_unix_ms);
        self.state.send_replace(Snapshot {
            phase: Phase::Ready,
            migration: Some(done),
        });
        true
    }

    /// The published view, with the bytes it was read as.
    async fn read_view(&self, ds: &Datastore) -> Result<Option<(Bytes, MigrationView)>, ProxyError> {
        let resp = ops::range(
            ds,
            RangeRequest {
                key: self.status_key(),
                ..Default::default()
            },
        )
        .await?;
        Ok(resp.kvs.into_iter().next().and_then(|kv| {
            serde_json::from_slice::<Option<MigrationView>>(&kv.value)
                .ok()
                .flatten()
                .map(|v| (kv.value, v))
        }))
    }

    /// `Some(the failed view)` once the running migration's lock has been gone for
    /// [`LEADER_GRACE`] and the source shows no commit of it.
    async fn leader_lost(
        &self,
        ds: &Datastore,
        view: &MigrationView,
        gone_since: &mut Option<(String, tokio::time::Instant)>,
    ) -> Option<MigrationView> {
        let lock = marker::lock_key(&self.router.fence().tenant_prefix);
        match marker::read_key(ds, &lock).await {
            Ok(Some(Marker::Lock { migration, .. })) if migration == view.id => {
                *gone_since = None;
                return None;
            }
            Ok(_) => {}
            Err(_) => return None,
        }
        if gone_since.as_ref().is_none_or(|(id, _)| *id != view.id) {
            *gone_since = Some((view.id.clone(), tokio::time::Instant::now()));
        }
        if gone_since
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() < LEADER_GRACE)
        {
            return None;
        }
        // A commit is followed by the marker watcher; it is not a failure.
        match marker::read(ds, &self.router.fence().guard).await {
            Ok(Some(Marker::Moved { migration, .. })) if migration == view.id => return None,
            Ok(_) => {}
            Err(_) => return None,
        }
        *gone_since = None;
        let mut failed = view.clone();
        failed.outcome = Outcome::Failed;
        failed.phase = Phase::Failed;
        failed.finished_unix_ms = Some(now_ms());
        failed.error = Some(format!(
            "leader lost: {} stopped renewing the migration's lease in phase {} before the commit; the tenant stays on {:?}",
            view.leader,
            view.phase.as_str(),
            view.from
        ));
        tracing::warn!(migration = %view.id, leader = %view.leader, phase = view.phase.as_str(), "the migration's leader is gone; the migration failed before its commit");
        Some(failed)
    }

    /// Publishes the "leader lost" end in place of the view read as `raw`, unless someone
    /// (the leader itself, or another replica) published something else meanwhile.
    async fn record_leader_lost(&self, ds: &Datastore, raw: Bytes, failed: &MigrationView) {
        let json = Bytes::from(serde_json::to_vec(&Some(failed)).unwrap_or_default());
        let key = self.status_key();
        let req = TxnRequest {
            compare: vec![ops::value_is(&key, raw)],
            success: vec![ops::put_op(key, json, 0)],
            failure: vec![],
        };
        if let Err(e) = ops::txn(ds, req).await {
            tracing::debug!(error = %e, "could not record the lost leader's end");
        }
    }
}
