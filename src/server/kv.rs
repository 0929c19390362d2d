//! KV: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{client, Context};
use crate::codec::Answer;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::*;
use crate::proto::kv_answers::k_v_server::KV as Kv;
use crate::route::fence;
use crate::route::revision::Translation;
use crate::route::translate::{self, RangeFixup};
use crate::upstream::Retry;

pub struct KvService {
    ctx: Arc<Context>,
}

impl KvService {
    /// The answer to a compaction not made now: a count of the fence key at `revision`
    /// (0: now) gives the header, and for a revision compacted already or still in the
    /// future, etcd's own error.
    async fn answer_compaction(
        &self,
        request: Request<CompactionRequest>,
        revision: i64,
    ) -> Result<Response<CompactionResponse>, Status> {
        let probe = Request::from_parts(
            request.metadata().clone(),
            Default::default(),
            RangeRequest {
                key: self.ctx.router.fence().guard.fence_key().clone(),
                count_only: true,
                revision,
                ..Default::default()
            },
        );
        let pre = |t: &Translation, r: &mut RangeRequest| Ok(translate::range_request(t, r)?);
        let post = |t: &Translation, r: &mut RangeResponse, _: RangeFixup| translate::header(t, &mut r.header);
        let header = self
            .ctx
            .unary_translated(
                "KV",
                "Compact",
                Retry::Idempotent,
                probe,
                pre,
                post,
                |ch, req| async move { client!(KvClient, ch).range(req).await },
            )
            .await?
            .into_inner()
            .header;
        Ok(Response::new(CompactionResponse { header }))
    }
    pub fn new(ctx: Arc<Context>) -> Self {
        KvService { ctx }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<Answer<RangeResponse>>, Status> {
        super::permits::range(&request)?;
        let r = request.get_ref();
        let scope = self.ctx.router.scope();
        if !scope.in_tenant(&r.key, &r.range_end) {
            // Outside the tenant's prefix: as etcd answers a user without the permission.
            return Err(crate::error::ProxyError::Reserved.into());
        }
        let linearizable = !r.serializable;
        if scope.touches_reserved(&r.key, &r.range_end) {
            let started = std::time::Instant::now();
            let result = self.range_hiding_reserved(request, linearizable).await;
            return self
                .ctx
                .finish("KV", "Range", started, result)
                .map(|r| r.map(Answer::Message));
        }
        if linearizable {
            // Inside the read guard: never answered by a store the tenant left.
            return self.ctx.guarded_read("KV", "Range", request).await;
        }
        // Serializable: may be stale by definition; sent as it is.
        self.ctx
            .unary_translated(
                "KV",
                "Range",
                Retry::Idempotent,
                request,
                |t: &Translation, r: &mut RangeRequest| Ok(translate::range_request(t, r)?),
                |t: &Translation, resp: &mut RangeResponse, fix: RangeFixup| translate::range_response(t, resp, &fix),
                |ch, req| async move { client!(KvClient, ch).range(req).await },
            )
            .await
            .map(|r| r.map(Answer::Message))
    }

    // Writes travel inside the fence guard (route/fence.rs).
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<Answer<PutResponse>>, Status> {
        super::permits::put(&request)?;
        let p = request.get_ref();
        let lease = p.lease;
        // (Outside the prefix, the write is refused anyway: no lookup for it.)
        if lease != 0 && self.ctx.router.scope().in_tenant(&p.key, b"") {
            // A key on another tenant's lease would tie the two tenants' keys together.
            self.check_lease_owners(&request, &[lease], "Put").await?;
            super::lease::check_keys_writable(&self.ctx, super::permits::of(&request), lease).await?;
        }
        self.ctx.guarded_write("KV", "Put", request).await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<Answer<DeleteRangeResponse>>, Status> {
        super::permits::delete_range(&request)?;
        let d = request.get_ref();
        let scope = self.ctx.router.scope();
        // Over the tenant's whole prefix (or any range across cutover's keys): the parts
        // around them are deleted in one Txn, answered as one delete.
        if let Some(parts) = scope.split_delete(d) {
            let (metadata, extensions, _) = request.into_parts();
            let txn = Request::from_parts(metadata, extensions, parts);
            let resp = self.ctx.guarded_write("KV", "DeleteRange", txn).await?;
            let parts = resp
                .into_inner()
                .into_message()
                .map_err(crate::error::ProxyError::from)?;
            return Ok(Response::new(crate::route::scope::merge_deletes(parts).into()));
        }
        self.ctx.guarded_write("KV", "DeleteRange", request).await
    }

    async fn txn(&self, mut request: Request<TxnRequest>) -> Result<Response<Answer<TxnResponse>>, Status> {
        super::permits::txn(&request)?;
        let mut leases = Vec::new();
        super::lease::leases_of_txn(request.get_ref(), &mut leases);
        if !leases.is_empty() {
            leases.sort_unstable();
            leases.dedup();
            self.check_lease_owners(&request, &leases, "Txn").await?;
            for &lease in &leases {
                super::lease::check_keys_writable(&self.ctx, super::permits::of(&request), lease).await?;
            }
        }
        // A delete or compare over the tenant's whole prefix works as on etcd, on the
        // tenant's keys alone: the Txn is rewritten around cutover's keys, and etcd's
        // answer turned back into the one the client asked for (see `Scope::rewrite_txn`).
        let scope = self.ctx.router.scope();
        if scope.txn_needs_rewrite(request.get_ref()) {
            let asked = request.get_ref().clone();
            *request.get_mut() = scope.rewrite_txn(&asked);
            let (metadata, answer, extensions) = self.txn_as_sent(request).await?.into_parts();
            let answer = answer.into_message().map_err(crate::error::ProxyError::from)?;
            let answer = scope
                .answer_rewritten(&asked, answer)
                .map_err(crate::error::ProxyError::from)?;
            return Ok(Response::from_parts(metadata, answer.into(), extensions));
        }
        self.txn_as_sent(request).await
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        if !self.ctx.access.is_operator(&request) {
            // A tenant's compaction would drop every tenant's history at once: it is
            // answered as etcd would (a revision compacted already or not yet written is
            // refused the same way) and has no effect. The datastore compacts by its own
            // policy (etcd's --auto-compaction-*), which every tenant shares.
            let revision = request.get_ref().revision;
            return self.answer_compaction(request, revision).await;
        }
        if let Some(link) = self.ctx.router.link() {
            // A compaction now could remove the revision the migration copies or follows
            // from: remember it, answer as etcd would, and compact when the migration ends.
            link.defer_compaction(request.get_ref().revision);
            return self.answer_compaction(request, 0).await;
        }
        self.ctx
            .unary_translated(
                "KV",
                "Compact",
                Retry::IfNotSent,
                request,
                |t, c| {
                    translate::compact_request(t, c);
                    Ok(())
                },
                |t, r: &mut CompactionResponse, ()| translate::header(t, &mut r.header),
                |ch, req| async move { client!(KvClient, ch).compact(req).await },
            )
            .await
    }
}

impl KvService {
    /// Refuses a write that would put a key on a lease that is not the tenant's.
    async fn check_lease_owners<T>(
        &self,
        request: &Request<T>,
        leases: &[i64],
        method: &'static str,
    ) -> Result<(), Status> {
        let operator = self.ctx.access.is_operator(request);
        for &lease in leases {
            super::lease::check_owner(
                &self.ctx,
                operator,
                lease,
                super::lease::Lookup::Remembered,
                "KV",
                method,
            )
            .await?;
        }
        Ok(())
    }

    /// A Txn, as a write or, when nothing in it writes, as a read.
    async fn txn_as_sent(&self, request: Request<TxnRequest>) -> Result<Response<Answer<TxnResponse>>, Status> {
        let t = request.get_ref();
        if !fence::is_read_only(t) {
            return self.ctx.guarded_write("KV", "Txn", request).await;
        }
        // A Txn that only reads stays a read for etcd (its read path, no raft entry).
        if !self.ctx.router.scope().txn_allowed(t) {
            return Err(crate::error::ProxyError::Reserved.into());
        }
        if fence::is_serializable(t) {
            return self.ctx.serializable_read("KV", "Txn", request).await;
        }
        self.ctx.guarded_read("KV", "Txn", request).await
    }

    /// A Range over cutover's reserved keys: their count (read inside the read guard when
    /// the Range is linearizable) gives the revision and the room to leave them out; the
    /// range itself is then read at that revision.
    async fn range_hiding_reserved(
        &self,
        request: Request<RangeRequest>,
        linearizable: bool,
    ) -> Result<Response<RangeResponse>, crate::error::ProxyError> {
        let scope = self.ctx.router.scope();
        let (metadata, extensions, asked) = request.into_parts();
        let (key, range_end) = scope.reserved_part(&asked.key, &asked.range_end);
        let count_req = RangeRequest {
            key,
            range_end,
            count_only: true,
            limit: 0,
            sort_order: 0,
            sort_target: 0,
            ..asked.clone()
        };
        let hidden = self
            .ctx
            .forward_read(
                Request::from_parts(metadata.clone(), extensions.clone(), count_req),
                linearizable,
            )
            .await?
            .into_inner()
            .into_message()?;
        let at = hidden.header.map_or(0, |h| h.revision);
        let main = RangeRequest {
            revision: if asked.revision > 0 { asked.revision } else { at },
            limit: if asked.limit > 0 { asked.limit + hidden.count } else { 0 },
            ..asked.clone()
        };
        let mut resp = self
            .ctx
            .forward_translated(
                Retry::Idempotent,
                Request::from_parts(metadata, extensions, main),
                |t: &Translation, r: &mut RangeRequest| Ok(translate::range_request(t, r)?),
                |t: &Translation, resp: &mut RangeResponse, fix: RangeFixup| translate::range_response(t, resp, &fix),
                |ch, req| async move { client!(KvClient, ch).range(req).await },
            )
            .await?
            .into_inner();
        resp.kvs.retain(|kv| !scope.is_reserved(&kv.key));
        resp.count -= hidden.count;
        if asked.limit > 0 && resp.kvs.len() as i64 > asked.limit {
            resp.kvs.truncate(asked.limit as usize);
            resp.more = true;
        }
        Ok(Response::new(resp))
    }
}
