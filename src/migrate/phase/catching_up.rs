//! CatchingUp: follow the source from the copy's revision (catchup.rs); verify everything
//! once at a consistent point, then the keys changed since, in rounds, until a round sees
//! few changes and the lag is small. The last round persists the bulk of the key map and
//! checks the key counts, so that what is left for the fence does not grow with the
//! tenant.

use std::time::Duration;

use bytes::Bytes;

use super::{on, Job};
use crate::migrate::machine::Failure;
use crate::migrate::{ops, record, verify};

/// A round that saw at most this many changed keys is the last before the fence.
const FEW_CHANGES: usize = 64;

pub(super) async fn run(job: &mut Job) -> Result<(), Failure> {
    let s = job.sides.clone();
    let copied = job
        .copied
        .take()
        .ok_or_else(|| Failure::Task("catching up without a copy".into()))?;
    let r0 = copied.stats.revision;
    job.start_follower(copied, r0 + 1);
    job.pause().await;

    // First verification: everything, at a consistent pair of revisions.
    let (mut copied, pos) = job.stop_follower(None).await?;
    job.last_change = job.last_change.max(pos.last_change);
    copied.touched.clear();
    let snapshot = copied.keys.clone();
    let target_rev = ops::current_revision(&s.target).await.map_err(on("target"))?;
    job.start_follower(copied, pos.events_through + 1);
    let leases = s.link.leases.lock().clone();
    crate::failpoint!("migrate.verify.full")?;
    let full = verify::full(
        &s.source,
        &s.target,
        &s.range,
        &s.reserved,
        s.view.as_deref(),
        &snapshot,
        &leases,
        pos.events_through,
        target_rev,
    )
    .await?;
    drop(snapshot);
    job.m.update(|v| {
        v.verified_keys = full.keys;
        v.digest = Some(full.digest_hex());
    });
    tracing::info!(migration = %job.id, keys = full.keys, digest = %full.digest_hex(), at = pos.events_through, "verified the copy");

    // Rounds: wait for a small lag, verify what changed, until little changes.
    let max_lag = job.m.settings.max_lag;
    loop {
        let mut pos_rx = job.follower_position()?;
        loop {
            let p = *pos_rx.borrow_and_update();
            job.m.update(|v| v.lag_revisions = p.lag());
            job.m.metrics.catch_up_lag.set(p.lag());
            if p.lag() <= max_lag {
                break;
            }
            // Progress notifications move the lag too; wake at least every 200 ms.
            let _ = tokio::time::timeout(Duration::from_millis(200), pos_rx.changed()).await;
        }
        let (mut copied, pos) = job.stop_follower(None).await?;
        job.last_change = job.last_change.max(pos.last_change);
        let changed: Vec<Bytes> = copied.touched.drain().collect();
        let few = changed.len() <= FEW_CHANGES;
        let checked = job.shadow(&copied, &changed, pos.events_through).await?;
        job.m.update(|v| v.verified_keys += checked);
        if few {
            // The last round before the fence: write the bulk of the record, and check
            // the key counts at this consistent point.
            job.base_chunks = record::persist_keys(&s.target, job.prefix(), &copied.keys).await?;
            verify::counts(&s.source, &s.target, &s.range, &s.reserved, pos.events_through).await?;
            job.start_follower(copied, pos.events_through + 1);
            job.until_follower_is_live().await?;
            return Ok(());
        }
        job.start_follower(copied, pos.events_through + 1);
    }
}
