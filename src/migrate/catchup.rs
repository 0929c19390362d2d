//! The CatchingUp phase: follow the source from the copy's revision and apply every change
//! to the target in revision order, one target Txn per source revision (so a source Txn
//! stays atomic on the target), keeping the key map K current.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::copy::{CopyError, CopyOutcome};
use crate::error::ProxyError;
use crate::keys::KeyRange;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::{
    request_op, watch_request, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest,
};
use crate::proto::mvccpb::{event::EventType, Event};
use crate::route::revision::{CopiedKey, Translation};
use crate::upstream::client;
use crate::upstream::Datastore;

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("source: the watch was compacted at revision {0}")]
    Compacted(i64),
    #[error("source: the watch ended: {0}")]
    WatchEnded(String),
    #[error("target: {0}")]
    Target(ProxyError),
    #[error("target: the claim on its range is no longer this migration's (another migration took the target); nothing more is written there")]
    ClaimLost,
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

/// Where the catch-up stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The last source revision whose changes are on the target.
    pub applied: i64,
    /// The newest source revision known (from events and progress notifications).
    pub source: i64,
    /// The target revision of the last change applied.
    pub target: i64,
    /// The source revision of the last change applied (0: none yet).
    pub last_change: i64,
    /// The newest revision of an event received, cutover's own keys included. Events of
    /// one watch come in revision order, so everything before it has been received.
    pub events_through: i64,
}

impl Position {
    /// How many source revisions the target is behind.
    pub fn lag(&self) -> i64 {
        (self.source - self.applied).max(0)
    }
}

/// The end of the batch that starts at `start`: whole revisions, at most etcd's Txn
/// limit of distinct keys (a single revision always goes whole).
fn batch_end(events: &[Event], start: usize) -> usize {
    let rev_of = |i: usize| events[i].kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut keys: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    let mut end = start;
    while end < events.len() {
        let rev = rev_of(end);
        let mut rev_end = end + 1;
        while rev_end < events.len() && rev_of(rev_end) == rev {
            rev_end += 1;
        }
        let part = &events[end..rev_end];
        let new_keys = part
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .filter(|kv| !keys.contains(&kv.key[..]))
            .count();
        if end > start && keys.len() + new_keys > super::copy::MAX_TXN_OPS {
            break;
        }
        keys.extend(part.iter().filter_map(|e| e.kv.as_ref().map(|kv| &kv.key[..])));
        end = rev_end;
    }
    end
}

/// The last change of each key in a batch: what the target must hold after it.
fn last_per_key(events: &[Event]) -> Vec<&Event> {
    let mut last: HashMap<&[u8], usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(kv) = &e.kv {
            last.insert(&kv.key[..], i);
        }
    }
    let mut idx: Vec<usize> = last.into_values().collect();
    idx.sort_unstable();
    idx.into_iter().map(|i| &events[i]).collect()
}

/// Applies a batch of source changes (whole revisions) to the target in one Txn, each
/// key written once with its last change of the batch, and updates K to what the target
/// then holds (the source's revisions of that last change, one more target version).
async fn apply_batch(
    target: &Datastore,
    events: &[Event],
    keys: &mut HashMap<Bytes, CopiedKey>,
    lease_ids: &HashMap<i64, i64>,
    view: Option<&Translation>,
    claim: Option<&(Bytes, Bytes)>,
) -> Result<i64, CatchUpError> {
    crate::failpoint!("migrate.catchup.apply")?;
    let last = last_per_key(events);
    let ops: Vec<RequestOp> = last
        .iter()
        .filter_map(|e| {
            let kv = e.kv.as_ref()?;
            let request = if e.r#type == EventType::Delete as i32 {
                request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: kv.key.clone(),
                    ..Default::default()
                })
            } else {
                request_op::Request::RequestPut(PutRequest {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    lease: if kv.lease == 0 {
                        0
                    } else {
                        lease_ids.get(&kv.lease).copied().unwrap_or(kv.lease)
                    },
                    ..Default::default()
                })
            };
            Some(RequestOp { request: Some(request) })
        })
        .collect();
    // Only while the target's range is still claimed by this migration: a migration that
    // lost its lease may not know yet, and another one may have cleared and claimed the
    // target meanwhile.
    let req = TxnRequest {
        compare: claim
            .map(|(key, value)| super::ops::value_is(key, value.clone()))
            .into_iter()
            .collect(),
        success: ops,
        failure: vec![],
    };
    let resp = super::copy::txn(target, req).await.map_err(CatchUpError::Target)?;
    if !resp.succeeded {
        return Err(CatchUpError::ClaimLost);
    }
    let rev = resp.header.map_or(0, |h| h.revision);
    for e in last {
        let Some(kv) = &e.kv else { continue };
        let kv = &super::copy::in_client_space(view, kv);
        if e.r#type == EventType::Delete as i32 {
            keys.remove(&kv.key);
            continue;
        }
        let entry = match keys.get(&kv.key) {
            // The key exists on the target: this write updates it there (even when the
            // source deleted and created it again within the batch; K keeps the source's
            // new creation).
            Some(k) => CopiedKey {
                target_mod: rev,
                target_version: k.target_version + 1,
                source_create: kv.create_revision,
                source_mod: kv.mod_revision,
                source_version: kv.version,
                ..*k
            },
            None => super::copy::first_write(rev, kv),
        };
        keys.insert(kv.key.clone(), entry);
    }
    Ok(rev)
}

