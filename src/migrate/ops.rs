//! The requests the migrator makes itself, with cutover's own credentials.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::task::AbortOnDropHandle;

use super::copy;
use crate::error::ProxyError;
use crate::keys::KeyRange;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseKeepAliveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use crate::route::{MigrationLink, Router};
use crate::upstream::client;
use crate::upstream::{own_request, Datastore, Retry};

pub async fn txn(ds: &Datastore, req: TxnRequest) -> Result<TxnResponse, ProxyError> {
    copy::txn(ds, req).await
}

pub async fn range(ds: &Datastore, req: RangeRequest) -> Result<crate::proto::etcdserverpb::RangeResponse, ProxyError> {
    ds.unary(Retry::Idempotent, |ch, token| {
        let r = own_request(req.clone(), token);
        async move { client!(KvClient, ch).range(r).await }
    })
    .await
    .map(|r| r.into_inner())
}

/// A response header of `ds` as of now (from a count of one key).
async fn header(ds: &Datastore) -> Result<crate::proto::etcdserverpb::ResponseHeader, ProxyError> {
    let r = range(
        ds,
        RangeRequest {
            key: Bytes::from_static(b"\0"),
            count_only: true,
            ..Default::default()
        },
    )
    .await?;
    Ok(r.header.unwrap_or_default())
}

pub async fn current_revision(ds: &Datastore) -> Result<i64, ProxyError> {
    Ok(header(ds).await?.revision)
}

/// The ID of the etcd cluster behind `ds`, from a response header: two datastore names
/// for one cluster show the same ID.
pub async fn cluster_id(ds: &Datastore) -> Result<u64, ProxyError> {
    Ok(header(ds).await?.cluster_id)
}

/// Whether `a` and `b` are one etcd cluster under two names. Different cluster IDs say
/// no at once. Equal ones do not say yes: etcd derives the ID from the initial peer URLs
/// and cluster token, which two separate clusters started alike (or restored from one
/// snapshot with the same flags) share. So a probe key is written under cutover's
/// reserved prefix on `a`, looked for on `b`, and deleted.
pub async fn same_cluster(a: &Datastore, b: &Datastore, reserved: &Bytes) -> Result<bool, ProxyError> {
    if cluster_id(a).await? != cluster_id(b).await? {
        return Ok(false);
    }
    use std::hash::{BuildHasher, Hasher};
    let nonce = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let mut key = reserved.to_vec();
    key.extend_from_slice(format!("probe/{nonce:016x}").as_bytes());
    let key = Bytes::from(key);
    put(a, key.clone(), Bytes::from_static(b"same-cluster probe")).await?;
    let seen = crate::upstream::calls::value(b, key.clone()).await;
    let cleared = delete(a, key, Bytes::new()).await;
    let seen = seen?.is_some();
    cleared?;
    Ok(seen)
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
    // cutover's own keys as of the same revision: a header carries the current one, and
    // a reserved key written since (the status, a tick) would make the count one short.
    let rev = if revision > 0 {
        revision
    } else {
        all.header.map_or(0, |h| h.revision)
    };
    let own = range(
        ds,
        RangeRequest {
            key: reserved.clone(),
            range_end: crate::keys::prefix_end(reserved),
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

/// Deletes [key, range_end) except the key `keep`, in one Txn; returns the keys deleted.
pub async fn delete_around(ds: &Datastore, key: Bytes, range_end: Bytes, keep: &Bytes) -> Result<i64, ProxyError> {
    let inside = keep[..] >= key[..] && (range_end[..] == b"\0"[..] || keep[..] < range_end[..]);
    if !inside {
        return delete(ds, key, range_end).await;
    }
    let mut after = keep.to_vec();
    after.push(0);
    let del = |key: Bytes, range_end: Bytes| RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key,
            range_end,
            prev_kv: false,
        })),
    };
    let mut success = Vec::new();
    if key[..] < keep[..] {
        success.push(del(key, keep.clone()));
    }
    success.push(del(Bytes::from(after), range_end));
    let resp = txn(
        ds,
        TxnRequest {
            success,
            ..Default::default()
        },
    )
    .await?;
    Ok(resp
        .responses
        .into_iter()
        .filter_map(|r| match r.response {
            Some(crate::proto::etcdserverpb::response_op::Response::ResponseDeleteRange(d)) => Some(d.deleted),
            _ => None,
        })
        .sum())
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

