//! Copying: the tenant's range at one pinned source revision, onto the target (copy.rs),
//! with the target's lease copies kept alive from the first one on.

use std::sync::Arc;

use tokio_util::task::AbortOnDropHandle;

use super::{on, Job};
use crate::migrate::copy::{self, CopyOptions};
use crate::migrate::machine::Failure;
use crate::migrate::marker;
use crate::migrate::ops;

pub(super) async fn run(job: &mut Job) -> Result<(), Failure> {
    job.pause().await;
    let s = job.sides.clone();
    let settings = &job.m.settings;
    let opts = CopyOptions {
        page_size: settings.page_size,
        concurrency: settings.concurrency,
        exclude: Some(s.reserved.clone()),
        view: s.view.clone(),
        link: Some(s.link.clone()),
        ..Default::default()
    };
    // From the first lease copied on, the target's copies live as long as the source's.
    job.mirror = Some(AbortOnDropHandle::new(ops::mirror_leases(
        s.source.clone(),
        s.link.clone(),
    )));
    let started = tokio::time::Instant::now();
    let m = Arc::clone(&job.m);
    let copied = copy::copy_range(&s.source, &s.target, &s.range, &opts, |st| {
        m.update(|v| {
            v.keys_copied = st.keys;
            v.bytes_copied = st.bytes;
            v.leases_copied = st.leases;
        });
    })
    .await?;
    m.metrics.keys_copied.inc_by(copied.stats.keys);
    m.metrics.bytes_copied.inc_by(copied.stats.bytes);
    s.link
        .leases
        .lock()
        .extend(copied.lease_ids.iter().map(|(a, b)| (*a, *b)));
    tracing::info!(migration = %job.id, keys = copied.stats.keys, bytes = copied.stats.bytes, leases = copied.stats.leases, revision = copied.stats.revision, seconds = started.elapsed().as_secs_f64(), "copy done");
    job.last_change = copied.stats.revision;
    job.copied = Some(copied);
    Ok(())
}

/// Forgets a copy the source compacted away under it: the target's range is emptied
/// (and claimed again) for a copy at a newer revision.
pub(super) async fn reset(job: &mut Job) -> Result<(), Failure> {
    job.follower = None;
    job.copied = None;
    job.mirror = None;
    let s = job.sides.clone();
    // The target's own fence key (a "moved" marker) stays, as in Preparing.
    let fence_key = job.m.router.fence().guard.fence_key().clone();
    ops::delete_around(&s.target, s.range.start.clone(), s.range.end.clone(), &fence_key)
        .await
        .map_err(on("target"))?;
    if let Some(claim) = &job.claim {
        ops::put(&s.target, marker::claim_key(job.prefix()), claim.to_bytes())
            .await
            .map_err(on("target"))?;
    }
    s.link.leases.lock().clear();
    Ok(())
}
