//! The Copying phase: the tenant's key range, read from the source at one pinned revision
//! in pages, written to the target in batched, concurrent Txns, leases first.
//!
//! Memory is bounded by the page size and the number of pages in flight, not by the size
//! of the data; what grows with the key count is the key map K (key -> revisions), which
//! the revision translation needs anyway.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::error::ProxyError;
use crate::keys::{prefix_end, KeyRange};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{
    request_op, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest,
};
use crate::proto::mvccpb::KeyValue;
use crate::route::revision::{CopiedKey, Translation};
use crate::upstream::client;
use crate::upstream::{own_request, Datastore, Retry};

/// etcd's default limit on operations in one Txn.
pub const MAX_TXN_OPS: usize = 128;

#[derive(Clone)]
pub struct CopyOptions {
    /// Keys read from the source per Range.
    pub page_size: i64,
    /// Puts per Txn on the target (at most etcd's 128).
    pub batch_ops: usize,
    /// Txns in flight on the target at once.
    pub concurrency: usize,
    /// Delete whatever the target holds in the range first, instead of refusing.
    pub overwrite: bool,
    /// Keys under this prefix are left out (cutover's own reserved keys).
    pub exclude: Option<Bytes>,
    /// The source's own translation, when it was itself the target of an earlier
    /// migration: K records the revisions clients see, so migrations compose.
    pub view: Option<Arc<Translation>>,
    /// The running migration: each lease copied joins the ones it keeps alive on the
    /// target, so a copy that outlasts a lease's TTL does not lose that lease's keys.
    pub link: Option<Arc<crate::route::MigrationLink>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            page_size: 1000,
            batch_ops: MAX_TXN_OPS,
            concurrency: 4,
            overwrite: false,
            exclude: None,
            view: None,
            link: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the target already holds {count} keys in the tenant range (use --overwrite to clear them)")]
    TargetNotEmpty { count: i64 },
    #[error("{side}: {source}")]
    Datastore {
        side: &'static str,
        #[source]
        source: ProxyError,
    },
    #[error("lease {id:x}: the target refused it: {message}")]
    Lease { id: i64, message: String },
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

/// Progress and result of a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// The pinned source revision the copy reproduces.
    pub revision: i64,
    pub keys: u64,
    pub bytes: u64,
    pub leases: u64,
}

/// What the copy produced: its numbers, the key map K, and lease IDs that had to change.
#[derive(Debug, Default)]
pub struct CopyOutcome {
    pub stats: CopyStats,
    pub keys: HashMap<Bytes, CopiedKey>,
    /// Keys the catch-up changed since this set was last taken (for verification).
    pub touched: std::collections::HashSet<Bytes>,
    /// Source lease ID -> target lease ID for every lease copied (different only where
    /// the target already used the source's ID).
    pub lease_ids: HashMap<i64, i64>,
}

fn on(side: &'static str) -> impl Fn(ProxyError) -> CopyError {
    move |source| CopyError::Datastore { side, source }
}

async fn range(ds: &Datastore, req: RangeRequest) -> Result<RangeResponse, ProxyError> {
    ds.unary(Retry::Idempotent, |ch, token| {
        let r = own_request(req.clone(), token);
        async move { client!(KvClient, ch).range(r).await }
    })
    .await
    .map(|r| r.into_inner())
}

pub(super) async fn txn(
    ds: &Datastore,
    req: TxnRequest,
) -> Result<crate::proto::etcdserverpb::TxnResponse, ProxyError> {
    ds.unary(Retry::IfNotSent, |ch, token| {
        let r = own_request(req.clone(), token);
        async move { client!(KvClient, ch).txn(r).await }
    })
    .await
    .map(|r| r.into_inner())
}

