//! (Gateway) services that send each request to the context holding the keys it names:
//! root's, and those of a user whose permissions reach several tenants (or none). A KV
//! request goes to the context of the tenant whose keys it names; a watch stream to that of
//! the keys its first watch names, and every later watch on it must name keys of the same.
//! Which context holds which keys is the gateway's to say ([`KeyOwner`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Context, KvService};
use crate::codec::Answer;
use crate::error::ProxyError;
use crate::proto::etcdserverpb::*;
use crate::proto::kv_answers::k_v_server::KV;

/// Which context serves which keys.
pub trait KeyOwner: Send + Sync + 'static {
    /// The context serving every key of `ranges` (each `[key, range_end)` as etcd reads a
    /// request's range), or why no single one does.
    fn context_of(&self, ranges: &[(&[u8], &[u8])]) -> Result<Arc<Context>, ProxyError>;
}

/// Every key range a Txn names: its compares and its ops, nested ones included.
fn txn_ranges<'a>(txn: &'a TxnRequest, out: &mut Vec<(&'a [u8], &'a [u8])>) {
    for c in &txn.compare {
        out.push((&c.key, &c.range_end));
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => out.push((&r.key, &r.range_end)),
            Some(request_op::Request::RequestPut(p)) => out.push((&p.key, b"")),
            Some(request_op::Request::RequestDeleteRange(d)) => out.push((&d.key, &d.range_end)),
            Some(request_op::Request::RequestTxn(t)) => txn_ranges(t, out),
            None => {}
        }
    }
}

pub struct RoutedKv {
    owner: Arc<dyn KeyOwner>,
    /// The context this service stands for: what answers a compaction.
    own: Arc<Context>,
}

impl RoutedKv {
    pub fn new(own: Arc<Context>, owner: Arc<dyn KeyOwner>) -> RoutedKv {
        RoutedKv { owner, own }
    }

    fn kv_of(&self, ranges: &[(&[u8], &[u8])]) -> Result<KvService, Status> {
        self.owner
            .context_of(ranges)
            .map(KvService::new)
            .map_err(|e| e.to_status())
    }
}

#[tonic::async_trait]
impl KV for RoutedKv {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<Answer<RangeResponse>>, Status> {
        // The caller's permissions first: a refusal is etcd's answer wherever the keys live.
        super::permits::range(&r)?;
        let kv = self.kv_of(&[(&r.get_ref().key, &r.get_ref().range_end)])?;
        kv.range(r).await
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<Answer<PutResponse>>, Status> {
        super::permits::put(&r)?;
        let kv = self.kv_of(&[(&r.get_ref().key, b"")])?;
        kv.put(r).await
    }

    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<Response<Answer<DeleteRangeResponse>>, Status> {
        super::permits::delete_range(&r)?;
        let kv = self.kv_of(&[(&r.get_ref().key, &r.get_ref().range_end)])?;
        kv.delete_range(r).await
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<Answer<TxnResponse>>, Status> {
        super::permits::txn(&r)?;
        let kv = {
            let mut ranges = Vec::new();
            txn_ranges(r.get_ref(), &mut ranges);
            self.kv_of(&ranges)?
        };
        kv.txn(r).await
    }

    /// A compaction names no key: this context's own datastore answers it.
    async fn compact(&self, r: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        KvService::new(self.own.clone()).compact(r).await
    }
}
