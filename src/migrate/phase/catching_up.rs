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
use crate::route::keymap::KeyMap;

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

    // Rounds. Each writes a tick (a reserved key, inside the followed range, never
    // copied) and drains the catch-up to it: its event proves that everything before it
    // was received and applied (a progress notification proves nothing on etcd 3.4,
    // which may send one ahead of events still in flight). Then the keys changed in the
    // round are verified. The last round is one that was short: few changed keys, and
    // the catch-up was at most `maxLag` revisions behind the tick when it was written,
    // or echoed it at once.
    let max_lag = job.m.settings.max_lag;
    loop {
        let behind_from = job.follower_position()?.borrow().events_through;
        let tick = job.reserved_write("tick").await?;
        let written = tokio::time::Instant::now();
        let behind = tick - behind_from - 1;
        job.m.update(|v| v.lag_revisions = behind.max(0));
        job.m.metrics.catch_up_lag.set(behind.max(0));
        // Stopped at the tick or past it (a response is applied whole): everything up to
        // `through` is on the target, nothing after it.
        let (mut copied, pos) = job.stop_follower(Some(tick)).await?;
        let through = pos.events_through;
        let echo = written.elapsed();
        job.last_change = job.last_change.max(pos.last_change);
        let changed: Vec<Bytes> = copied.touched.drain().collect();
        let few = changed.len() <= FEW_CHANGES;
        let checked = job.shadow(&copied, &changed, through).await?;
        job.m.update(|v| v.verified_keys += checked);
        tracing::debug!(migration = %job.id, tick, through, behind, echo_ms = echo.as_secs_f64() * 1000.0, changed = changed.len(), "catch-up round");
        if few && (behind <= max_lag || echo <= PROMPT_ECHO) {
            // The last round before the fence: write the bulk of the record, and check
            // the key counts at this consistent point.
            // Packing a large K takes a while: off the runtime's threads.
            let working = std::mem::take(&mut copied.keys);
            let (working, packed) = tokio::task::spawn_blocking(move || {
                let packed = KeyMap::from_map(&working);
                (working, packed)
            })
            .await
            .map_err(|e| Failure::Task(format!("packing the key map: {e}")))?;
            copied.keys = working;
            job.base_chunks = record::persist_keys(&s.target, job.prefix(), &packed).await?;
            job.base_keys = Some(packed);
            verify::counts(&s.source, &s.target, &s.range, &s.reserved, through).await?;
            job.start_follower(copied, through + 1);
            job.until_follower_is_live().await?;
            job.m.update(|v| v.lag_revisions = 0);
            job.m.metrics.catch_up_lag.set(0);
            return Ok(());
        }
        job.start_follower(copied, through + 1);
    }
}

/// A tick the catch-up received this soon after it was written was not behind.
const PROMPT_ECHO: Duration = Duration::from_millis(20);
