//! Which services answer a request in gateway mode, and what its caller may do. The caller
//! is the user its client certificate (or token) names. A user whose permissions all lie
//! in one tenant's prefix (Kamaji's tenants, and any narrower or read-only user of one) is
//! served by that tenant's own context (its prefix, its home datastore, its fence), built
//! the first time it calls, exactly as a sidecar in front of that tenant would serve it.
//! `root` (or anyone, while auth is off), and a user whose permissions reach several
//! tenants or none, have their requests routed key by key (`super::root`). Every caller but
//! root has each request checked against its permissions as etcd checks it (the
//! `rbac::Permits` put on the request). The Auth API is the gateway's own (`super::auth`).

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::DashMap;
use tonic::Status;

use super::catalog::CatalogStore;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::rbac::perm::End;
use crate::rbac::{AuthError, Permits};
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
    /// Its followers (markers, migration metrics), stopped when the tenant is deleted.
    tasks: crate::tasks::Background,
    /// Which of the tenants of this name it serves (`Tenant::placed_at`).
    placed_at: u64,
}

pub struct Gateway {
    shared: Shared,
    catalog: Arc<CatalogStore>,
    /// By tenant (role) name.
    tenants: DashMap<String, Served>,
    /// Root's context: every key of the catalog's datastore, every call.
    root: Served,
    /// That of users who are no one tenant's: as root's, but with what a tenant may call.
    others: Served,
    /// Each user's permits and where its requests go, from the catalog last seen.
    callers: arc_swap::ArcSwap<Callers>,
    /// Itself, for what outlives a request (a watch stream's look at the roles of now).
    me: std::sync::Weak<Gateway>,
}

/// Where a caller's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    /// Root, or anyone while auth is off: routed by key, nothing checked.
    Everything,
    /// One tenant's context serves it: every key it may reach is that tenant's.
    Tenant(String),
    /// Routed by key, and checked: its permissions reach several tenants, or none.
    Keys,
}

#[derive(Debug)]
struct CallerView {
    permits: Arc<Permits>,
    reach: Reach,
}

/// The users' views worked out from one catalog, each the first time the user calls (a
/// table started afresh when the catalog changes; at most one entry per user it has).
#[derive(Default)]
struct Callers {
    from: Option<Arc<(super::catalog::Catalog, i64)>>,
    users: DashMap<String, Arc<CallerView>>,
}

impl Callers {
    /// User `name`'s view, or `None` if the catalog has no such user.
    fn view(&self, name: &str) -> Option<Arc<CallerView>> {
        if let Some(v) = self.users.get(name) {
            return Some(v.clone());
        }
        let catalog = &self.from.as_ref()?.0;
        if !catalog.auth.users.contains_key(name) {
            return None;
        }
        let permits = catalog.auth.permits(Some(name)).ok()?;
        let reach = if permits.is_everything() {
            Reach::Everything
        } else {
            reach_of(catalog, &permits)
        };
        let view = Arc::new(CallerView {
            permits: Arc::new(permits),
            reach,
        });
        self.users.insert(name.to_string(), view.clone());
        Some(view)
    }
}

/// A tenant's keys without cutover's own: the parts of its prefix before and after them.
fn around_reserved(prefix: &str) -> [(bytes::Bytes, bytes::Bytes); 2] {
    let p = bytes::Bytes::copy_from_slice(prefix.as_bytes());
    let reserved = crate::keys::reserved_prefix(&p);
    [
        (p.clone(), reserved.clone()),
        (crate::keys::prefix_end(&reserved), crate::keys::prefix_end(&p)),
    ]
}

/// The one tenant whose prefix holds every key `permits` reach, if there is one.
fn reach_of(catalog: &super::catalog::Catalog, permits: &Permits) -> Reach {
    let mut tenant: Option<&String> = None;
    for interval in permits.intervals() {
        let end: &[u8] = match &interval.end {
            End::Key(e) => e,
            End::Unbounded => b"\0",
        };
        match catalog.owner_of_range(&interval.begin, end) {
            super::catalog::RangeOwner::Tenant(t) if tenant.is_none_or(|seen| seen == t) => tenant = Some(t),
            _ => return Reach::Keys,
        }
    }
    tenant.map_or(Reach::Keys, |t| Reach::Tenant(t.clone()))
}

