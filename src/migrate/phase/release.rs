//! Release, after any failure: stop what the migration runs, revoke its lease (the lock
//! and the fence go with it, so no commit of it can be applied from then on), and read
//! the source's fence key once more. If it shows this migration's "moved" marker, the
//! commit happened after all and the migration rolls forward. Otherwise the partial copy
//! is deleted from the target, in one Txn that checks the target still holds this
//! migration's claim; if the source cannot be read, nothing is deleted (the claim lets a
//! retry clear it).

use bytes::Bytes;

use super::{fence_marker, Job};
use crate::migrate::machine::Failure;
use crate::migrate::marker::{self, Marker};
use crate::migrate::{ops, Outcome, Phase};
use crate::proto::etcdserverpb::{request_op, DeleteRangeRequest, RequestOp, TxnRequest};

pub(super) async fn run(job: &mut Job, why: &Failure) -> bool {
    tracing::error!(migration = %job.id, error = %why, "migration failed; releasing it");
    let s = job.sides.clone();
    job.follower = None;
    job.mirror = None;
    job.held_leases = None;
    if let Some(f) = &job.fence {
        let secs = f.at.elapsed().as_secs_f64();
        job.fence_ms = Some(secs * 1000.0);
        job.m.metrics.fence_seconds.observe(secs);
    }

    // 1. Without the lease, the fence is gone (or goes when the lease expires, if the
    // source cannot be reached now): a commit Txn of ours can no longer be applied.
    if let Some(lease) = job.lease.take() {
        if let Err(e) = ops::revoke(&s.source, lease.id).await {
            tracing::warn!(migration = %job.id, error = %e, "could not revoke the migration's lease; the fence lifts when it expires");
        }
    }
    let _ = crate::failpoint!("migrate.release.before_read");

    // 2. Whether the commit happened after all.
    let rolled_forward = match fence_marker(job).await {
        Ok(Some(Marker::Moved { migration, .. })) if migration == job.id => true,
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(migration = %job.id, error = %e, "cannot read the source's fence key: the partial copy stays on the target, claimed by this migration, for a retry to clear");
            job.claim = None;
            end_view(job, why).await;
            let _ = s.link.fenced.send(false);
            return false;
        }
    };
    let _ = s.link.fenced.send(false);
    if rolled_forward {
        tracing::warn!(migration = %job.id, "the source shows this migration's commit marker: it committed after all; rolling forward");
        let switched = match job.translation.clone() {
            Some(t) => job.m.router.switch_to(&s.to, Some(t)).map_err(|e| e.to_string()),
            None => marker::follow_markers(&job.m.router).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = switched {
            tracing::error!(migration = %job.id, error = %e, "cannot serve from the target yet; requests are refused until it can be used");
        }
        if let Some(rev) = s.link.deferred_compaction() {
            let _ = ops::compact_client_revision(&job.m.router, rev).await;
        }
        return true;
    }

    // 3. The end, published before the delete (which can take a while), so that other
    // replicas do not take the lock's disappearance for a lost leader.
    end_view(job, why).await;
    if let Some(rev) = s.link.deferred_compaction() {
        let _ = ops::compact_client_revision(&job.m.router, rev).await;
    }

    // 4. Only what this migration wrote: the range was empty (or emptied) before.
    let _ = crate::failpoint!("migrate.release.before_delete");
    let Some(claim) = job.claim.take() else {
        return false;
    };
    let delete = TxnRequest {
        compare: vec![ops::value_is(&marker::claim_key(job.prefix()), claim.to_bytes())],
        // Everything but the target's fence key (its "moved" marker, if the tenant lived
        // there before, must keep sending stale proxies on).
        success: around(&s.range.start, &s.range.end, job.m.router.fence().guard.fence_key()),
        failure: vec![],
    };
    match ops::txn(&s.target, delete).await {
        Ok(r) if r.succeeded => {}
        Ok(_) => {
            tracing::warn!(migration = %job.id, "the target's claim is no longer this migration's; its partial copy is left to the claim's owner")
        }
        Err(e) => {
            tracing::warn!(migration = %job.id, error = %e, "could not clear the partial copy on the target; it stays claimed, and a retry clears it")
        }
    }
    false
}

/// DeleteRange ops for [start, end) without the key `keep` (which lies inside it).
fn around(start: &Bytes, end: &Bytes, keep: &Bytes) -> Vec<RequestOp> {
    let mut after = keep.to_vec();
    after.push(0);
    [(start.clone(), keep.clone()), (Bytes::from(after), end.clone())]
        .into_iter()
        .filter(|(a, b)| a < b || b[..] == b"\0"[..])
        .map(|(key, range_end)| RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key,
                range_end,
                prev_kv: false,
            })),
        })
        .collect()
}

/// Shows and publishes the failed end (the driver completes it when the release is done).
async fn end_view(job: &Job, why: &Failure) {
    let outcome = match why {
        Failure::Aborted => Outcome::Aborted,
        _ => Outcome::Failed,
    };
    job.m.update(|v| {
        v.error = Some(why.to_string());
        v.phase = Phase::Failed;
        v.outcome = outcome;
        v.fence_ms = job.fence_ms.or(v.fence_ms);
    });
    if let Err(e) = job.m.publish_once(&job.sides.source).await {
        tracing::debug!(error = %e, "could not publish the migration's end");
    }
}
