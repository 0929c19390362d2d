//! cutover's keys in a datastore, under `<prefix>\0cutover/`: the migration lock, the
//! fence (lease-bound while a migration is fenced) and the permanent "moved" marker that
//! replaces the fence at the commit. Their values are JSON, readable with etcdctl.

use bytes::{Bytes, BytesMut};

use super::ops;
use crate::error::ProxyError;
use crate::proto::etcdserverpb::{request_op, response_op, RangeRequest, RequestOp, TxnRequest};
use crate::route::fence::{reserved_prefix, Guard};
use crate::upstream::Datastore;

pub use crate::route::fence::Marker;

pub fn lock_key(tenant_prefix: &[u8]) -> Bytes {
    let mut b = BytesMut::from(&reserved_prefix(tenant_prefix)[..]);
    b.extend_from_slice(b"lock");
    b.freeze()
}

/// Where a migration claims the target's range for its copy.
pub fn claim_key(tenant_prefix: &[u8]) -> Bytes {
    let mut b = BytesMut::from(&reserved_prefix(tenant_prefix)[..]);
    b.extend_from_slice(b"claim");
    b.freeze()
}

fn range_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

fn first_value(resp: &crate::proto::etcdserverpb::TxnResponse) -> String {
    resp.responses
        .first()
        .and_then(|r| match &r.response {
            Some(response_op::Response::ResponseRange(x)) => x.kvs.first().map(|kv| kv.value.clone()),
            _ => None,
        })
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

/// What a put-if-absent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutIfAbsent {
    /// Written, at this revision.
    Written(i64),
    /// The key existed; this is its value.
    Held(String),
}

/// Writes `marker` at `key` unless the key exists.
pub async fn put_if_absent(
    ds: &Datastore,
    key: &Bytes,
    marker: &Marker,
    lease: i64,
) -> Result<PutIfAbsent, ProxyError> {
    let resp = ops::txn(
        ds,
        TxnRequest {
            compare: vec![ops::version_is(key, 0)],
            success: vec![ops::put_op(key.clone(), marker.to_bytes(), lease)],
            failure: vec![range_op(key)],
        },
    )
    .await?;
    if resp.succeeded {
        Ok(PutIfAbsent::Written(resp.header.map_or(0, |h| h.revision)))
    } else {
        Ok(PutIfAbsent::Held(first_value(&resp)))
    }
}

/// What the source answered to a commit Txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitAnswer {
    /// The fence was ours and is now the "moved" marker.
    Applied,
    /// The fence key did not hold our fence; this is what it held (None: nothing, or a
    /// value that is not a marker).
    Refused(Option<Marker>),
}

/// Sends the commit Txn once: replaces our fence by the permanent marker, only if the
/// fence is still ours. An error means the outcome is unknown (see phase/committing.rs).
pub async fn try_commit(
    ds: &Datastore,
    fence_key: &Bytes,
    fenced: &Marker,
    moved: &Marker,
) -> Result<CommitAnswer, ProxyError> {
    let req = TxnRequest {
        compare: vec![ops::value_is(fence_key, fenced.to_bytes())],
        success: vec![ops::put_op(fence_key.clone(), moved.to_bytes(), 0)],
        failure: vec![range_op(fence_key)],
    };
    let sent = ops::txn(ds, req).await;
    if let Err(e) = crate::failpoint!("migrate.commit.answer") {
        if e.answer_lost() {
            return Err(ProxyError::OutcomeUnknown {
                datastore: ds.name.clone(),
                endpoint: "failpoint".into(),
                detail: e.to_string(),
            });
        }
    }
    let resp = sent?;
    if resp.succeeded {
        return Ok(CommitAnswer::Applied);
    }
    Ok(CommitAnswer::Refused(Marker::parse(first_value(&resp).as_bytes())))
}

/// Deletes `key` if it still holds `value`; returns whether it did.
pub async fn delete_if(ds: &Datastore, key: &Bytes, value: &Bytes) -> Result<bool, ProxyError> {
    let resp = ops::txn(
        ds,
        TxnRequest {
            compare: vec![ops::value_is(key, value.clone())],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    crate::proto::etcdserverpb::DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    },
                )),
            }],
            failure: vec![],
        },
    )
    .await?;
    Ok(resp.succeeded)
}

