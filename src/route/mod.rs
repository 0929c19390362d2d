//! Which datastore is authoritative now.
//!
//! Every request asks the router for the current [`Route`] once, and uses that snapshot for
//! its whole life. The route is swapped atomically (arc-swap), so a reader never waits and
//! never sees half a change. The live migration will extend `Route` with the write fence
//! and the revision translation; the services in `server/` only ever talk to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub mod fence;
pub mod revision;
pub mod scope;

use crate::config::FenceMode;
use crate::upstream::Datastore;
use fence::Guard;

/// How writes are fenced: the guard every write travels in, and what a write meets while
/// the datastore holds the fence.
#[derive(Debug, Clone)]
pub struct FencePolicy {
    pub tenant_prefix: bytes::Bytes,
    pub guard: Guard,
    pub mode: FenceMode,
    pub hold_timeout: std::time::Duration,
}

/// One consistent view of where requests go.
pub struct Route {
    /// Name of the authoritative datastore (the `dataStore` config key).
    pub datastore_name: String,
    pub datastore: Arc<Datastore>,
}

pub struct Router {
    current: ArcSwap<Route>,
    datastores: BTreeMap<String, Arc<Datastore>>,
    fence: FencePolicy,
    scope: scope::Scope,
}

#[derive(Debug, thiserror::Error)]
#[error("no datastore named {0:?}")]
pub struct UnknownDatastore(pub String);

impl Router {
    pub fn new(
        datastores: BTreeMap<String, Arc<Datastore>>,
        active: &str,
        fence: FencePolicy,
    ) -> Result<Self, UnknownDatastore> {
        let ds = datastores
            .get(active)
            .cloned()
            .ok_or_else(|| UnknownDatastore(active.to_string()))?;
        Ok(Router {
            current: ArcSwap::from_pointee(Route {
                datastore_name: active.to_string(),
                datastore: ds,
            }),
            datastores,
            scope: scope::Scope::new(&fence.tenant_prefix),
            fence,
        })
    }

    /// What clients may touch: everything but cutover's reserved keys.
    pub fn scope(&self) -> &scope::Scope {
        &self.scope
    }

    pub fn fence(&self) -> &FencePolicy {
        &self.fence
    }

    /// The route for one request.
    pub fn route(&self) -> Arc<Route> {
        self.current.load_full()
    }

    pub fn datastores(&self) -> &BTreeMap<String, Arc<Datastore>> {
        &self.datastores
    }

    /// Makes `name` the authoritative datastore for every request that starts after this.
    pub fn switch_to(&self, name: &str) -> Result<(), UnknownDatastore> {
        let ds = self
            .datastores
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownDatastore(name.to_string()))?;
        self.current.store(Arc::new(Route {
            datastore_name: name.to_string(),
            datastore: ds,
        }));
        Ok(())
    }
}
