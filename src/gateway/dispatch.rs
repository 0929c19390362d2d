//! Which services answer a request in gateway mode: those of the caller's tenant. The
//! caller is the user its client certificate names; a user holding one tenant's role is
//! served by that tenant's own context (its prefix, its home datastore, its fence), built
//! the first time it calls, exactly as a sidecar in front of that tenant would serve it.
//! `root` (or anyone, while auth is off) is served over the whole key space of the
//! catalog's datastore. The Auth API is the gateway's own (`super::auth`).

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
    /// Where root's requests for keys of no tenant go: the catalog's datastore.
    pub root_home: String,
    pub migration: crate::config::MigrationSettings,
    /// Where each tenant's followers run (its markers, its migrations' status).
    pub background: crate::tasks::Background,
}

/// One tenant's services, where they send requests, and its migrations.
#[derive(Clone)]
pub struct Served {
    pub routes: tonic::service::Routes,
    pub migrator: Arc<crate::migrate::Migrator>,
    pub ctx: Arc<Context>,
}

pub struct Gateway {
    shared: Shared,
    catalog: Arc<CatalogStore>,
    /// By tenant (role) name.
    tenants: DashMap<String, Served>,
    root: Served,
}

impl Gateway {
    pub fn new(shared: Shared, catalog: Arc<CatalogStore>) -> Result<Arc<Gateway>, crate::route::UnknownDatastore> {
        let mut root = Self::build(&shared, &shared.root_home, b"", None)?;
        // (The root context's migrator is never started: the whole key space does not move.)
        Ok(Arc::new_cyclic(|me| {
            // Root's KV goes to the tenant whose keys it names (see `super::root`).
            let weak: std::sync::Weak<Gateway> = me.clone();
            let kv = super::root::RootKv {
                gateway: weak,
                own: crate::server::KvService::new(root.ctx.clone()),
            };
            root.routes = crate::server::data_routes_with_kv(&root.ctx, kv);
            Gateway {
                shared,
                catalog,
                tenants: DashMap::new(),
                root,
            }
        }))
    }

    /// A context of its own for tenant `tenant`'s keys under `prefix` on `home` (`None`:
    /// root's, over every key).
    fn build(
        shared: &Shared,
        home: &str,
        prefix: &[u8],
        tenant: Option<&str>,
    ) -> Result<Served, crate::route::UnknownDatastore> {
        let operator = tenant.is_none();
        let prefix = bytes::Bytes::copy_from_slice(prefix);
        let fence = FencePolicy {
            tenant_prefix: prefix.clone(),
            guard: Guard::new(&prefix),
            mode: shared.fence_mode,
            hold_timeout: shared.hold_timeout,
        };
        let router = Arc::new(Router::new(shared.datastores.clone(), home, fence)?);
        // Where the catalog says the tenant lives may be a store it has left since: the
        // markers there say where it went (and until they are read, the fence guard keeps
        // writes from landing on a store the tenant left).
        if operator {
            // The whole key space is nobody's to move.
        } else {
            let r = router.clone();
            shared.background.spawn(async move {
                if let Err(e) = crate::migrate::marker::follow_markers(&r).await {
                    tracing::warn!(error = %e, "a tenant's migration markers cannot be read yet; its follower keeps trying");
                }
            });
            crate::migrate::marker::spawn_follower(router.clone(), &shared.background);
        }
        let migrator = crate::migrate::Migrator::new(router.clone(), shared.metrics.clone(), shared.migration.clone());
        if let Some(name) = tenant {
            migrator.spawn_status_follower();
            Self::spawn_migration_metrics(shared, name, &migrator);
        }
        let ctx = Arc::new(Context {
            router,
            metrics: shared.metrics.clone(),
            max_recv_bytes: shared.max_recv_bytes,
            warned_unguarded: Default::default(),
            access: Access::new(!operator, Vec::new()),
            known_leases: Default::default(),
            keep_client_credentials: true,
            tenant_requests: tenant.map(|t| {
                shared
                    .metrics
                    .tenant_requests
                    .get_or_create(&crate::metrics::TenantLabels { tenant: t.to_string() })
                    .clone()
            }),
        });
        Ok(Served {
            routes: data_routes(&ctx),
            migrator,
            ctx,
        })
    }