/// Whether a "moved" marker found where the tenant's route (whose translation starts at
/// `epoch`) leads is stale: written before the commit that brought the tenant back.
pub fn is_stale(marker: &Marker, epoch: i64) -> bool {
    matches!(marker, Marker::Moved { at, .. } if *at > 0 && *at <= epoch)
}

pub async fn read_value(ds: &Datastore, key: &Bytes) -> Result<Option<Bytes>, ProxyError> {
    let r = ops::range(
        ds,
        RangeRequest {
            key: key.clone(),
            ..Default::default()
        },
    )
    .await?;
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// The marker at `key`, if any.
pub async fn read_key(ds: &Datastore, key: &Bytes) -> Result<Option<Marker>, ProxyError> {
    Ok(read_value(ds, key).await?.as_deref().and_then(Marker::parse))
}

/// The marker in a datastore's fence key, if any.
pub async fn read(ds: &Datastore, guard: &Guard) -> Result<Option<Marker>, ProxyError> {
    Ok(read_value(ds, guard.fence_key())
        .await?
        .as_deref()
        .and_then(Marker::parse))
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("datastore {from:?} says the tenant moved to {to:?}, which is not in this proxy's dataStores")]
    UnknownTarget { from: String, to: String },
    #[error("the \"moved\" markers form a loop through {0:?}")]
    Loop(String),
    #[error("datastore {name:?}: {source}")]
    Datastore {
        name: String,
        #[source]
        source: ProxyError,
    },
    #[error("datastore {name:?}: {source}")]
    Record {
        name: String,
        #[source]
        source: super::record::RecordError,
    },
}

/// Follows "moved" markers from the configured datastore to the one that holds the tenant
/// now, and routes there with its translation. A proxy restarted after a commit with its
/// old configuration thus serves from the target.
pub async fn follow_markers(router: &crate::route::Router) -> Result<(), ResolveError> {
    let route = router.route();
    let from = route.datastore_name.clone();
    let result = resolve_and_switch(router, &from).await;
    if let Err((Some(moved_to), e)) = &result {
        // The tenant left `from`: serving it from there would be stale, so serve nothing
        // until the new home can be used (unless the route changed meanwhile).
        router.strand(route.generation, moved_to, e.to_string());
    }
    result.map_err(|(_, e)| e)
}

