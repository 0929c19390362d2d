//! Which services answer a request in gateway mode: those of the caller's tenant. The
//! caller is the user its client certificate names; a user holding one tenant's role is
//! served by that tenant's own context (its prefix, its home datastore, its fence), built
//! the first time it calls, exactly as a sidecar in front of that tenant would serve it.
//! `root` (or anyone, while auth is off) is served over the whole key space of the
//! placement datastore. The Auth API is the gateway's own (`super::auth`).

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::DashMap;
use tonic::Status;

use super::catalog::CatalogStore;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::rbac::{AuthError, ROOT};
use crate::route::fence::Guard;
use crate::route::{FencePolicy, Router};
use crate::server::access::{common_name_in, Access};
use crate::server::{data_routes, Context, Dispatch};
use crate::upstream::Datastore;

/// What every context the gateway builds shares.
pub struct Shared {
    pub datastores: BTreeMap<String, Arc<Datastore>>,
    pub metrics: Arc<Metrics>,
    pub max_recv_bytes: usize,
    pub fence_mode: crate::config::FenceMode,
    pub hold_timeout: std::time::Duration,
    pub placement: String,
}

/// One tenant's services, and where they send requests.
#[derive(Clone)]
struct Served {
    home: String,
    routes: tonic::service::Routes,
}

pub struct Gateway {
    shared: Shared,
    catalog: Arc<CatalogStore>,
    /// By tenant (role) name.
    tenants: DashMap<String, Served>,
    root: Served,
}

impl Gateway {
    pub fn new(shared: Shared, catalog: Arc<CatalogStore>) -> Result<Gateway, crate::route::UnknownDatastore> {
        let root = Self::build(&shared, &shared.placement, b"", true)?;
        Ok(Gateway {
            shared,
            catalog,
            tenants: DashMap::new(),
            root,
        })
    }

    /// A context of its own for the keys under `prefix` on `home` (all keys: empty).
    fn build(
        shared: &Shared,
        home: &str,
        prefix: &[u8],
        operator: bool,
    ) -> Result<Served, crate::route::UnknownDatastore> {
        let prefix = bytes::Bytes::copy_from_slice(prefix);
        let fence = FencePolicy {
            tenant_prefix: prefix.clone(),
            guard: Guard::new(&prefix),
            mode: shared.fence_mode,
            hold_timeout: shared.hold_timeout,
        };
        let router = Arc::new(Router::new(shared.datastores.clone(), home, fence)?);
        let ctx = Arc::new(Context {
            router,
            metrics: shared.metrics.clone(),
            max_recv_bytes: shared.max_recv_bytes,
            warned_unguarded: Default::default(),
            access: Access::new(!operator, Vec::new()),
            known_leases: Default::default(),
        });
        Ok(Served {
            home: home.to_string(),
            routes: data_routes(&ctx),
        })
    }

    /// The services of tenant `name` (prefix `prefix`, on `home`).
    fn tenant(&self, name: &str, prefix: &str, home: &str) -> Result<tonic::service::Routes, Status> {
        if let Some(s) = self.tenants.get(name) {
            if s.home == home {
                return Ok(s.routes.clone());
            }
        }
        let served = Self::build(&self.shared, home, prefix.as_bytes(), false).map_err(|e| {
            ProxyError::Catalog(format!("tenant {name:?} lives on {e}, which is not one of dataStores")).to_status()
        })?;
        let routes = served.routes.clone();
        self.tenants.insert(name.to_string(), served);
        Ok(routes)
    }

    /// How many tenants have a context built on this replica.
    pub fn tenants_served(&self) -> usize {
        self.tenants.len()
    }
}

impl Dispatch for Gateway {
    fn routes_for(&self, request: &http::request::Parts) -> Result<Option<tonic::service::Routes>, Status> {
        if request.uri.path().starts_with("/etcdserverpb.Auth/") {
            return Ok(None);
        }
        // The gateway issues no tokens: one sent is one etcd would not know either.
        if request.headers.contains_key("token") || request.headers.contains_key("authorization") {
            return Err(crate::error::invalid_auth_token());
        }
        let snapshot = self.catalog.snapshot();
        let catalog = &snapshot.0;
        if !catalog.auth.enabled {
            return Ok(Some(self.root.routes.clone()));
        }
        let refused = |e: AuthError| ProxyError::from(e).to_status();
        let user_name = common_name_in(&request.extensions).ok_or_else(|| refused(AuthError::UserEmpty))?;
        let user = catalog
            .auth
            .users
            .get(&user_name)
            .ok_or_else(|| refused(AuthError::PermissionDenied))?;
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(Some(self.root.routes.clone()));
        }
        // A user of exactly one tenant is that tenant; anyone else reaches no keys.
        let mut theirs = user.roles.iter().filter_map(|r| catalog.tenants.get(r).map(|t| (r, t)));
        match (theirs.next(), theirs.next()) {
            (Some((name, t)), None) if catalog.auth.roles.contains_key(name) => {
                self.tenant(name, &t.prefix, &t.home).map(Some)
            }
            _ => Err(refused(AuthError::PermissionDenied)),
        }
    }
}
