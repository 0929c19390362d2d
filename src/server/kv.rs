//! KV: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{forward, Context};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::*;
use crate::upstream::Retry;

pub struct KvService {
    ctx: Arc<Context>,
}

impl KvService {
    pub fn new(ctx: Arc<Context>) -> Self {
        KvService { ctx }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    forward!(
        range,
        RangeRequest,
        RangeResponse,
        "KV",
        "Range",
        Retry::Idempotent,
        KvClient
    );
    // Writes travel inside the fence guard (route/fence.rs).
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.ctx.guarded_write("KV", "Put", request).await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.ctx.guarded_write("KV", "DeleteRange", request).await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.ctx.guarded_write("KV", "Txn", request).await
    }

    forward!(
        compact,
        CompactionRequest,
        CompactionResponse,
        "KV",
        "Compact",
        Retry::IfNotSent,
        KvClient
    );
}