/// Follows the markers from `from`; on failure, also says where the tenant went if it is
/// known to have left `from`.
async fn resolve_and_switch(router: &crate::route::Router, from: &str) -> Result<(), (Option<String>, ResolveError)> {
    let mut name = from.to_string();
    let left = |name: &String| (name != from).then(|| name.clone());
    let mut seen = vec![name.clone()];
    let guard = router.fence().guard.clone();
    // Markers newer than the route's own translation lead on; an older one is stale.
    let mut epoch = router.route().translation.as_ref().map_or(0, |t| t.s);
    loop {
        let ds = router.datastores()[&name].clone();
        let raw = read_value(&ds, guard.fence_key()).await.map_err(|source| {
            (
                left(&name),
                ResolveError::Datastore {
                    name: name.clone(),
                    source,
                },
            )
        })?;
        let marker = raw.as_deref().and_then(Marker::parse);
        match marker {
            Some(m @ Marker::Moved { .. }) if is_stale(&m, epoch) => {
                // The tenant came back here after it had left: that marker is history.
                tracing::info!(datastore = %name, epoch, "removing a stale \"moved\" marker from the tenant's current datastore");
                if let Some(raw) = &raw {
                    if let Err(e) = delete_if(&ds, guard.fence_key(), raw).await {
                        tracing::warn!(datastore = %name, error = %e, "could not remove a stale marker");
                    }
                }
                break;
            }
            Some(Marker::Moved { to, at, .. }) => {
                if !router.datastores().contains_key(&to) {
                    return Err((None, ResolveError::UnknownTarget { from: name, to }));
                }
                if seen.contains(&to) && at == 0 {
                    return Err((None, ResolveError::Loop(to)));
                }
                if seen.len() > router.datastores().len() * 4 {
                    return Err((None, ResolveError::Loop(to)));
                }
                tracing::info!(from = %name, to = %to, at, "the tenant moved; following the marker");
                seen.push(to.clone());
                epoch = epoch.max(at);
                name = to;
            }
            _ => break,
        }
    }
    let ds = router.datastores()[&name].clone();
    let loading = std::time::Instant::now();
    let translation = super::record::load(&ds, &router.fence().tenant_prefix)
        .await
        .map_err(|source| {
            (
                left(&name),
                ResolveError::Record {
                    name: name.clone(),
                    source,
                },
            )
        })?;
    let current = router.route();
    let unchanged = name == current.datastore_name
        && match (&translation, &current.translation) {
            (Some(a), Some(b)) => (a.s, a.t, a.l) == (b.s, b.t, b.l),
            (None, None) => true,
            _ => false,
        };
    if !unchanged && (translation.is_some() || name != current.datastore_name) {
        if let Some(t) = &translation {
            tracing::info!(
                datastore = %name,
                s = t.s,
                t = t.t,
                l = t.l,
                keys = t.keys.len(),
                memory_bytes = t.keys.heap_bytes(),
                load_ms = loading.elapsed().as_secs_f64() * 1000.0,
                "loaded the revision translation"
            );
        }
        // Every name here was checked against the configured datastores above.
        let loaded = translation.is_some();
        router
            .switch_to(&name, translation.map(std::sync::Arc::new))
            .map_err(|e| {
                (
                    left(&name),
                    ResolveError::UnknownTarget {
                        from: from.to_string(),
                        to: e.0,
                    },
                )
            })?;
        if loaded {
            // Reading the record took far more memory than the key map keeps.
            crate::memory::return_free_memory().await;
        }
    }
    Ok(())
}

/// What a replica that does not lead the migration does while one runs.
#[derive(Default)]
struct FollowerLink {
    link: Option<std::sync::Arc<crate::route::MigrationLink>>,
    mirror: Option<tokio::task::JoinHandle<()>>,
}

impl FollowerLink {
    /// Joins the migration to `to`: lease grants are mirrored to it, and lease changes
    /// wait while the source is fenced, as on the leading replica.
    fn join(&mut self, router: &crate::route::Router, to: &str, fenced: bool) {
        if let Some(link) = &self.link {
            if fenced {
                let _ = link.fenced.send(true);
            }
            return;
        }
        // The leading replica has a link of its own.
        if router.link().is_some() {
            return;
        }
        let Some(target) = router.datastores().get(to).cloned() else {
            return;
        };
        let link = std::sync::Arc::new(crate::route::MigrationLink::new(target));
        let _ = link.fenced.send(fenced);
        router.set_link(Some(link.clone()));
        self.mirror = Some(ops::mirror_leases(router.route().datastore.clone(), link.clone()));
        tracing::info!(to, fenced, "following a migration led by another replica");
        self.link = Some(link);
    }

    fn unfence(&self) {
        if let Some(link) = &self.link {
            let _ = link.fenced.send(false);
        }
    }

    /// The migration ended (committed, released, or its leader died): held lease changes
    /// go on, on whatever route is current.
    fn leave(&mut self, router: &crate::route::Router) {
        if let Some(m) = self.mirror.take() {
            m.abort();
        }
        if let Some(link) = self.link.take() {
            if router.link().is_some_and(|l| std::sync::Arc::ptr_eq(&l, &link)) {
                router.set_link(None);
            }
            let _ = link.fenced.send(false);
        }
    }
}