pub use crate::upstream::calls::{grant, revoke};

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
/// Returns the task (it stops when dropped: at the commit or the release) once the leases
/// that had already expired are revoked, so that their deletes come before the next write.
pub async fn hold_leases(ds: Arc<Datastore>, ids: Vec<i64>) -> Result<AbortOnDropHandle<()>, ProxyError> {
    let gone = refresh(&ds, &ids).await?;
    // etcd's smallest lease TTL is above a second: refreshing twice a second holds all.
    let holder = {
        let ds = ds.clone();
        let ids: Vec<i64> = ids.iter().copied().filter(|id| !gone.contains(id)).collect();
        AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Half the interval to answer: one stall still leaves a refresh well within
                // etcd's smallest TTL.
                match tokio::time::timeout(Duration::from_millis(250), refresh(&ds, &ids)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not hold the tenant's leases on the fenced source"),
                    Err(_) => {
                        tracing::warn!("a refresh of the tenant's leases on the fenced source did not answer in time")
                    }
                }
            }
        }))
    };
    // An expired lease stays listed until etcd's revoke (and its deletes) is applied.
    while !gone.is_empty() {
        match source_leases(&ds).await {
            Ok(listed) if gone.iter().all(|id| !listed.contains(id)) => break,
            Ok(_) => {}
            // Dropping the holder stops it.
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(holder)
}

/// The migration's lease kept alive, until this is dropped.
pub struct KeptLease {
    /// Turns true, once and for good, when the source says the lease is gone: the lock
    /// and any fence bound to it are gone with it.
    pub lost: tokio::sync::watch::Receiver<bool>,
    _task: AbortOnDropHandle<()>,
}

/// Keeps the migration's lease alive, refreshing it three times per TTL. A refresh gets
/// half the interval to answer; one that fails or does not answer is tried again soon,
/// so that one stalled stream does not cost the lease. The lease counts as lost when the
/// source says it is gone, and also when no refresh has been answered for a whole TTL
/// (the source has dropped it by then, or is about to: as etcd's own clients judge).
pub fn keep_alive(ds: Arc<Datastore>, id: i64, ttl: i64) -> KeptLease {
    use tokio::time::Instant;
    let (lost, watch_lost) = tokio::sync::watch::channel(false);
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        let ttl = Duration::from_secs(ttl.max(1) as u64);
        let every = ttl / 3;
        // Granted just before this starts.
        let mut renewed = Instant::now();
        let mut next = renewed + every;
        loop {
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            let answer = match crate::failpoint!("migrate.lease.refresh") {
                Ok(()) => tokio::time::timeout(every / 2, refresh(&ds, &[id]))
                    .await
                    .map(|r| r.map_err(|e| e.to_string())),
                Err(e) => Ok(Err(e.to_string())),
            };
            match answer {
                Ok(Ok(gone)) if gone.contains(&id) => {
                    tracing::error!(
                        lease = id,
                        "the migration's lease is gone from the source; its lock and fence went with it"
                    );
                    let _ = lost.send(true);
                    return;
                }
                Ok(Ok(_)) => {
                    renewed = sent;
                    next = sent + every;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not refresh the migration's lease; trying again");
                    next = Instant::now() + every / 4;
                }
                Err(_) => {
                    tracing::warn!(waited = ?every / 2, "a refresh of the migration's lease did not answer in time; trying again");
                    next = Instant::now() + every / 4;
                }
            }
            if renewed.elapsed() >= ttl {
                tracing::error!(lease = id, ttl = ?ttl, "no refresh of the migration's lease was answered for a whole TTL; taking it as lost");
                let _ = lost.send(true);
                return;
            }
        }
    }));
    KeptLease {
        lost: watch_lost,
        _task: task,
    }
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
            match tokio::time::timeout(Duration::from_secs(1), refresh(&link.target, &alive)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "could not refresh the target's leases"),
                Err(_) => tracing::debug!("a refresh of the target's leases did not answer in time"),
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

/// A compare: `key` holds exactly `value`.
pub fn value_is(key: &Bytes, value: Bytes) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(compare::TargetUnion::Value(value)),
    }
}
