//! Root's KV in gateway mode: Kamaji's controller (root) reaches tenants' keys too, above
//! all to delete them when a TenantControlPlane goes. Each of its KV requests is sent to
//! the tenant whose prefix holds every key it names, on that tenant's home, through the
//! tenant's own context; a request that names no tenant's keys goes to the placement
//! datastore. One that names keys of several (or of a tenant and of none) is refused: they
//! may live on different clusters, where no single Txn reaches them all.

use std::sync::Weak;

use tonic::{Request, Response, Status};

use super::catalog::{CatalogStore, RangeOwner};
use crate::codec::Answer;
use crate::error::ProxyError;
use crate::proto::etcdserverpb::*;
use crate::proto::kv_answers::k_v_server::KV;
use crate::server::{Context, KvService};

/// What root's KV needs of the gateway: the catalog, and a tenant's context.
pub trait Tenants: Send + Sync {
    fn catalog(&self) -> &std::sync::Arc<CatalogStore>;
    fn context_of(&self, tenant: &str) -> Result<std::sync::Arc<Context>, ProxyError>;
}

pub struct RootKv {
    pub(super) gateway: Weak<dyn Tenants>,
    /// Root's own context's KV (the catalog's datastore, every key).
    pub(super) own: KvService,
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

impl RootKv {
    /// The KV of the tenant whose keys `ranges` name (`None`: root's own).
    fn owner(&self, ranges: &[(&[u8], &[u8])]) -> Result<Option<KvService>, Status> {
        let gateway = self
            .gateway
            .upgrade()
            .ok_or_else(|| ProxyError::Catalog("the gateway is shutting down".into()).to_status())?;
        let snapshot = gateway.catalog().snapshot();
        let mut owners = ranges.iter().map(|(k, e)| snapshot.0.owner_of_range(k, e));
        let first = owners.next().unwrap_or(RangeOwner::NoTenant);
        if first == RangeOwner::Several || owners.any(|o| o != first) {
            return Err(ProxyError::Unsupported(
                "this request names keys of several tenants (or of a tenant and of none), which may live on \
                 different datastores of the pool; send one request per tenant",
            )
            .to_status());
        }
        match first {
            RangeOwner::NoTenant | RangeOwner::Several => Ok(None),
            RangeOwner::Tenant(name) => {
                let ctx = gateway.context_of(name).map_err(|e| e.to_status())?;
                Ok(Some(KvService::new(ctx)))
            }
        }
    }
}

#[tonic::async_trait]
impl KV for RootKv {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<Answer<RangeResponse>>, Status> {
        match self.owner(&[(&r.get_ref().key, &r.get_ref().range_end)])? {
            Some(kv) => kv.range(r).await,
            None => self.own.range(r).await,
        }
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<Answer<PutResponse>>, Status> {
        match self.owner(&[(&r.get_ref().key, b"")])? {
            Some(kv) => kv.put(r).await,
            None => self.own.put(r).await,
        }
    }

    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<Response<Answer<DeleteRangeResponse>>, Status> {
        match self.owner(&[(&r.get_ref().key, &r.get_ref().range_end)])? {
            Some(kv) => kv.delete_range(r).await,
            None => self.own.delete_range(r).await,
        }
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<Answer<TxnResponse>>, Status> {
        let owner = {
            let mut ranges = Vec::new();
            txn_ranges(r.get_ref(), &mut ranges);
            self.owner(&ranges)?
        };
        match owner {
            Some(kv) => kv.txn(r).await,
            None => self.own.txn(r).await,
        }
    }

    /// A compaction names no key: root's own datastore answers it.
    async fn compact(&self, r: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.own.compact(r).await
    }
}