/// Watches the authoritative datastore's lock and fence keys. A replica that does not lead
/// the migration follows it: it mirrors its clients' lease grants to the target and holds
/// their lease changes while the source is fenced, and it switches to the target as soon
/// as the "moved" marker appears, moving its own watches and keep-alives, instead of
/// holding its writes until a restart.
pub fn spawn_follower(router: std::sync::Arc<crate::route::Router>, background: &crate::tasks::Background) {
    use crate::proto::etcdserverpb::watch_client::WatchClient;
    use crate::proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
    let me = super::instance_name();
    background.spawn(async move {
        let mut changes = router.changes();
        let mut follower = FollowerLink::default();
        let fence_key = router.fence().guard.fence_key().clone();
        let lock = lock_key(&router.fence().tenant_prefix);
        // What one marker key says now: `None` when it was deleted (or expired).
        let on_marker = |follower: &mut FollowerLink, key: &[u8], marker: Option<Marker>| -> Option<String> {
            match marker {
                Some(Marker::Moved { to, .. }) => return Some(to),
                Some(Marker::Lock { to, leader, .. }) if leader != me => follower.join(&router, &to, false),
                Some(Marker::Fenced { to, .. }) => follower.join(&router, &to, true),
                None if key == &fence_key[..] => follower.unfence(),
                None if key == &lock[..] => follower.leave(&router),
                _ => {}
            }
            None
        };
        loop {
            // Only what this loop needs of the route: the watch below lasts as long as
            // the route, and holding the route itself would keep its translation alive
            // after pruning replaced it.
            let (ds, generation, datastore_name) = {
                let route = router.route();
                (route.datastore.clone(), route.generation, route.datastore_name.clone())
            };
            let watched = async {
                let (_, channel) = ds.pick();
                let token = ds.token(&channel).await.ok().flatten();
                let create = |key: &Bytes| WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                        key: key.clone(),
                        ..Default::default()
                    })),
                };
                let req = crate::upstream::own_request(
                    futures::StreamExt::chain(
                        futures::stream::iter([create(&lock), create(&fence_key)]),
                        futures::stream::pending(),
                    ),
                    token,
                );
                let mut stream = crate::upstream::client!(WatchClient, channel)
                    .watch(req)
                    .await?
                    .into_inner();
                // What was written before the watch started is read once here.
                for key in [&lock, &fence_key] {
                    let now = read_key(&ds, key).await.map_err(|e| e.to_status())?;
                    if let Some(to) = on_marker(&mut follower, key, now) {
                        return Ok::<Option<String>, tonic::Status>(Some(to));
                    }
                }
                while let Some(resp) = stream.message().await? {
                    for e in &resp.events {
                        let Some(kv) = e.kv.as_ref() else { continue };
                        let marker = if e.r#type == crate::proto::mvccpb::event::EventType::Delete as i32 {
                            None
                        } else {
                            Marker::parse(&kv.value)
                        };
                        if let Some(to) = on_marker(&mut follower, &kv.key, marker) {
                            return Ok(Some(to));
                        }
                    }
                }
                Ok(None)
            };
            let outcome = tokio::select! {
                r = watched => r,
                _ = changes.changed() => continue,
                // A request found the tenant moved before the watch told us: look now.
                _ = router.nudged() => {
                    match read(&ds, &router.fence().guard).await {
                        Ok(Some(Marker::Moved { to, .. })) => Ok(Some(to)),
                        _ => continue,
                    }
                }
            };
            match outcome {
                Ok(Some(to)) => {
                    // The migrating proxy swaps its own route: when it runs in this process,
                    // give it all the time it needs. A follower switches at once, and so
                    // does a leader still finishing a migration that already took it to
                    // the store this marker is on: the marker is another replica's.
                    let leads_here = follower.link.is_none()
                        && router
                            .link()
                            .is_some_and(|l| l.target.name == to && l.target.name != datastore_name);
                    if leads_here {
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), changes.changed()).await;
                    }
                    let _ = crate::failpoint!("follower.switch");
                    if router.route().generation == generation {
                        if let Err(e) = follow_markers(&router).await {
                            tracing::warn!(to, error = %e, "the tenant moved, but its new datastore cannot be used yet; refusing requests and retrying");
                            follower.leave(&router);
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                    follower.leave(&router);
                }
                Ok(None) | Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            }
        }
    });
}