    /// Keeps tenant `name`'s migration metrics: its phase, and each migration's outcome
    /// once it ends.
    fn spawn_migration_metrics(shared: &Shared, name: &str, migrator: &Arc<crate::migrate::Migrator>) {
        use crate::metrics::{TenantLabels, TenantOutcomeLabels};
        let metrics = shared.metrics.clone();
        let mut changes = migrator.subscribe();
        let tenant = name.to_string();
        shared.background.spawn(async move {
            let mut counted: Option<String> = None;
            loop {
                let snapshot = changes.borrow_and_update().clone();
                metrics
                    .tenant_migration_phase
                    .get_or_create(&TenantLabels { tenant: tenant.clone() })
                    .set(snapshot.phase.number());
                if let Some(m) = snapshot.migration.filter(|m| m.finished_unix_ms.is_some()) {
                    if counted.as_deref() != Some(m.id.as_str()) {
                        metrics
                            .tenant_migrations
                            .get_or_create(&TenantOutcomeLabels {
                                tenant: tenant.clone(),
                                outcome: m.outcome.as_str(),
                            })
                            .inc();
                        counted = Some(m.id);
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Tenant `name`'s services (built from the catalog the first time). Once built, a
    /// tenant's context follows the tenant itself when it moves (its migration markers).
    pub fn tenant(&self, name: &str) -> Result<Served, ProxyError> {
        if let Some(s) = self.tenants.get(name) {
            return Ok(s.clone());
        }
        let snapshot = self.catalog.snapshot();
        let t = snapshot
            .0
            .tenants
            .get(name)
            .ok_or_else(|| ProxyError::Catalog(format!("no tenant {name:?}")))?;
        let entry = self.tenants.entry(name.to_string());
        let served = match entry {
            dashmap::Entry::Occupied(o) => o.get().clone(),
            dashmap::Entry::Vacant(v) => {
                let served = Self::build(&self.shared, &t.home, t.prefix.as_bytes(), Some(name)).map_err(|e| {
                    ProxyError::Catalog(format!("tenant {name:?} lives on {e}, which is not one of dataStores"))
                })?;
                v.insert(served.clone());
                self.shared
                    .metrics
                    .gateway_tenants_served
                    .set(self.tenants.len() as i64);
                served
            }
        };
        Ok(served)
    }

    /// How many keys tenant `prefix` has on datastore `name` (cutover's own keys under the
    /// prefix not counted).
    pub async fn count_keys(&self, name: &str, prefix: &str) -> Result<i64, ProxyError> {
        let ds = self
            .shared
            .datastores
            .get(name)
            .ok_or_else(|| ProxyError::Catalog(format!("no datastore {name:?} in the pool")))?;
        let p = bytes::Bytes::copy_from_slice(prefix.as_bytes());
        let reserved = crate::keys::reserved_prefix(&p);
        let reserved_end = crate::keys::prefix_end(&reserved);
        let before = crate::upstream::calls::count(ds, p.clone(), reserved.clone()).await?;
        let after = crate::upstream::calls::count(ds, reserved_end, crate::keys::prefix_end(&p)).await?;
        Ok(before + after)
    }

    /// The datastores of the pool.
    pub fn datastore_names(&self) -> Vec<String> {
        self.shared.datastores.keys().cloned().collect()
    }

    /// Tenant `name`'s services if this replica has built them.
    pub fn served(&self, name: &str) -> Option<Served> {
        self.tenants.get(name).map(|s| s.clone())
    }

    /// Where each tenant lives as the catalog says, and this replica's view of the ones it
    /// serves.
    pub fn catalog(&self) -> &Arc<CatalogStore> {
        &self.catalog
    }

    /// Records in the catalog where a tenant this replica serves lives now, when that
    /// changed (after a migration): replicas that start later build it there.
    pub async fn record_homes(&self) {
        self.shared
            .metrics
            .gateway_tenants
            .set(self.catalog.snapshot().0.tenants.len() as i64);
        let moved: Vec<(String, String)> = self
            .tenants
            .iter()
            .filter_map(|e| {
                let now = e.value().migrator.router().route().datastore_name.clone();
                let snapshot = self.catalog.snapshot();
                let recorded = snapshot.0.tenants.get(e.key()).map(|t| t.home.clone());
                (recorded.is_some_and(|r| r != now)).then(|| (e.key().clone(), now))
            })
            .collect();
        for (name, home) in moved {
            let result = self
                .catalog
                .update(|c| {
                    if let Some(t) = c.tenants.get_mut(&name) {
                        t.home = home.clone();
                    }
                    Ok(())
                })
                .await;
            match result {
                Ok(_) => tracing::info!(tenant = %name, home = %home, "the catalog records the tenant's new home"),
                Err(e) => tracing::warn!(tenant = %name, error = %e, "cannot record the tenant's new home yet"),
            }
        }
    }

    /// How many tenants have a context built on this replica.
    pub fn tenants_served(&self) -> usize {
        self.tenants.len()
    }
}

impl super::root::Tenants for Gateway {
    fn catalog(&self) -> &Arc<CatalogStore> {
        &self.catalog
    }

    fn context_of(&self, tenant: &str) -> Result<Arc<Context>, ProxyError> {
        self.tenant(tenant).map(|s| s.ctx)
    }
}

impl Dispatch for Gateway {
    fn routes_for(&self, request: &http::request::Parts) -> Result<Option<tonic::service::Routes>, Status> {
        if request.uri.path().starts_with("/etcdserverpb.Auth/") {
            return Ok(None);
        }
        let snapshot = self.catalog.snapshot();
        let catalog = &snapshot.0;
        if !catalog.auth.enabled {
            return Ok(Some(self.root.routes.clone()));
        }
        let refused = |e: AuthError| ProxyError::from(e).to_status();
        let who = super::token::caller(
            |name| request.headers.get(name).and_then(|v| v.to_str().ok()),
            || common_name_in(&request.extensions),
            catalog,
        )
        .map_err(refused)?;
        let user_name = who.ok_or_else(|| refused(AuthError::UserEmpty))?;
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
            (Some((name, _)), None) if catalog.auth.roles.contains_key(name) => {
                self.tenant(name).map(|s| Some(s.routes)).map_err(|e| e.to_status())
            }
            _ => Err(refused(AuthError::PermissionDenied)),
        }
    }
}
