//! Which datastore is authoritative now.
//!
//! Every request asks the router for the current [`Route`] once, and uses that snapshot for
//! its whole life. The route is swapped atomically (arc-swap), so a reader never waits and
//! never sees half a change. A committed migration puts its revision translation in the
//! route; long-lived streams (watches, keep-alives) learn of a swap through
//! [`Router::changes`] and move themselves to the new datastore.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

pub mod fence;
pub mod keymap;
pub mod proof;
pub mod revision;
pub mod scope;
pub mod translate;

use crate::config::FenceMode;
use crate::upstream::Datastore;
use fence::Guard;
use revision::Translation;

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
    /// How the datastore's revisions map to the ones clients see; `None` when they are
    /// the same (the tenant never moved, or only through stores sharing its history).
    pub translation: Option<Arc<Translation>>,
    /// Bumped on every swap, so a stream can tell that it is on an old route.
    pub generation: u64,
    /// When this route was taken (Unix ms): how long replicas took to follow a commit.
    pub since_unix_ms: u64,
    /// Set when the tenant has moved away from `datastore` but its new home cannot be used
    /// yet (unreachable, or its translation unreadable): requests are refused rather than
    /// served stale from, or written to, the old store.
    pub stranded: Option<Stranded>,
    /// What this replica has proven about the tenant still living on `datastore`, for
    /// answers that carry no fence read of their own (see [`proof`]).
    pub proof: Arc<proof::Proof>,
}

impl Route {
    /// Refuses requests on a stranded route, as for a datastore with no reachable endpoint
    /// (clients retry that, and nothing was sent anywhere).
    pub fn usable(&self) -> Result<(), crate::error::ProxyError> {
        match &self.stranded {
            None => Ok(()),
            Some(s) => Err(crate::error::ProxyError::NoEndpoint {
                datastore: s.moved_to.clone(),
                detail: format!(
                    "the tenant moved there from {:?}, which no longer serves it: {}",
                    self.datastore_name, s.reason
                ),
            }),
        }
    }
}

/// Why a replica serves nothing: the datastore the tenant moved to, and the last error.
#[derive(Debug, Clone)]
pub struct Stranded {
    pub moved_to: String,
    pub reason: String,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the data path must do for a migration in progress: mirror lease grants and
/// revokes to the target, and hold lease changes while the tenant is fenced.
pub struct MigrationLink {
    pub target: Arc<Datastore>,
    /// Source lease ID -> target lease ID, for every lease the target has a copy of.
    pub leases: parking_lot::Mutex<std::collections::HashMap<i64, i64>>,
    /// True while the source holds the fence (lease changes wait or are refused).
    pub fenced: watch::Sender<bool>,
    /// The highest revision a client asked to compact while the migration ran (in the
    /// client's space): applied to the authoritative store when it ends.
    pub deferred_compact: parking_lot::Mutex<Option<i64>>,
}

impl MigrationLink {
    pub fn new(target: Arc<Datastore>) -> Self {
        MigrationLink {
            target,
            leases: Default::default(),
            fenced: watch::channel(false).0,
            deferred_compact: parking_lot::Mutex::new(None),
        }
    }

    pub fn defer_compaction(&self, revision: i64) {
        let mut d = self.deferred_compact.lock();
        *d = Some(d.map_or(revision, |r| r.max(revision)));
    }

