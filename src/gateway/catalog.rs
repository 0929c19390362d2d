//! The gateway's catalog: the users and roles of every tenant, and which datastore of the
//! pool each tenant lives on. It is one JSON value under a key of its own in one datastore
//! (`gateway.catalog`), so that every replica reads the same one; a change is written with
//! a compare on the revision it was made from, so two replicas changing it at once both
//! take effect, one after the other.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::proto::authpb::permission::Type as PermType;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use crate::rbac::{self, AuthError};
use crate::upstream::{client, own_request, Datastore, Retry};

/// Where the catalog lives in its datastore: outside any tenant's prefix (tenants' keys
/// start with `/`), among the keys cutover reserves at the root of the key space, which no
/// client reads, watches or writes (it holds the users and the key tokens are signed with).
pub const CATALOG_KEY: &[u8] = b"\0cutover/gateway-catalog";

/// How many times a change is tried again when another replica changed the catalog first.
const MAX_CONFLICTS: usize = 32;

/// One tenant: a role whose permission is one key prefix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// The tenant's keys: `/<schema>/`.
    pub prefix: String,
    /// The datastore of the pool that holds them.
    pub home: String,
    /// The auth revision when it was placed: tells this tenant from an earlier one of the
    /// same name (Kamaji deletes and creates control planes under the same name).
    #[serde(default)]
    pub placed_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Catalog {
    pub auth: rbac::Store,
    /// By role name (Kamaji's schema).
    pub tenants: BTreeMap<String, Tenant>,
    /// Deleted tenants whose keys cutover has still to clear (`home`: where each lived
    /// last). Until then no tenant of the name is placed, and no request reaches its prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leftovers: BTreeMap<String, Tenant>,
    /// The key Authenticate's tokens are signed with (hex; empty until the first one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_secret: String,
}

/// The prefix a permission names, if it is a whole prefix `/<name>/` of one segment, as
/// Kamaji grants them: tenants' prefixes never nest, and a role granted a narrower prefix
/// inside one (`/a/pods/`) is a user's role, not a tenant.
fn prefix_of(perm: &crate::proto::authpb::Permission) -> Option<String> {
    let key = std::str::from_utf8(&perm.key).ok()?;
    let name = key.strip_prefix('/')?.strip_suffix('/')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let end = crate::keys::prefix_end(&perm.key);
    (end[..] == perm.range_end[..] && perm.perm_type == PermType::Readwrite as i32).then(|| key.to_string())
}

impl Catalog {
    /// The roles that are tenants the catalog has not placed yet: a role `S` granted
    /// read-write on exactly one prefix, `/S/` (Kamaji's shape). Another role granted the
    /// same prefix (an operator's) is a user's role: a prefix is one tenant's.
    pub fn unplaced(&self) -> Vec<(String, String)> {
        self.auth
            .roles
            .iter()
            .filter(|(name, _)| !self.tenants.contains_key(*name) && !self.leftovers.contains_key(*name))
            .filter_map(|(name, role)| {
                let prefixes: Vec<String> = role.perms.iter().filter_map(prefix_of).collect();
                match prefixes.as_slice() {
                    [prefix] if *prefix == format!("/{name}/") => Some((name.clone(), prefix.clone())),
                    _ => None,
                }
            })
            .collect()
    }

    /// Takes note of tenants after a change of roles, placing each new one on `home`. A
    /// tenant whose role went keeps its entry: its keys are still on its home until they
    /// are deleted.
    pub fn place_tenants(&mut self, home: &str) {
        for (name, prefix) in self.unplaced() {
            self.tenants.insert(
                name,
                Tenant {
                    prefix,
                    home: home.to_string(),
                    placed_at: self.auth.revision,
                },
            );
        }
    }