impl Gateway {
    pub fn new(shared: Shared, catalog: Arc<CatalogStore>) -> Result<Arc<Gateway>, crate::route::UnknownDatastore> {
        // (Their migrators are never started: the whole key space does not move.)
        let mut root = Self::build(&shared, &shared.root_home, b"", None, true)?;
        let mut others = Self::build(&shared, &shared.root_home, b"", None, false)?;
        Ok(Arc::new_cyclic(|me| {
            // Their KV and Watch go to the tenant whose keys they name (see `super::root`).
            for served in [&mut root, &mut others] {
                let gateway: std::sync::Weak<Gateway> = me.clone();
                let owners = super::root::Owners {
                    gateway,
                    own: served.ctx.clone(),
                };
                served.routes = crate::server::data_routes_routed(&served.ctx, Arc::new(owners));
            }
            Gateway {
                shared,
                catalog,
                tenants: DashMap::new(),
                root,
                others,
                callers: Default::default(),
                me: me.clone(),
            }
        }))
    }

    /// What `user` may do now (nothing if the catalog has no such user or there is no user,
    /// everything while auth is off).
    fn permits_now(&self, user: Option<&str>) -> Arc<Permits> {
        if !self.catalog.snapshot().0.auth.enabled {
            return Arc::new(Permits::everything());
        }
        user.and_then(|u| self.callers().view(u))
            .map_or_else(|| Arc::new(Permits::default()), |v| v.permits.clone())
    }

    /// The users' views, from the catalog as this replica knows it now.
    fn callers(&self) -> Arc<Callers> {
        let snapshot = self.catalog.snapshot();
        let current = self.callers.load_full();
        if current.from.as_ref().is_some_and(|from| Arc::ptr_eq(from, &snapshot)) {
            return current;
        }
        let fresh = Arc::new(Callers {
            from: Some(snapshot),
            users: DashMap::new(),
        });
        self.callers.store(fresh.clone());
        fresh
    }

