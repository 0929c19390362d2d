//! Pruning the translation's key map. A key's entry in K matters only while the datastore
//! holds the key's copied incarnation (its create_revision below T): once the key has been
//! deleted, it never comes back as that incarnation (anything written later is above T
//! and translates by arithmetic), so the entry can go. Nothing else can: a key updated
//! after the commit keeps its copied create_revision and counts its version from the
//! copied one, and clients must still see the source's values of both.
//!
//! Every replica prunes its own key map: it reads the tenant's keys (without values) at one
//! revision and keeps the entries whose incarnation it saw. The answers do not change, so
//! the map's contents are replaced in place, under every holder of the translation (open
//! streams too), and the route stays as it is.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::ProxyError;
use crate::keys::prefix_end;
use crate::metrics::Metrics;
use crate::proto::etcdserverpb::RangeRequest;
use crate::route::keymap::{Frozen, Liveness};
use crate::route::revision::Translation;
use crate::route::Router;
use crate::upstream::Datastore;

/// Keys read per page.
const PAGE: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("reading the tenant's keys: {0}")]
    Datastore(#[from] ProxyError),
    #[error("rebuilding the key map: {0}")]
    Rebuild(String),
}

/// What one pass did.
#[derive(Debug, Clone)]
pub struct Pruned {
    pub before: usize,
    pub after: usize,
    /// The translation the pass pruned.
    pub now: Arc<Translation>,
}

/// How many keys the record in the datastore holds, as far as this replica knows: K as
/// loaded, or as this replica last rewrote it.
#[derive(Default)]
struct Persisted {
    /// (T of the record, its keys).
    known: Option<(i64, usize)>,
}

impl Persisted {
    /// Rewrites the record's K once a tenth of it (or all of it) is gone from memory, so
    /// that a replica that starts loads what is left, and the datastore keeps no more.
    async fn rewrite_if_worth_it(&mut self, router: &Router, p: &Pruned) {
        let t = p.now.t;
        let persisted = match self.known {
            Some((known_t, n)) if known_t == t => n,
            _ => p.before,
        };
        self.known = Some((t, persisted));
        let gone = persisted.saturating_sub(p.after);
        if gone == 0 || (p.after > 0 && gone * 10 < persisted) {
            return;
        }
        let route = router.route();
        if !route.translation.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &p.now)) {
            return;
        }
        let tenant = router.fence().tenant_prefix.clone();
        match crate::migrate::record::rewrite_keys(&route.datastore, &tenant, t, &p.now.keys).await {
            Ok(written) => {
                // Written by this replica or by another one that pruned as much: either
                // way the record no longer holds what this replica dropped.
                self.known = Some((t, p.after));
                tracing::info!(
                    keys = p.after,
                    by_this_replica = written,
                    "rewrote the translation record's key map"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not rewrite the translation record's key map; trying again later")
            }
        }
    }
}

/// Prunes every `every` (never if zero), and keeps the key map's gauges current.
pub fn spawn(router: Arc<Router>, metrics: Arc<Metrics>, every: Duration, background: &crate::tasks::Background) {
    background.spawn(async move {
        let mut changes = router.changes();
        let mut next = (!every.is_zero()).then(|| tokio::time::Instant::now() + every);
        let mut persisted = Persisted::default();
        loop {
            report(&router, &metrics);
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = due => {
                    next = Some(tokio::time::Instant::now() + every);
                    match prune_once(&router).await {
                        Ok(Some(p)) => {
                            if p.after < p.before {
                                metrics.translation_pruned.inc_by((p.before - p.after) as u64);
                                tracing::info!(before = p.before, after = p.after, "pruned the translation's key map");
                                crate::memory::return_free_memory().await;
                            }
                            persisted.rewrite_if_worth_it(&router, &p).await;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "could not prune the translation's key map; trying again later"),
                    }
                }
            }
        }
    });
}

fn report(router: &Router, metrics: &Metrics) {
    let route = router.route();
    let (keys, bytes) = route
        .translation
        .as_ref()
        .map_or((0, 0), |t| (t.keys.len(), t.keys.heap_bytes()));
    metrics.translation_keys.set(keys as i64);
    metrics.translation_bytes.set(bytes as i64);
}

/// One pass: `None` when the route has no key map to prune.
pub async fn prune_once(router: &Router) -> Result<Option<Pruned>, PruneError> {
    let route = router.route();
    let Some(seen) = route.translation.clone() else {
        return Ok(None);
    };
    if seen.keys.is_empty() || route.stranded.is_some() {
        return Ok(None);
    }
    let tenant = router.fence().tenant_prefix.clone();
    let datastore = route.datastore.clone();
    // Nothing of the route is held while the datastore is read.
    drop(route);
    let frozen = seen.keys.frozen();
    let before = frozen.len();
    let live = scan(&datastore, &tenant, &frozen, seen.t).await?;
    if live.count() == before {
        return Ok(Some(Pruned {
            before,
            after: before,
            now: seen,
        }));
    }
    // Rebuilding a large map takes a while: off the runtime's threads.
    let (frozen, pruned) = tokio::task::spawn_blocking(move || {
        let pruned = frozen.alive_only(&live);
        (frozen, pruned)
    })
    .await
    .map_err(|e| PruneError::Rebuild(e.to_string()))?;
    let after = pruned.len();
    // In place: every holder of this translation (open streams too) gets the pruned map,
    // and the old one is freed once no lookup still reads it.
    let replaced = seen.keys.replace_if(&frozen, &pruned);
    drop(frozen);
    Ok(Some(Pruned {
        before,
        after: if replaced { after } else { before },
        now: seen,
    }))
}

/// Which entries of K the datastore still holds, read at one revision.
async fn scan(datastore: &Datastore, tenant: &Bytes, keys: &Frozen, t: i64) -> Result<Liveness, ProxyError> {
    let mut live = keys.liveness();
    let end = prefix_end(tenant);
    let mut from = tenant.clone();
    let mut at = 0;
    loop {
        let req = RangeRequest {
            key: from.clone(),
            range_end: end.clone(),
            limit: PAGE,
            revision: at,
            keys_only: true,
            ..Default::default()
        };
        let resp = super::ops::range(datastore, req).await?;
        if at == 0 {
            at = resp.header.as_ref().map_or(0, |h| h.revision);
        }
        for kv in &resp.kvs {
            if kv.create_revision < t {
                keys.mark_alive(&mut live, &kv.key, kv.create_revision);
            }
        }
        match resp.kvs.last() {
            Some(last) if resp.more => {
                let mut next = last.key.to_vec();
                next.push(0);
                from = Bytes::from(next);
            }
            _ => return Ok(live),
        }
    }
}