/// Copies `range` from `source` to `target` as of one source revision. `progress` is
/// called after every batch written.
pub async fn copy_range(
    source: &Arc<Datastore>,
    target: &Arc<Datastore>,
    range_: &KeyRange,
    opts: &CopyOptions,
    progress: impl Fn(&CopyStats),
) -> Result<CopyOutcome, CopyError> {
    let batch_ops = opts.batch_ops.clamp(1, MAX_TXN_OPS);
    let existing = range(
        target,
        RangeRequest {
            key: range_.start.clone(),
            range_end: range_.end.clone(),
            count_only: true,
            ..Default::default()
        },
    )
    .await
    .map_err(on("target"))?;
    // cutover's own keys (the exclude prefix) do not make the target "not empty".
    let mut existing_count = existing.count;
    if let Some(skip) = &opts.exclude {
        let own = range(
            target,
            RangeRequest {
                key: skip.clone(),
                range_end: prefix_end(skip),
                count_only: true,
                revision: existing.header.map_or(0, |h| h.revision),
                ..Default::default()
            },
        )
        .await
        .map_err(on("target"))?;
        existing_count -= own.count;
    }
    if existing_count > 0 {
        if !opts.overwrite {
            return Err(CopyError::TargetNotEmpty { count: existing_count });
        }
        let delete = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    crate::proto::etcdserverpb::DeleteRangeRequest {
                        key: range_.start.clone(),
                        range_end: range_.end.clone(),
                        prev_kv: false,
                    },
                )),
            }],
            ..Default::default()
        };
        txn(target, delete).await.map_err(on("target"))?;
    }

    // Pin the revision: the first page is read at the source's current revision and
    // every later page at that same one.
    let (pages_tx, mut pages_rx) = mpsc::channel::<Result<Vec<KeyValue>, CopyError>>(2);
    let reader = {
        let source = Arc::clone(source);
        let range_ = range_.clone();
        let page_size = opts.page_size.max(1);
        tokio::spawn(async move {
            let mut start = range_.start.clone();
            let mut pinned = 0i64;
            loop {
                let page = range(
                    &source,
                    RangeRequest {
                        key: start.clone(),
                        range_end: range_.end.clone(),
                        limit: page_size,
                        revision: pinned,
                        ..Default::default()
                    },
                )
                .await
                .map_err(on("source"));
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = pages_tx.send(Err(e)).await;
                        return 0;
                    }
                };
                if pinned == 0 {
                    pinned = page.header.map_or(0, |h| h.revision);
                }
                let more = page.more;
                if let Some(last) = page.kvs.last() {
                    let mut next = last.key.to_vec();
                    next.push(0);
                    start = Bytes::from(next);
                }
                if pages_tx.send(Ok(page.kvs)).await.is_err() || !more {
                    return pinned;
                }
            }
        })
    };

    let mut out = CopyOutcome::default();
    let mut leases_done: HashMap<i64, i64> = HashMap::new();
    while let Some(page) = pages_rx.recv().await {
        let mut page = page?;
        crate::failpoint!("migrate.copy.page")?;
        if let Some(skip) = &opts.exclude {
            page.retain(|kv| !kv.key.starts_with(skip));
        }
        // Leases first, with the source's ID and granted TTL.
        for kv in &page {
            if kv.lease != 0 && !leases_done.contains_key(&kv.lease) {
                let id = copy_lease(source, target, kv.lease).await?;
                out.lease_ids.insert(kv.lease, id);
                leases_done.insert(kv.lease, id);
                if let Some(link) = &opts.link {
                    link.leases.lock().insert(kv.lease, id);
                }
                out.stats.leases += 1;
            }
        }
        for kv in &mut page {
            if kv.lease != 0 {
                kv.lease = leases_done.get(&kv.lease).copied().unwrap_or(0);
            }
        }
        let batches: Vec<Vec<KeyValue>> = page.chunks(batch_ops).map(<[KeyValue]>::to_vec).collect();
        let written: Vec<(i64, Vec<KeyValue>)> = futures::stream::iter(batches.into_iter().map(|batch| async move {
            let req = TxnRequest {
                success: batch
                    .iter()
                    .map(|kv| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: kv.key.clone(),
                            value: kv.value.clone(),
                            lease: kv.lease,
                            ..Default::default()
                        })),
                    })
                    .collect(),
                ..Default::default()
            };
            let resp = txn(target, req).await.map_err(on("target"))?;
            Ok::<_, CopyError>((resp.header.map_or(0, |h| h.revision), batch))
        }))
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
        for (rev, batch) in written {
            for kv in batch {
                out.stats.keys += 1;
                out.stats.bytes += (kv.key.len() + kv.value.len()) as u64;
                out.keys.insert(
                    kv.key.clone(),
                    first_write(rev, &in_client_space(opts.view.as_deref(), &kv)),
                );
            }
            progress(&out.stats);
        }
    }
    out.stats.revision = reader.await.unwrap_or(0);
    Ok(out)
}

/// A source key-value with the revisions clients see (the source's own translation
/// applied, if it has one).
pub(super) fn in_client_space(view: Option<&Translation>, kv: &KeyValue) -> KeyValue {
    let mut kv = kv.clone();
    if let Some(view) = view {
        crate::route::translate::kv(view, &mut kv);
    }
    kv
}

/// K's entry for a key the copier has just created on the target at `rev`.
pub(super) fn first_write(rev: i64, source: &KeyValue) -> CopiedKey {
    CopiedKey {
        target_create: rev,
        target_mod: rev,
        target_version: 1,
        source_create: source.create_revision,
        source_mod: source.mod_revision,
        source_version: source.version,
    }
}

/// Grants the source's lease on the target: the same ID when it is free there, a new one
/// otherwise. Returns the target's ID.
pub(super) async fn copy_lease(source: &Datastore, target: &Datastore, id: i64) -> Result<i64, CopyError> {
    let ttl = source
        .unary(Retry::Idempotent, |ch, token| {
            let r = own_request(LeaseTimeToLiveRequest { id, keys: false }, token);
            async move { client!(LeaseClient, ch).lease_time_to_live(r).await }
        })
        .await
        .map_err(on("source"))?
        .into_inner();
    // An expired lease reports TTL -1; its keys will be deleted on the source, and
    // the catch-up carries that over. Grant it briefly so the keys can be attached.
    let granted = if ttl.granted_ttl > 0 { ttl.granted_ttl } else { 1 };
    let grant = |id: i64| async move {
        target
            .unary(Retry::IfNotSent, |ch, token| {
                let r = own_request(LeaseGrantRequest { ttl: granted, id }, token);
                async move { client!(LeaseClient, ch).lease_grant(r).await }
            })
            .await
            .map(|r| r.into_inner())
    };
    let copied = match grant(id).await {
        Ok(r) => Ok(r.id),
        Err(ProxyError::Etcd(s)) if crate::error::is_lease_exists(&s) => {
            grant(0).await.map(|r| r.id).map_err(on("target"))
        }
        Err(ProxyError::Etcd(s)) => Err(CopyError::Lease {
            id,
            message: s.message().to_string(),
        }),
        Err(e) => Err(on("target")(e)),
    };
    if let Ok(to) = copied {
        tracing::debug!(
            lease = format!("{id:x}"),
            on_target = format!("{to:x}"),
            ttl = granted,
            remaining = ttl.ttl,
            "copied a lease"
        );
    }
    copied
}
