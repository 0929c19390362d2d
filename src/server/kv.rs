//! KV: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

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
    forward!(put, PutRequest, PutResponse, "KV", "Put", Retry::IfNotSent, KvClient);
    forward!(
        delete_range,
        DeleteRangeRequest,
        DeleteRangeResponse,
        "KV",
        "DeleteRange",
        Retry::IfNotSent,
        KvClient
    );
    forward!(txn, TxnRequest, TxnResponse, "KV", "Txn", Retry::IfNotSent, KvClient);
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
