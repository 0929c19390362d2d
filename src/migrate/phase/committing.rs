//! Committing: one Txn on the source replaces this migration's fence by the permanent
//! "moved" marker, only if the fence is still ours. That Txn is the commit point, and its
//! outcome is never guessed: an answer that does not come is resolved by reading the
//! fence key until it shows either our marker (committed), our fence (not yet: the same
//! Txn is sent again, which is safe, as it can only apply once) or anything else (the
//! fence was lost: not committed, and it never can be). Then the route is swapped.

use std::time::Duration;

use super::{fence_marker, Job};
use crate::backoff::Backoff;
use crate::migrate::machine::Failure;
use crate::migrate::marker::{self, CommitAnswer, Marker};
use crate::migrate::{now_ms, ops};

/// What the fence key says about a commit whose answer did not come.
enum Resolved {
    Committed,
    StillFenced,
    Lost(String),
}

pub(super) async fn run(job: &mut Job) -> Result<(), Failure> {
    let s = job.sides.clone();
    let settings = job.m.settings.clone();
    let (fenced, fenced_at) = job
        .fence
        .as_ref()
        .map(|f| (f.value.clone(), f.at))
        .ok_or_else(|| Failure::Task("committing without a fence".into()))?;
    let translation = job
        .translation
        .clone()
        .ok_or_else(|| Failure::Task("committing without a translation".into()))?;
    if !settings.fence_delay.is_zero() {
        tokio::time::sleep(settings.fence_delay).await;
    }
    let moved = Marker::Moved {
        migration: job.id.clone(),
        to: s.to.clone(),
        at: translation.s,
    };
    let fence_key = job.m.router.fence().guard.fence_key().clone();
    crate::failpoint!("migrate.commit.before_send")?;
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let sent = marker::try_commit(&s.source, &fence_key, &fenced, &moved).await;
        let _ = crate::failpoint!("migrate.commit.after_send");
        let unknown = match sent {
            Ok(CommitAnswer::Applied) => break,
            Ok(CommitAnswer::Refused(now)) if now.as_ref() == Some(&moved) => break,
            Ok(CommitAnswer::Refused(now)) => return Err(Failure::FenceLost(describe(now))),
            Err(e) => e,
        };
        tracing::warn!(migration = %job.id, error = %unknown, "the commit's outcome is unknown; reading the fence key until it is known");
        match resolve(job, &fenced, &moved, &mut backoff).await {
            Resolved::Committed => break,
            Resolved::Lost(now) => return Err(Failure::FenceLost(now)),
            Resolved::StillFenced => backoff.wait().await,
        }
    }
    job.m.update(|v| v.committed_unix_ms = Some(now_ms()));
    tracing::info!(migration = %job.id, "committed: the source says the tenant moved");

    let _ = crate::failpoint!("migrate.committed");
    // The target's own "moved" marker, from when the tenant left it earlier, stayed
    // until now so that a proxy starting with an old configuration went on to the
    // source; now it is stale (its `at` is below this commit's). It goes, only if it is
    // still the one Preparing saw; until then writes there are held, as while fenced.
    if let Some(old) = job.target_fence.take() {
        if let Err(e) = marker::delete_if(&s.target, &fence_key, &old).await {
            tracing::warn!(migration = %job.id, error = %e, "could not remove the target's stale marker; proxies remove it when they find it");
        }
    }

    // The commit point has passed: from here on, only forward. A rehearsal (fenceDelay)
    // lingers here too, so a test can kill the leader right after the marker.
    if !settings.fence_delay.is_zero() {
        tokio::time::sleep(settings.fence_delay).await;
    }
    let _ = crate::failpoint!("migrate.switch");
    if let Err(e) = job.m.router.switch_to(&s.to, Some(translation)) {
        // The target came from the configuration; this cannot happen.
        tracing::error!(error = %e, "cannot route to the target");
    }
    let fence_secs = fenced_at.elapsed().as_secs_f64();
    job.fence_ms = Some(fence_secs * 1000.0);
    let _ = s.link.fenced.send(false);
    job.held_leases = None;
    job.follower = None;
    job.mirror = None;
    job.m.metrics.fence_seconds.observe(fence_secs);
    job.m.update(|v| {
        v.fence_ms = Some(fence_secs * 1000.0);
        v.lag_revisions = 0;
    });
    job.m.metrics.catch_up_lag.set(0);
    let _ = crate::failpoint!("migrate.switched");
    // The lock goes with the lease; the marker has none and stays.
    if let Some(lease) = job.lease.take() {
        let _ = ops::revoke(&s.source, lease.id).await;
    }
    // The copy is the tenant's data now, no longer a claim a retry may clear.
    if ops::delete(&s.target, marker::claim_key(job.prefix()), bytes::Bytes::new())
        .await
        .is_err()
    {
        tracing::warn!(migration = %job.id, "could not remove the copy's claim from the target; it is ignored there, since that datastore now holds the tenant");
    }
    job.claim = None;
    if let Some(rev) = s.link.deferred_compaction() {
        let _ = ops::compact_client_revision(&job.m.router, rev).await;
    }
    Ok(())
}

fn describe(marker: Option<Marker>) -> String {
    marker
        .map(|m| String::from_utf8_lossy(&m.to_bytes()).into_owned())
        .unwrap_or_default()
}

/// Reads the fence key until it answers.
async fn resolve(job: &Job, fenced: &Marker, moved: &Marker, backoff: &mut Backoff) -> Resolved {
    loop {
        let read = match crate::failpoint!("migrate.commit.read_back") {
            Err(e) => Err(e.to_string()),
            Ok(()) => fence_marker(job).await.map_err(|e| e.to_string()),
        };
        match read {
            Ok(Some(m)) if &m == moved => return Resolved::Committed,
            Ok(Some(m)) if &m == fenced => return Resolved::StillFenced,
            Ok(other) => return Resolved::Lost(describe(other)),
            Err(e) => {
                tracing::warn!(migration = %job.id, error = %e, "cannot read the fence key yet; the commit's outcome is still unknown");
                backoff.wait().await;
            }
        }
    }
}