/// What to follow: the tenant range on the source, from which revision, into which target.
pub struct Follow<'a> {
    pub source: &'a Arc<Datastore>,
    pub target: &'a Arc<Datastore>,
    pub range: &'a KeyRange,
    /// Keys under this prefix are left out (cutover's own reserved keys).
    pub exclude: Option<&'a Bytes>,
    /// The first source revision to apply: the copy's revision + 1.
    pub from: i64,
    /// The source's own translation, if it has one (see `CopyOptions::view`).
    pub view: Option<&'a Translation>,
    /// Stop only once an event at or past the stop revision has arrived. etcd 3.4 may
    /// answer a progress request before it has sent every pending event, so a progress
    /// notification cannot prove that a revision has been drained; an event can. Use it
    /// when the stop revision is an event in the range (the fence write).
    pub strict: bool,
    /// The migration's shared lease map: a lease copied during the catch-up is added, so
    /// its copy is kept alive and the fence can hold it (see `MigrationLink::leases`).
    pub link: Option<&'a crate::route::MigrationLink>,
    /// The target's claim key and this migration's value in it: every write to the
    /// target is conditional on it.
    pub claim: Option<&'a (Bytes, Bytes)>,
}

/// Follows the range on the source and applies every change to the target, keeping the
/// copy's key map and lease map current, until `stop_at` names a source revision that has
/// been applied. `position` is published after every change and progress notification.
pub async fn follow(
    spec: Follow<'_>,
    copied: &mut CopyOutcome,
    mut stop_at: watch::Receiver<Option<i64>>,
    position: &watch::Sender<Position>,
) -> Result<Position, CatchUpError> {
    let Follow {
        source,
        target,
        range,
        exclude,
        from,
        view,
        strict,
        link,
        claim,
    } = spec;
    let keys = &mut copied.keys;
    let lease_ids = &mut copied.lease_ids;
    let touched = &mut copied.touched;
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: range.start.clone(),
            range_end: range.end.clone(),
            start_revision: from,
            progress_notify: true,
            ..Default::default()
        })),
    });
    let (_, channel) = source.pick();
    let mut req = tonic::Request::new(UnboundedReceiverStream::new(rx));
    if let Some(t) = source
        .token(&channel)
        .await
        .map_err(|s| CatchUpError::WatchEnded(s.message().to_string()))?
    {
        req.metadata_mut().insert("token", t);
    }
    let mut stream = client!(WatchClient, channel)
        .watch(req)
        .await
        .map_err(|s| CatchUpError::WatchEnded(s.message().to_string()))?
        .into_inner();

    let mut pos = Position {
        applied: from - 1,
        source: from - 1,
        target: 0,
        last_change: 0,
        events_through: from - 1,
    };
    let mut progress_asked = false;
    // Progress requests keep `applied` close to the source even when the tenant is idle
    // and the source busy with others, so the lag says how far behind the target is.
    // A request still unanswered at the next tick is sent again: etcd 3.5 drops a
    // progress request that arrives while any watch on the server is still catching up
    // (as this one is for up to 100 ms after it starts in the past), and never answers
    // it; a stop that waits for that answer would wait forever. etcd 3.4 answers every
    // request at once.
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(100));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = *stop_at.borrow();
        if let Some(stop) = stop {
            if pos.applied >= stop && (!strict || pos.events_through >= stop) {
                return Ok(pos);
            }
            if !progress_asked {
                // Learn the source's revision even if the tenant is idle.
                let _ = tx.send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
                });
                progress_asked = true;
            }
        }
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = stop_at.changed() => { progress_asked = false; continue; }
            _ = ticker.tick() => {
                let _ = tx.send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
                });
                progress_asked = true;
                continue;
            }
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Err(CatchUpError::WatchEnded("the source closed the stream".into())),
            Err(s) => return Err(CatchUpError::WatchEnded(s.message().to_string())),
        };
        if resp.compact_revision > 0 {
            return Err(CatchUpError::Compacted(resp.compact_revision));
        }
        if resp.canceled {
            return Err(CatchUpError::WatchEnded(resp.cancel_reason));
        }
        let header_rev = resp.header.map_or(0, |h| h.revision);
        tracing::trace!(
            header = header_rev,
            events = resp.events.len(),
            first = resp
                .events
                .first()
                .and_then(|e| e.kv.as_ref())
                .map_or(0, |kv| kv.mod_revision),
            created = resp.created,
            "catch-up: a watch response"
        );
        // Only a bare progress notification says "nothing pending up to the header": a
        // create answer or a batch of events of a watch still catching up does not.
        let is_progress = !resp.created && resp.events.is_empty();
        if let Some(last) = resp.events.last().and_then(|e| e.kv.as_ref()) {
            pos.events_through = pos.events_through.max(last.mod_revision);
        }
        // Events arrive in revision order; apply each revision as one Txn.
        let events: Vec<Event> = resp
            .events
            .into_iter()
            .filter(|e| match (&e.kv, exclude) {
                (Some(kv), Some(skip)) => !kv.key.starts_with(skip),
                _ => true,
            })
            .collect();
        // Whole revisions, several at a time: a source Txn stays atomic on the target,
        // and a batch never holds a key twice, so every change of a key is a write of
        // its own there (K follows each one), but changes of different keys made at
        // different revisions share one target Txn. One Txn per source revision could
        // not keep up with a busy tenant.
        let mut start = 0;
        while start < events.len() {
            let end = batch_end(&events, start);
            // Leases new since the copy go first, with the source's ID when free.
            for e in &events[start..end] {
                if let Some(kv) = &e.kv {
                    if kv.lease != 0 && !lease_ids.contains_key(&kv.lease) {
                        // A grant mirrored by the data path is on the target already.
                        let mirrored = link.and_then(|l| l.leases.lock().get(&kv.lease).copied());
                        let id = match mirrored {
                            Some(id) => id,
                            None => super::copy::copy_lease(source, target, kv.lease).await?,
                        };
                        lease_ids.insert(kv.lease, id);
                        if let Some(link) = link {
                            link.leases.lock().insert(kv.lease, id);
                        }
                    }
                }
            }
            pos.target = apply_batch(target, &events[start..end], keys, lease_ids, view, claim).await?;
            for e in &events[start..end] {
                if let Some(kv) = &e.kv {
                    touched.insert(kv.key.clone());
                }
            }
            let rev = events[end - 1].kv.as_ref().map_or(0, |kv| kv.mod_revision);
            pos.applied = rev;
            pos.last_change = rev;
            start = end;
        }
        // A response (events or progress) means the source has nothing older pending.
        pos.source = pos.source.max(header_rev);
        if is_progress && header_rev > pos.applied {
            // A progress notification: nothing of the tenant changed up to header_rev.
            pos.applied = header_rev;
        }
        if is_progress {
            progress_asked = false;
        }
        let _ = position.send(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn ev(key: &'static str, rev: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: Bytes::from_static(key.as_bytes()),
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn batches_keep_revisions_whole_and_write_each_key_once() {
        // a@1, b@2, (c, d)@3 as one Txn, a@4, e@5: one batch, a written with its last change.
        let events = vec![ev("a", 1), ev("b", 2), ev("c", 3), ev("d", 3), ev("a", 4), ev("e", 5)];
        assert_eq!(batch_end(&events, 0), 6);
        let last: Vec<(&[u8], i64)> = last_per_key(&events)
            .iter()
            .map(|e| (&e.kv.as_ref().unwrap().key[..], e.kv.as_ref().unwrap().mod_revision))
            .collect();
        assert_eq!(
            last,
            [(&b"b"[..], 2), (b"c", 3), (b"d", 3), (b"a", 4), (b"e", 5)],
            "each key once, with its last change"
        );
        // The Txn limit bounds the distinct keys of a batch, but one big revision goes whole.
        let keys: Vec<&'static str> = (0..300)
            .map(|i| &*Box::leak(format!("k{i}").into_boxed_str()))
            .collect();
        let many: Vec<Event> = keys.iter().enumerate().map(|(i, k)| ev(k, i as i64 + 1)).collect();
        assert_eq!(batch_end(&many, 0), super::super::copy::MAX_TXN_OPS);
        let one_txn: Vec<Event> = keys.iter().map(|k| ev(k, 7)).collect();
        assert_eq!(batch_end(&one_txn, 0), 300);
        // Hot keys: hundreds of revisions of a few keys make one batch.
        let hot: Vec<Event> = (0..500).map(|i| ev(keys[i % 4], i as i64 + 1)).collect();
        assert_eq!(batch_end(&hot, 0), 500);
        assert_eq!(last_per_key(&hot).len(), 4);
    }
}