    pub fn deferred_compaction(&self) -> Option<i64> {
        self.deferred_compact.lock().take()
    }
}

pub struct Router {
    current: ArcSwap<Route>,
    datastores: BTreeMap<String, Arc<Datastore>>,
    fence: FencePolicy,
    scope: scope::Scope,
    changes: watch::Sender<u64>,
    link: ArcSwapOption<MigrationLink>,
    /// Rung by a request that found the tenant moved while this route still points at
    /// the old store: the marker follower looks at once instead of at its next event.
    nudge: tokio::sync::Notify,
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
                translation: None,
                generation: 0,
                since_unix_ms: now_unix_ms(),
                stranded: None,
                proof: Default::default(),
            }),
            datastores,
            scope: scope::Scope::new(&fence.tenant_prefix),
            fence,
            changes: watch::channel(0).0,
            link: ArcSwapOption::empty(),
            nudge: tokio::sync::Notify::new(),
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

    /// Makes `name` the authoritative datastore, with its translation, for every request
    /// that starts after this; open streams are told through [`Router::changes`]. A commit
    /// is the truth: it replaces whatever route is current (a swap, not a load and a
    /// store, so two writers cannot lose each other's generation).
    pub fn switch_to(&self, name: &str, translation: Option<Arc<Translation>>) -> Result<(), UnknownDatastore> {
        let ds = self
            .datastores
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownDatastore(name.to_string()))?;
        let since_unix_ms = now_unix_ms();
        let swapped = self.current.rcu(|cur| Route {
            datastore_name: name.to_string(),
            datastore: ds.clone(),
            translation: translation.clone(),
            generation: cur.generation + 1,
            since_unix_ms,
            stranded: None,
            proof: Default::default(),
        });
        self.publish(swapped.generation + 1);
        Ok(())
    }

    /// The tenant moved to `moved_to`, which cannot be used yet: every request is refused
    /// (streams too, as they learn of the change) until [`Router::switch_to`] succeeds.
    /// Only if the route is still generation `seen` (the one the caller found stale): a
    /// switch that won the race is never undone by a late strand.
    pub fn strand(&self, seen: u64, moved_to: &str, reason: String) -> bool {
        let mut stranded = false;
        let prev = self.current.rcu(|cur| {
            stranded = false;
            if cur.generation != seen
                || cur
                    .stranded
                    .as_ref()
                    .is_some_and(|s| s.moved_to == moved_to && s.reason == reason)
            {
                return Arc::clone(cur);
            }
            stranded = true;
            Arc::new(Route {
                datastore_name: cur.datastore_name.clone(),
                datastore: cur.datastore.clone(),
                translation: cur.translation.clone(),
                generation: cur.generation + 1,
                since_unix_ms: cur.since_unix_ms,
                stranded: Some(Stranded {
                    moved_to: moved_to.to_string(),
                    reason: reason.clone(),
                }),
                proof: cur.proof.clone(),
            })
        });
        if stranded {
            self.publish(prev.generation + 1);
        }
        stranded
    }

    /// Tells the streams of generation `generation`. Two swappers may get here in either
    /// order; the newest generation wins, so the value a stream sees never goes back.
    fn publish(&self, generation: u64) {
        self.changes.send_if_modified(|latest| {
            let newer = generation > *latest;
            if newer {
                *latest = generation;
            }
            newer
        });
    }

    /// A request saw the "moved" marker on the store of route `generation`.
    pub fn nudge(&self, generation: u64) {
        if self.current.load().generation == generation {
            self.nudge.notify_one();
        }
    }

    /// Completes when a request has seen the tenant moved (see [`Router::nudge`]).
    pub async fn nudged(&self) {
        self.nudge.notified().await
    }

    /// Notified with the new generation after every swap.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The migration in progress, if any.
    pub fn link(&self) -> Option<Arc<MigrationLink>> {
        self.link.load_full()
    }

    pub fn set_link(&self, link: Option<Arc<MigrationLink>>) {
        self.link.store(link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let mut stores = BTreeMap::new();
        for (name, port) in [("a", 1), ("b", 2)] {
            let cfg = crate::config::DataStore {
                name: name.into(),
                endpoints: vec![format!("http://127.0.0.1:{port}")],
                tls: None,
                basic_auth: None,
            };
            stores.insert(name.to_string(), Datastore::new(&cfg, metrics.clone()).unwrap());
        }
        let fence = FencePolicy {
            tenant_prefix: bytes::Bytes::from_static(b"/t/"),
            guard: Guard::new(b"/t/"),
            mode: FenceMode::Hold,
            hold_timeout: std::time::Duration::from_secs(1),
        };
        Router::new(stores, "a", fence).unwrap()
    }

    #[tokio::test]
    async fn a_strand_decided_before_a_switch_does_not_undo_it() {
        let r = router();
        let seen = r.route().generation;
        // The commit wins the race: the route moves to b.
        r.switch_to("b", None).unwrap();
        // A follower that found "a" stale before the switch now strands it: too late.
        assert!(!r.strand(seen, "b", "unreachable".into()));
        let route = r.route();
        assert_eq!(route.datastore_name, "b");
        assert!(route.stranded.is_none());
        assert_eq!(route.generation, seen + 1);
    }

    #[tokio::test]
    async fn every_swap_gets_its_own_generation_and_notification() {
        let r = Arc::new(router());
        let mut changes = r.changes();
        let seen = r.route().generation;
        assert!(r.strand(seen, "b", "unreachable".into()));
        assert!(
            !r.strand(seen, "b", "unreachable".into()),
            "the same strand twice is one change"
        );
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let r = r.clone();
                std::thread::spawn(move || r.switch_to(if i % 2 == 0 { "a" } else { "b" }, None).unwrap())
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(r.route().generation, seen + 1 + 8, "no swap lost another's generation");
        assert!(r.route().stranded.is_none());
        assert_eq!(*changes.borrow_and_update(), seen + 9);
    }
}