    /// Whose keys the range `[key, range_end)` names (etcd's reading of a range: an empty
    /// end is the one key, `"\0"` every key from `key` on).
    pub fn owner_of_range(&self, key: &[u8], range_end: &[u8]) -> RangeOwner<'_> {
        // (A deleted tenant's prefix is nobody's until its keys are cleared.)
        let clearing = self.leftovers.values().any(|t| {
            let p = t.prefix.as_bytes();
            crate::keys::overlaps(key, range_end, p, &crate::keys::prefix_end(p))
        });
        if clearing {
            return RangeOwner::Several;
        }
        let mut found = None;
        for (name, t) in &self.tenants {
            let p = t.prefix.as_bytes();
            let end = crate::keys::prefix_end(p);
            if !crate::keys::overlaps(key, range_end, p, &end) {
                continue;
            }
            let inside = key.starts_with(p) && (range_end.is_empty() || (range_end != [0] && range_end <= &end[..]));
            if !inside || found.is_some() {
                return RangeOwner::Several;
            }
            found = Some(name);
        }
        found.map_or(RangeOwner::NoTenant, RangeOwner::Tenant)
    }

    /// The tenant whose prefix holds `key`.
    pub fn tenant_of_key(&self, key: &[u8]) -> Option<(&String, &Tenant)> {
        self.tenants.iter().find(|(_, t)| key.starts_with(t.prefix.as_bytes()))
    }
}

/// Whose keys a request's range names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOwner<'a> {
    /// Only this tenant's.
    Tenant(&'a String),
    /// No tenant's.
    NoTenant,
    /// Keys of several tenants, or of a tenant and of none.
    Several,
}

/// The catalog as one replica sees it, read from and written to its datastore.
pub struct CatalogStore {
    ds: Arc<Datastore>,
    /// Where new tenants go.
    placement: crate::config::Placement,
    /// The pool, for the `fewestKeys` placement.
    pool: BTreeMap<String, Arc<Datastore>>,
    /// The catalog as last read or written here, with its mod revision: what requests are
    /// decided with.
    current: arc_swap::ArcSwap<(Catalog, i64)>,
    /// Whether the catalog was read at least once.
    read_once: std::sync::atomic::AtomicBool,
}

/// A catalog read at one revision of its datastore.
pub struct Read {
    pub catalog: Catalog,
    /// The catalog key's mod revision (0: not written yet).
    pub mod_revision: i64,
    /// The datastore's answer header, given back on the Auth API's answers.
    pub header: Option<ResponseHeader>,
}

impl CatalogStore {
    pub fn new(
        ds: Arc<Datastore>,
        placement: crate::config::Placement,
        pool: BTreeMap<String, Arc<Datastore>>,
    ) -> CatalogStore {
        CatalogStore {
            ds,
            placement,
            pool,
            current: arc_swap::ArcSwap::from_pointee((Catalog::default(), 0)),
            read_once: Default::default(),
        }
    }