    /// A context of its own for tenant `tenant`'s keys under `prefix` on `home` (`None`:
    /// over every key, for root when `operator`, else for users who are no one tenant's).
    fn build(
        shared: &Shared,
        home: &str,
        prefix: &[u8],
        tenant: Option<&str>,
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
        let tasks = shared.background.child();
        // Where the catalog says the tenant lives may be a store it has left since: the
        // markers there say where it went (and until they are read, the fence guard keeps
        // writes from landing on a store the tenant left).
        if tenant.is_none() {
            // The whole key space is nobody's to move.
        } else {
            let r = router.clone();
            tasks.spawn(async move {
                if let Err(e) = crate::migrate::marker::follow_markers(&r).await {
                    tracing::warn!(error = %e, "a tenant's migration markers cannot be read yet; its follower keeps trying");
                }
            });
            crate::migrate::marker::spawn_follower(router.clone(), &tasks);
        }
        let migrator = crate::migrate::Migrator::new(router.clone(), shared.metrics.clone(), shared.migration.clone());
        if let Some(name) = tenant {
            migrator.spawn_status_follower();
            Self::spawn_migration_metrics(shared, &tasks, name, &migrator);
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
            tasks,
            placed_at: 0,
        })
    }

    /// Keeps tenant `name`'s migration metrics: its phase, and each migration's outcome
    /// once it ends.
    fn spawn_migration_metrics(
        shared: &Shared,
        tasks: &crate::tasks::Background,
        name: &str,
        migrator: &Arc<crate::migrate::Migrator>,
    ) {
        use crate::metrics::{TenantLabels, TenantOutcomeLabels};
        let metrics = shared.metrics.clone();
        let mut changes = migrator.subscribe();
        let tenant = name.to_string();
        tasks.spawn(async move {
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
    /// A context built for an earlier tenant of the same name (deleted and created again
    /// since) is replaced.
    pub fn tenant(&self, name: &str) -> Result<Served, ProxyError> {
        let snapshot = self.catalog.snapshot();
        let t = snapshot
            .0
            .tenants
            .get(name)
            .ok_or_else(|| ProxyError::Catalog(format!("no tenant {name:?}")))?;
        // (A context newer than this snapshot of the catalog is the one to use.)
        if let Some(s) = self.tenants.get(name).filter(|s| s.placed_at >= t.placed_at) {
            return Ok(s.clone());
        }
        let build = || {
            let mut served =
                Self::build(&self.shared, &t.home, t.prefix.as_bytes(), Some(name), false).map_err(|e| {
                    ProxyError::Catalog(format!("tenant {name:?} lives on {e}, which is not one of dataStores"))
                })?;
            served.placed_at = t.placed_at;
            Ok::<_, ProxyError>(served)
        };
        let served = match self.tenants.entry(name.to_string()) {
            dashmap::Entry::Occupied(o) if o.get().placed_at >= t.placed_at => o.get().clone(),
            dashmap::Entry::Occupied(mut o) => {
                tracing::info!(tenant = %name, "the tenant was deleted and created again; serving the new one");
                let served = build()?;
                o.insert(served.clone()).tasks.stop();
                served
            }
            dashmap::Entry::Vacant(v) => {
                let served = build()?;
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
        let ds = self.pool_member(name)?;
        let mut n = 0;
        for (start, end) in around_reserved(prefix) {
            n += crate::upstream::calls::count(ds, start, end).await?;
        }
        Ok(n)
    }

    fn pool_member(&self, name: &str) -> Result<&Arc<Datastore>, ProxyError> {
        self.shared
            .datastores
            .get(name)
            .ok_or_else(|| ProxyError::Catalog(format!("no datastore {name:?} in the pool")))
    }

    /// How many bytes (keys and values) tenant `prefix` holds on datastore `name`
    /// (cutover's own keys under the prefix not counted). etcd tells a range's size only
    /// by reading it: the keys are read in pages at one revision, and only summed.
    pub async fn measure_bytes(&self, name: &str, prefix: &str) -> Result<i64, ProxyError> {
        /// Keys per page: a few MiB at most with kube-apiserver's objects.
        const PAGE: i64 = 100;
        let ds = self.pool_member(name)?;
        let mut revision = 0;
        let mut total = 0i64;
        for (start, end) in around_reserved(prefix) {
            let mut from = start;
            loop {
                let page = crate::migrate::ops::range(
                    ds,
                    crate::proto::etcdserverpb::RangeRequest {
                        key: from.clone(),
                        range_end: end.clone(),
                        limit: PAGE,
                        revision,
                        ..Default::default()
                    },
                )
                .await?;
                if revision == 0 {
                    revision = page.header.as_ref().map_or(0, |h| h.revision);
                }
                total += page
                    .kvs
                    .iter()
                    .map(|kv| (kv.key.len() + kv.value.len()) as i64)
                    .sum::<i64>();
                match page.kvs.last() {
                    Some(last) if page.more => {
                        let mut next = last.key.to_vec();
                        next.push(0);
                        from = next.into();
                    }
                    _ => break,
                }
            }
        }
        Ok(total)
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
        let snapshot = self.catalog.snapshot();
        let moved: Vec<(String, String, u64)> = self
            .tenants
            .iter()
            .filter_map(|e| {
                let now = e.value().migrator.router().route().datastore_name.clone();
                // (A context of an earlier tenant of the same name says nothing of this one.)
                let recorded = snapshot
                    .0
                    .tenants
                    .get(e.key())
                    .filter(|t| t.placed_at == e.value().placed_at);
                recorded
                    .is_some_and(|t| t.home != now)
                    .then(|| (e.key().clone(), now, e.value().placed_at))
            })
            .collect();
        for (name, home, placed_at) in moved {
            let result = self
                .catalog
                .update(|c| {
                    if let Some(t) = c.tenants.get_mut(&name).filter(|t| t.placed_at == placed_at) {
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

    /// Clears what is left of the tenants Kamaji deleted (see `super::retire`): a tenant
    /// whose role is gone and whose keys are gone from where it lives moves to the
    /// catalog's leftovers, whose keys then go from every datastore (tried again on every
    /// pass until they are gone). A replica drops its context of a tenant the catalog no
    /// longer has.
    pub async fn retire_deleted_tenants(&self) {
        // Where a test keeps a replica from doing it (and from dropping its contexts).
        if crate::failpoint!("gateway.retire").is_err() {
            return;
        }
        let snapshot = self.catalog.snapshot();
        let gone: Vec<(String, super::catalog::Tenant)> = snapshot
            .0
            .tenants
            .iter()
            .filter(|(name, _)| !snapshot.0.auth.roles.contains_key(*name))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        for (name, tenant) in gone {
            match self.set_aside(&name, &tenant).await {
                Ok(true) => tracing::info!(tenant = %name, "the tenant was deleted; clearing cutover's keys of it"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(tenant = %name, error = %e, "cannot tell yet whether a tenant without its role is gone")
                }
            }
        }
        let snapshot = self.catalog.snapshot();
        for (name, t) in &snapshot.0.leftovers {
            let cleared = async {
                let deleted = super::retire::forget(&self.shared.datastores, &t.home, t.prefix.as_bytes()).await?;
                self.catalog
                    .update(|c| {
                        if c.leftovers.get(name).is_some_and(|x| x.placed_at == t.placed_at) {
                            c.leftovers.remove(name);
                        }
                        Ok(())
                    })
                    .await?;
                Ok::<_, ProxyError>(deleted)
            }
            .await;
            match cleared {
                Ok(deleted) => {
                    tracing::info!(tenant = %name, keys = deleted, "a deleted tenant's keys are gone from every datastore")
                }
                Err(e) => {
                    tracing::warn!(tenant = %name, error = %e, "cannot clear a deleted tenant's keys yet; trying again later")
                }
            }
        }
        let snapshot = self.catalog.snapshot();
        self.tenants.retain(|name, served| {
            let keep = snapshot.0.tenants.contains_key(name);
            if !keep {
                served.tasks.stop();
                self.shared.metrics.forget_tenant(name);
            }
            keep
        });
        self.shared
            .metrics
            .gateway_tenants_served
            .set(self.tenants.len() as i64);
    }

    /// Moves tenant `name` (as `tenant` was placed) to the catalog's leftovers if it is
    /// gone: still without its role, no migration of it running here, and none of its keys
    /// left where its markers say it lives. Whether it moved.
    async fn set_aside(&self, name: &str, tenant: &super::catalog::Tenant) -> Result<bool, ProxyError> {
        let served = self.tenant(name)?;
        if served.migrator.snapshot().phase != crate::migrate::Phase::Ready {
            return Ok(false);
        }
        let router = served.migrator.router();
        crate::migrate::marker::follow_markers(router)
            .await
            .map_err(|e| ProxyError::Catalog(format!("cannot find where tenant {name:?} lives: {e}")))?;
        let home = router.route().datastore_name.clone();
        if !super::retire::is_gone(self.pool_member(&home)?, tenant.prefix.as_bytes()).await? {
            return Ok(false);
        }
        let (moved, _) = self
            .catalog
            .update(|c| {
                let same = c.tenants.get(name).is_some_and(|t| t.placed_at == tenant.placed_at);
                if !same || c.auth.roles.contains_key(name) {
                    return Ok(false);
                }
                if let Some(mut t) = c.tenants.remove(name) {
                    t.home = home.clone();
                    c.leftovers.insert(name.to_string(), t);
                }
                Ok(true)
            })
            .await?;
        Ok(moved)
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
    fn routes_for(&self, request: &mut http::request::Parts) -> Result<Option<tonic::service::Routes>, Status> {
        if request.uri.path().starts_with("/etcdserverpb.Auth/") {
            return Ok(None);
        }
        let snapshot = self.catalog.snapshot();
        let catalog = &snapshot.0;
        let watch_stream = request.uri.path() == "/etcdserverpb.Watch/Watch";
        let who = super::token::caller(
            |name| request.headers.get(name).and_then(|v| v.to_str().ok()),
            || {
                // (While auth is off only a watch stream needs to know: the roles may come
                // on while it lasts.)
                (catalog.auth.enabled || watch_stream)
                    .then(|| common_name_in(&request.extensions))
                    .flatten()
            },
            catalog,
        );
        if !catalog.auth.enabled {
            if watch_stream {
                self.watch_with_roles_of_the_moment(request, who.ok().flatten());
            }
            return Ok(Some(self.root.routes.clone()));
        }
        let refused = |e: AuthError| ProxyError::from(e).to_status();
        let user_name = who.map_err(refused)?.ok_or_else(|| refused(AuthError::UserEmpty))?;
        let callers = self.callers();
        let Some(view) = callers.view(&user_name) else {
            // A user etcd does not know may still call what needs no permission (the
            // member list); every key is refused to it.
            request.extensions.insert(Arc::new(Permits::default()));
            return Ok(Some(self.others.routes.clone()));
        };
        if watch_stream {
            self.watch_with_roles_of_the_moment(request, Some(user_name));
        }
        if view.reach == Reach::Everything {
            return Ok(Some(self.root.routes.clone()));
        }
        request.extensions.insert(view.permits.clone());
        match &view.reach {
            Reach::Tenant(name) => self.tenant(name).map(|s| Some(s.routes)).map_err(|e| e.to_status()),
            Reach::Keys | Reach::Everything => Ok(Some(self.others.routes.clone())),
        }
    }
}

impl Gateway {
    /// A stream outlives the roles it started with (and auth may come on while it lasts):
    /// each watch it creates is checked with `user`'s roles of that moment, as etcd does.
    fn watch_with_roles_of_the_moment(&self, request: &mut http::request::Parts, user: Option<String>) {
        let me = self.me.clone();
        request.extensions.insert(crate::rbac::LivePermits::new(move || {
            me.upgrade()
                .map_or_else(|| Arc::new(Permits::default()), |g| g.permits_now(user.as_deref()))
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::catalog::{Catalog, Tenant};
    use crate::proto::authpb::permission::Type as PermType;
    use crate::proto::authpb::Permission;

    /// A role's name and its permissions: type, key, range end.
    type RoleSpec<'a> = (&'a str, &'a [(PermType, &'a str, &'a str)]);

    fn catalog_with(roles: &[RoleSpec]) -> Catalog {
        let mut c = Catalog::default();
        for schema in ["a", "b"] {
            c.tenants.insert(
                schema.into(),
                Tenant {
                    prefix: format!("/{schema}/"),
                    home: "east".into(),
                    placed_at: 0,
                },
            );
        }
        c.auth.user_add(None, "u", true).unwrap();
        for (role, perms) in roles {
            c.auth.role_add(None, role).unwrap();
            for (t, key, end) in *perms {
                let perm = Permission {
                    perm_type: *t as i32,
                    key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                    range_end: bytes::Bytes::copy_from_slice(end.as_bytes()),
                };
                c.auth.role_grant_permission(None, role, Some(perm)).unwrap();
            }
            c.auth.user_grant_role(None, "u", role).unwrap();
        }
        c.auth.enabled = true;
        c
    }

    fn reach(roles: &[RoleSpec]) -> Reach {
        let c = catalog_with(roles);
        let permits = c.auth.permits(Some("u")).unwrap();
        reach_of(&c, &permits)
    }

    #[test]
    fn a_user_is_one_tenants_when_every_key_it_may_touch_is_that_tenants() {
        use PermType::*;
        let a = Reach::Tenant("a".into());
        assert_eq!(reach(&[("a", &[(Readwrite, "/a/", "/a0")])]), a, "Kamaji's");
        assert_eq!(reach(&[("r", &[(Read, "/a/", "/a0")])]), a, "read-only");
        assert_eq!(
            reach(&[
                ("p", &[(Readwrite, "/a/pods/", "/a/pods0")]),
                ("k", &[(Read, "/a/cfg", "")])
            ]),
            a,
            "narrower, from two roles"
        );
        assert_eq!(
            reach(&[("r", &[(Read, "/a/", "/a0"), (Read, "/b/", "/b0")])]),
            Reach::Keys,
            "two tenants"
        );
        assert_eq!(
            reach(&[("r", &[(Read, "/a/", "/a0"), (Read, "compact_rev_key", "")])]),
            Reach::Keys,
            "a tenant and keys of none"
        );
        assert_eq!(reach(&[("r", &[(Read, "/", "\0")])]), Reach::Keys, "everything");
        assert_eq!(reach(&[]), Reach::Keys, "nothing");
    }
}
