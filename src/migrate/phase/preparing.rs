//! Preparing: the target answers and holds nothing of the tenant (or only a copy an
//! earlier, dead migration of this tenant left there, which is cleared); the migration's
//! lock on the source is ours; the target's range is claimed for this migration.

use super::{on, Job, MigrationLease};
use crate::migrate::copy::CopyError;
use crate::migrate::machine::Failure;
use crate::migrate::marker::{self, Marker};
use crate::migrate::ops;

pub(super) async fn run(job: &mut Job) -> Result<(), Failure> {
    job.pause().await;
    let s = job.sides.clone();
    let prefix = job.prefix().clone();
    // Two names for one etcd: clearing the "target" would clear the tenant itself.
    if ops::same_cluster(&s.target, &s.source, &s.reserved)
        .await
        .map_err(on("target"))?
    {
        return Err(Failure::SameCluster {
            from: s.from.clone(),
            to: s.to.clone(),
        });
    }
    let tenant_keys = ops::count_tenant(&s.target, &s.range, &s.reserved, 0)
        .await
        .map_err(on("target"))?;
    // A copy cutover itself left there: a migration of this tenant from this source that
    // died (its claim is still on the target). Only such a copy is cleared unasked.
    let left_by = match marker::read_key(&s.target, &marker::claim_key(&prefix))
        .await
        .map_err(on("target"))?
    {
        Some(Marker::Copying { migration, from, .. }) if from == s.from => Some(migration),
        _ => None,
    };
    if tenant_keys > 0 && !job.overwrite && left_by.is_none() {
        return Err(CopyError::TargetNotEmpty { count: tenant_keys }.into());
    }
    let total = ops::count_tenant(&s.source, &s.range, &s.reserved, 0)
        .await
        .map_err(on("source"))?;
    job.m.update(|v| v.keys_total = total as u64);

    crate::failpoint!("migrate.prepare.before_lock")?;
    let ttl = job.m.settings.lease_ttl;
    let lease = ops::grant(&s.source, ttl).await.map_err(on("source"))?;
    job.lease = Some(MigrationLease {
        id: lease,
        keeper: ops::keep_alive(s.source.clone(), lease, ttl),
    });
    let lock = Marker::Lock {
        migration: job.id.clone(),
        leader: job.m.leader.clone(),
        to: s.to.clone(),
    };
    if let marker::PutIfAbsent::Held(holder) =
        marker::put_if_absent(&s.source, &marker::lock_key(&prefix), &lock, lease)
            .await
            .map_err(on("source"))?
    {
        return Err(Failure::Locked(holder));
    }
    // The migration is this replica's to show now: publish it.
    *job.m.lock_value.lock() = Some(lock.to_bytes());
    job.m.update(|_| {});
    // With the lock ours nobody else can fence or commit; a fence key that is set now
    // means the tenant left this source (another replica's migration committed while
    // this one started): the target is authoritative, never to be cleared. Only a stale
    // marker (from before the tenant came back here) is removed and ignored.
    let fence_key = job.m.router.fence().guard.fence_key().clone();
    if let Some(raw) = marker::read_value(&s.source, &fence_key).await.map_err(on("source"))? {
        let epoch = s.view.as_ref().map_or(0, |t| t.s);
        match Marker::parse(&raw) {
            Some(m) if marker::is_stale(&m, epoch) => {
                marker::delete_if(&s.source, &fence_key, &raw)
                    .await
                    .map_err(on("source"))?;
            }
            _ => {
                return Err(Failure::Locked(format!(
                    "the source's fence key holds {:?}",
                    String::from_utf8_lossy(&raw)
                )))
            }
        }
    }
    crate::failpoint!("migrate.prepare.after_lock")?;

    // Clear the tenant range on the target: old data on request, a dead migration's
    // partial copy, and cutover's own keys from an earlier migration away from it. Its
    // "moved" marker stays until the commit: a proxy that starts meanwhile with an old
    // configuration naming the target must still be sent on to the source.
    job.target_fence = marker::read_value(&s.target, &fence_key).await.map_err(on("target"))?;
    if job
        .target_fence
        .as_deref()
        .and_then(crate::route::fence::Marker::moved_to)
        .is_some()
    {
        // The tenant lived on the target once. A replica that has not followed it since
        // may still watch there; it vouches for what it forwards by proofs that last
        // less than this wait, so none of what follows can reach its clients as theirs.
        tracing::info!(migration = %job.id, wait = ?crate::route::proof::LEFT_STORE_QUIET, "the target is a datastore the tenant left; leaving it alone a moment before clearing it");
        tokio::time::sleep(crate::route::proof::LEFT_STORE_QUIET).await;
    }
    let (from, to) = if tenant_keys > 0 {
        if let (Some(dead), false) = (&left_by, job.overwrite) {
            tracing::info!(migration = %job.id, dead = %dead, keys = tenant_keys, "clearing the partial copy a dead migration of this tenant left on the target");
        }
        (s.range.start.clone(), s.range.end.clone())
    } else {
        (s.reserved.clone(), crate::keys::prefix_end(&s.reserved))
    };
    ops::delete_around(&s.target, from, to, &fence_key)
        .await
        .map_err(on("target"))?;
    let claim = job.claim_value();
    ops::put(&s.target, marker::claim_key(&prefix), claim.to_bytes())
        .await
        .map_err(on("target"))?;
    job.claim = Some(claim);
    job.m.router.set_link(Some(s.link.clone()));
    Ok(())
}