    /// Whether requests can be decided: the catalog was read at least once.
    pub fn has_read(&self) -> bool {
        self.read_once.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The catalog as this replica knows it now.
    pub fn snapshot(&self) -> Arc<(Catalog, i64)> {
        self.current.load_full()
    }

    /// Keeps `catalog` (at `mod_revision`) unless a newer one is known already.
    fn keep(&self, catalog: &Catalog, mod_revision: i64) {
        self.current.rcu(|cur| {
            if cur.1 >= mod_revision && cur.1 != 0 {
                Arc::clone(cur)
            } else {
                Arc::new((catalog.clone(), mod_revision))
            }
        });
    }

    /// Follows the catalog until the process stops, so that a change another replica made
    /// reaches this one's decisions at once: a watch of the catalog key, and a read every
    /// `every` besides (a watch that stalls unnoticed costs at most that).
    pub fn spawn_follower(self: &Arc<Self>, every: std::time::Duration, background: &crate::tasks::Background) {
        let store = Arc::clone(self);
        background.spawn(async move {
            let mut backoff = crate::backoff::Backoff::new(std::time::Duration::from_millis(100), every);
            loop {
                match store.follow(every).await {
                    Ok(()) => backoff.reset(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot follow the gateway's catalog; deciding with the last one read")
                    }
                }
                backoff.wait().await;
            }
        });
    }

    /// One watch of the catalog key from the catalog just read, until it ends.
    async fn follow(&self, every: std::time::Duration) -> Result<(), ProxyError> {
        use crate::proto::etcdserverpb::watch_client::WatchClient;
        use crate::proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
        let from = self.read().await?.mod_revision;
        let (_, channel) = self.ds.pick();
        let token = self.ds.token(&channel).await.map_err(ProxyError::Etcd)?;
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: Bytes::from_static(CATALOG_KEY),
                start_revision: from + 1,
                ..Default::default()
            })),
        };
        let req = own_request(
            futures::StreamExt::chain(futures::stream::iter([create]), futures::stream::pending()),
            token,
        );
        let mut stream = client!(WatchClient, channel)
            .watch(req)
            .await
            .map_err(ProxyError::Etcd)?
            .into_inner();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Some(resp) = msg.map_err(ProxyError::Etcd)? else { return Ok(()) };
                    if resp.canceled {
                        return Err(ProxyError::Catalog(format!("its watch was cancelled: {}", resp.cancel_reason)));
                    }
                    for kv in resp.events.iter().filter_map(|e| e.kv.as_ref()) {
                        match serde_json::from_slice::<Catalog>(&kv.value) {
                            Ok(c) => self.keep(&c, kv.mod_revision),
                            Err(e) => tracing::warn!(error = %e, "the gateway's catalog cannot be read"),
                        }
                    }
                }
                _ = tick.tick() => {
                    self.read().await?;
                }
            }
        }
    }

    /// Where a tenant that appears now goes: the named datastore, or the one of the pool
    /// holding the fewest keys (ties: the first by name).
    async fn home_for_new_tenants(&self) -> Result<String, ProxyError> {
        match &self.placement {
            crate::config::Placement::Named(name) => Ok(name.clone()),
            crate::config::Placement::FewestKeys => {
                let mut best: Option<(i64, String)> = None;
                for (name, ds) in &self.pool {
                    let all = Bytes::from_static(b"\0");
                    let n = crate::upstream::calls::count(ds, all.clone(), all).await?;
                    if best.as_ref().is_none_or(|(m, _)| n < *m) {
                        best = Some((n, name.clone()));
                    }
                }
                best.map(|(_, name)| name)
                    .ok_or_else(|| ProxyError::Catalog("the pool has no datastore".into()))
            }
        }
    }

    /// The catalog now (a linearizable read).
    pub async fn read(&self) -> Result<Read, ProxyError> {
        let resp = self
            .ds
            .unary(Retry::Idempotent, |ch, token| {
                let r = own_request(
                    RangeRequest {
                        key: Bytes::from_static(CATALOG_KEY),
                        ..Default::default()
                    },
                    token,
                );
                async move { client!(KvClient, ch).range(r).await }
            })
            .await?
            .into_inner();
        let (catalog, mod_revision) = match resp.kvs.first() {
            Some(kv) => (
                serde_json::from_slice(&kv.value).map_err(|e| ProxyError::Catalog(format!("cannot be read: {e}")))?,
                kv.mod_revision,
            ),
            None => (Catalog::default(), 0),
        };
        self.keep(&catalog, mod_revision);
        self.read_once.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Read {
            catalog,
            mod_revision,
            header: resp.header,
        })
    }

    /// Applies `change` to the catalog and writes it, unless it changed nothing; again
    /// from a fresh read if another replica wrote first. `change` may run more than once.
    pub async fn update<T>(
        &self,
        change: impl Fn(&mut Catalog) -> Result<T, AuthError>,
    ) -> Result<(T, Option<ResponseHeader>), ProxyError> {
        for _ in 0..MAX_CONFLICTS {
            let read = self.read().await?;
            let mut next = read.catalog.clone();
            let out = change(&mut next)?;
            if !next.unplaced().is_empty() {
                let home = self.home_for_new_tenants().await?;
                next.place_tenants(&home);
            }
            if next == read.catalog {
                return Ok((out, read.header));
            }
            let value = Bytes::from(
                serde_json::to_vec(&next).map_err(|e| ProxyError::Catalog(format!("cannot be written: {e}")))?,
            );
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: Bytes::from_static(CATALOG_KEY),
                    range_end: Bytes::new(),
                    target_union: Some(compare::TargetUnion::ModRevision(read.mod_revision)),
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: Bytes::from_static(CATALOG_KEY),
                        value,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            let resp = self
                .ds
                .unary(Retry::IfNotSent, |ch, token| {
                    let r = own_request(txn.clone(), token);
                    async move { client!(KvClient, ch).txn(r).await }
                })
                .await?
                .into_inner();
            if resp.succeeded {
                let written = resp.header.as_ref().map_or(0, |h| h.revision);
                self.keep(&next, written);
                return Ok((out, resp.header));
            }
            tracing::debug!("the gateway's catalog changed under this change; trying again");
        }
        Err(ProxyError::Catalog(format!(
            "kept changing: {MAX_CONFLICTS} tries lost to other replicas"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::authpb::Permission;

    fn perm(t: PermType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
        }
    }

    #[test]
    fn a_role_with_one_read_write_prefix_is_a_tenant_placed_once() {
        let mut c = Catalog::default();
        for name in ["a", "b", "odd", "two", "a-pods", "a-admin"] {
            c.auth.role_add(None, name).unwrap();
        }
        c.auth
            .role_grant_permission(None, "a", Some(perm(PermType::Readwrite, "/a/", "/a0")))
            .unwrap();
        c.auth
            .role_grant_permission(None, "b", Some(perm(PermType::Readwrite, "/b/", "/b0")))
            .unwrap();
        // Not a prefix, or read only, or two of them: not a tenant.
        c.auth
            .role_grant_permission(None, "odd", Some(perm(PermType::Read, "/odd/", "/odd0")))
            .unwrap();
        c.auth
            .role_grant_permission(None, "two", Some(perm(PermType::Readwrite, "/x/", "/x0")))
            .unwrap();
        c.auth
            .role_grant_permission(None, "two", Some(perm(PermType::Readwrite, "/y/", "/y0")))
            .unwrap();
        // A prefix inside a tenant's is a narrower user's role; a tenant's own prefix under
        // another role's name, an operator's.
        c.auth
            .role_grant_permission(None, "a-admin", Some(perm(PermType::Readwrite, "/a/", "/a0")))
            .unwrap();
        c.auth
            .role_grant_permission(None, "a-pods", Some(perm(PermType::Readwrite, "/a/pods/", "/a/pods0")))
            .unwrap();
        c.place_tenants("east");
        assert_eq!(c.tenants.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(c.tenants["a"].prefix, "/a/");
        c.tenants.get_mut("a").unwrap().home = "west".into();
        c.place_tenants("east");
        assert_eq!(c.tenants["a"].home, "west", "placed once");
        assert_eq!(c.tenant_of_key(b"/b/pods/x").map(|(n, _)| n.as_str()), Some("b"));
        let b = "b".to_string();
        assert_eq!(c.owner_of_range(b"/b/", b"/b0"), RangeOwner::Tenant(&b));
        assert_eq!(c.owner_of_range(b"/b/x", b""), RangeOwner::Tenant(&b));
        assert_eq!(c.owner_of_range(b"/b/x", b"\0"), RangeOwner::Several, "past the prefix");
        assert_eq!(c.owner_of_range(b"/", b"0"), RangeOwner::Several);
        assert_eq!(c.owner_of_range(b"/c/", b"/c0"), RangeOwner::NoTenant);
        assert_eq!(c.owner_of_range(b"compact_rev_key", b""), RangeOwner::NoTenant);
        assert_eq!(c.tenant_of_key(b"/c/x"), None);
        // The role goes; the tenant stays until its keys are gone.
        c.auth.role_delete(None, "a").unwrap();
        c.place_tenants("east");
        assert!(c.tenants.contains_key("a"));
        // Set aside while its keys are cleared: its prefix is nobody's, and the same role
        // again is not placed until then.
        let a = c.tenants.remove("a").unwrap();
        c.leftovers.insert("a".into(), a);
        assert_eq!(c.owner_of_range(b"/a/x", b""), RangeOwner::Several);
        c.auth.role_add(None, "a").unwrap();
        c.auth
            .role_grant_permission(None, "a", Some(perm(PermType::Readwrite, "/a/", "/a0")))
            .unwrap();
        c.place_tenants("east");
        assert!(!c.tenants.contains_key("a"), "not placed while left over");
        c.leftovers.clear();
        c.place_tenants("east");
        assert!(c.tenants.contains_key("a"), "placed afresh once cleared");
    }
}
