//! Which context serves which keys, for the callers whose requests are routed key by key:
//! root (Kamaji's controller, which reaches tenants' keys too, above all to delete them
//! when a TenantControlPlane goes), and users whose permissions reach several tenants or
//! none. A request is served by the context of the tenant whose prefix holds every key it
//! names, on that tenant's home; one that names no tenant's keys by the caller's own
//! context (the catalog's datastore). One that names keys of several (or of a tenant and of
//! none) is refused: they may live on different clusters, where no single Txn reaches them
//! all.

use std::sync::{Arc, Weak};

use super::catalog::{CatalogStore, RangeOwner};
use crate::error::ProxyError;
use crate::server::routed::KeyOwner;
use crate::server::Context;

/// What routing by key needs of the gateway: the catalog, and a tenant's context.
pub trait Tenants: Send + Sync {
    fn catalog(&self) -> &Arc<CatalogStore>;
    fn context_of(&self, tenant: &str) -> Result<Arc<Context>, ProxyError>;
}

pub struct Owners {
    pub(super) gateway: Weak<dyn Tenants>,
    /// The context serving keys of no tenant.
    pub(super) own: Arc<Context>,
}

impl KeyOwner for Owners {
    fn context_of(&self, ranges: &[(&[u8], &[u8])]) -> Result<Arc<Context>, ProxyError> {
        let gateway = self
            .gateway
            .upgrade()
            .ok_or_else(|| ProxyError::Catalog("the gateway is shutting down".into()))?;
        let snapshot = gateway.catalog().snapshot();
        let mut owners = ranges.iter().map(|(k, e)| snapshot.0.owner_of_range(k, e));
        let first = owners.next().unwrap_or(RangeOwner::NoTenant);
        if first == RangeOwner::Several || owners.any(|o| o != first) {
            return Err(ProxyError::Unsupported(
                "this request names keys of several tenants (or of a tenant and of none), which may live on \
                 different datastores of the pool; send one request per tenant",
            ));
        }
        match first {
            RangeOwner::NoTenant | RangeOwner::Several => Ok(self.own.clone()),
            RangeOwner::Tenant(name) => gateway.context_of(name),
        }
    }
}
