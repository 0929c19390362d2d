//! Fenced: the source refuses tenant writes from the fence write on. Hold the tenant's
//! leases (an expiry is the one change the fence does not stop), drain the last changes
//! to the target, verify them, and persist the translation there; its revision is T.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{on, Fence, Job};
use crate::migrate::machine::Failure;
use crate::migrate::marker::{self, Marker};
use crate::migrate::{ops, record};
use crate::route::revision::Translation;

pub(super) async fn run(job: &mut Job) -> Result<(), Failure> {
    let s = job.sides.clone();
    let settings = job.m.settings.clone();
    let _ = s.link.fenced.send(true);
    let value = Marker::Fenced {
        migration: job.id.clone(),
        to: s.to.clone(),
    };
    let lease = job.lease.as_ref().map_or(0, |l| l.id);
    let fence_key = job.m.router.fence().guard.fence_key().clone();
    crate::failpoint!("migrate.fence.before_write")?;
    let revision = match marker::put_if_absent(&s.source, &fence_key, &value, lease)
        .await
        .map_err(on("source"))?
    {
        marker::PutIfAbsent::Written(rev) => rev,
        marker::PutIfAbsent::Held(holder) => return Err(Failure::Locked(holder)),
    };
    job.fence = Some(Fence {
        value,
        at: tokio::time::Instant::now(),
    });
    crate::failpoint!("migrate.fence.after_write")?;
    if !settings.fence_delay.is_zero() {
        tokio::time::sleep(settings.fence_delay).await;
    }

    // The fence stops every tenant write but a lease expiry. Once the catch-up has seen
    // the fence (so the lease map names every lease a tenant key is on), hold those
    // leases until the commit, and drain to a write made after the deletes of the ones
    // that had already expired: nothing of the tenant changes after it.
    let mut position = job.follower_position()?;
    let _ = position.wait_for(|p| p.events_through >= revision).await;
    let ids: Vec<i64> = s.link.leases.lock().keys().copied().collect();
    job.held_leases = Some(ops::hold_leases(s.source.clone(), ids).await.map_err(on("source"))?);
    let settled = job.reserved_write("settled").await?;

    // Drain: every change up to that write is on the target.
    let (mut copied, pos) = job.stop_follower(Some(settled)).await?;
    crate::failpoint!("migrate.drain")?;
    job.last_change = job.last_change.max(pos.last_change);
    let changed: Vec<Bytes> = copied.touched.drain().collect();
    let checked = job.shadow(&copied, &changed, settled).await?;
    job.m.update(|v| v.verified_keys += checked);

    // The translation. S leaves a gap no replica can have shown a revision in.
    let view = s.view.as_deref();
    let virt = |r: i64| view.map_or(r, |v| v.to_virtual(r));
    let big_s = virt(settled) + settings.revision_gap;
    let l = virt(job.last_change);
    // Every lease the target has a copy of: copied with a key, or a grant the data path
    // mirrored (it may have no key yet).
    let mut all_leases = s.link.leases.lock().clone();
    all_leases.extend(copied.lease_ids.iter().map(|(a, b)| (*a, *b)));
    let mut leases: HashMap<i64, i64> = HashMap::new();
    for (src, tgt) in &all_leases {
        let client_id = view.map_or(*src, |v| crate::route::translate::lease_id_to_virtual(v, *src));
        if client_id != *tgt {
            leases.insert(client_id, *tgt);
        }
    }
    let base_keys = job
        .base_keys
        .take()
        .ok_or_else(|| Failure::Task("fenced before the key map was persisted".into()))?;
    crate::failpoint!("migrate.record.persist")?;
    let t = record::persist_final(
        &s.target,
        job.prefix(),
        big_s,
        l,
        job.base_chunks,
        &changed,
        &copied.keys,
        &leases,
    )
    .await?;
    job.translation = Some(Arc::new(Translation {
        s: big_s,
        t,
        l,
        keys: base_keys.with_overlay(changed.iter().map(|k| (k.clone(), copied.keys.get(k).copied()))),
        leases,
    }));
    Ok(())
}
