//! Watch: each client stream gets one stream to the datastore, and the proxy keeps its own
//! table of the watches on it (what each asked for and the next revision it has not seen).
//!
//! That table is what lets a watch outlive its upstream stream: when the connection to an
//! endpoint breaks, every watch is created again on another endpoint with the same
//! watch_id, starting at the first revision its client has not received, so the client
//! sees neither a gap nor a duplicate, and no cancel.
//!
//! The same table moves every watch to a new datastore when a migration commits: the
//! session lets the old stream deliver everything up to the commit (a progress request
//! answers once it has), then creates each watch on the target from its next revision,
//! translated, and translates the target's answers back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use tonic::{Code, Request, Response, Status, Streaming};

use super::routed::KeyOwner;
use super::stream::{Answers, Driven, Reconnect, UpstreamStream};
use super::{client, no_connection, Context, Forwarded, HeldGuard, Standing};
use crate::error::{messages, ProxyError};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::*;
use crate::route::revision::Compacted;
use crate::route::{translate, Route};
use crate::upstream::{classify, Failure};

/// Answers on their way to the client.
type Down = Answers<WatchResponse>;

pub struct WatchService {
    ctx: Arc<Context>,
    /// (Gateway) which context serves the keys a stream's watches name (see
    /// `super::routed`); without one, `ctx` serves every stream.
    owner: Option<Arc<dyn KeyOwner>>,
}

impl WatchService {
    pub fn new(ctx: Arc<Context>) -> Self {
        WatchService { ctx, owner: None }
    }

    /// A stream is served by the context holding the keys its first watch names.
    pub fn routed(ctx: Arc<Context>, owner: Arc<dyn KeyOwner>) -> Self {
        WatchService {
            ctx,
            owner: Some(owner),
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Driven<WatchResponse>;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let own = self.ctx.clone();
        let fwd = self.ctx.forwarded(&metadata);
        let permits = super::permits::of_extensions(&extensions).cloned();
        let live = extensions.get::<crate::rbac::LivePermits>().cloned();
        let Some(owner) = self.owner.clone() else {
            return Ok(Response::new(Driven::new(|down| {
                WatchSession::new(own, fwd, permits, live, None, down).run(None, inbound)
            })));
        };
        // The stream's context is known once its first watch is: read it first (a client
        // that sends nothing yet costs nothing more).
        Ok(Response::new(Driven::new(|down| async move {
            let first = match inbound.message().await {
                Ok(Some(first)) => first,
                Ok(None) | Err(_) => return,
            };
            // (A watch the caller may not make is refused by the caller's own context: no
            // tenant's context is built for it.)
            let ctx = match &first.request_union {
                Some(RequestUnion::CreateRequest(c))
                    if super::permits::watch(permits.as_ref(), &c.key, &c.range_end) =>
                {
                    let key: &[u8] = if c.key.is_empty() { b"\0" } else { &c.key };
                    owner.context_of(&[(key, &c.range_end)]).unwrap_or(own)
                }
                _ => own,
            };
            WatchSession::new(ctx, fwd, permits, live, Some(owner), down)
                .run(Some(first), inbound)
                .await
        })))
    }
}

/// One watch as the client created it, and how far its client has got.
#[derive(Debug, Clone)]
pub(crate) struct WatchState {
    pub create: WatchCreateRequest,
    /// The first revision whose events the client has not received yet (advanced by
    /// progress notifications too).
    pub next_rev: i64,
    /// The same, advanced by events only: etcd 3.4 may send a progress notification
    /// ahead of events still on their way, so only this one proves what was delivered.
    pub delivered_rev: i64,
    /// The client asked to cancel it and waits for the answer.
    pub cancel_requested: bool,
}

/// A create request sent upstream and not yet answered, in the order etcd answers them.
#[derive(Debug)]
enum Pending {
    /// The client's own create: its answer goes to the client.
    Client(WatchCreateRequest),
    /// The proxy re-creating a known watch: its answer is the proxy's business.
    Reattach(i64),
}

type Upstream = UpstreamStream<WatchRequest, WatchResponse>;

struct WatchSession {
    ctx: Arc<Context>,
    fwd: Forwarded,
    /// (Gateway) what the caller may read: each watch it creates is checked against it
    /// (against `live`, what it may read now, when the gateway gives it).
    permits: Option<Arc<crate::rbac::Permits>>,
    live: Option<crate::rbac::LivePermits>,
    /// (Gateway) which context holds which keys: every watch of a routed stream must name
    /// keys of the context serving it.
    owner: Option<Arc<dyn KeyOwner>>,
    down: Down,
    route: Arc<Route>,
    /// Boxed: a table keeps room for a few entries ahead, and most streams hold one.
    watches: HashMap<i64, Box<WatchState>>,
    pending: VecDeque<Pending>,
    last_header: Option<ResponseHeader>,
    /// Watches to create again from their progress-advanced revision (see `reattach`).
    resend: Vec<i64>,
    /// How the stream ended, counted when the session is dropped (which may be in the
    /// middle of an await, when the client goes).
    end: crate::metrics::StreamEnd,
}

impl Drop for WatchSession {
    fn drop(&mut self) {
        self.ctx.metrics.open_watches.dec_by(self.watches.len() as i64);
    }
}

/// The client went away; the session ends.
struct ClientGone;

/// How far a watch's events on the old datastore were delivered at a move.
enum Drained {
    /// Every event up to the commit marker.
    Complete,
    /// Not proven, for this reason: the watch resumes from what events proved delivered.
    Incomplete(String),
}

impl WatchSession {
    fn new(
        ctx: Arc<Context>,
        fwd: Forwarded,
        permits: Option<Arc<crate::rbac::Permits>>,
        live: Option<crate::rbac::LivePermits>,
        owner: Option<Arc<dyn KeyOwner>>,
        down: Down,
    ) -> Self {
        let route = ctx.router.route();
        let end = ctx.metrics.stream_end("Watch", "Watch");
        WatchSession {
            ctx,
            fwd,
            permits,
            live,
            owner,
            down,
            route,
            watches: HashMap::new(),
            pending: VecDeque::new(),
            last_header: None,
            resend: Vec::new(),
            end,
        }
    }

    fn open_upstream(&self) -> Upstream {
        UpstreamStream::open(&self.route.datastore, &self.fwd, |ch, req| async move {
            client!(WatchClient, ch).watch(req).await
        })
    }

    /// Serves the stream until either side ends it; `first` is a request already read
    /// from `inbound`.
    async fn run(mut self, first: Option<WatchRequest>, mut inbound: Streaming<WatchRequest>) {
        let _open = self.ctx.metrics.stream_guard("watch");
        let mut changes = self.ctx.router.changes();
        if self.ctx.router.route().generation != self.route.generation {
            self.route = self.ctx.router.route();
        }
        if let Err(e) = self.route.usable() {
            self.send_error(e.to_status()).await;
            self.end.code = Code::Unavailable;
            return;
        }
        let mut upstream = self.open_upstream();
        let mut reconnect = Reconnect::new();
        let mut inbound_open = true;
        if let Some(first) = first {
            if self.on_client(&mut upstream, first).await.is_err() {
                return;
            }
        }
        let code = loop {
            tokio::select! {
                _ = changes.changed() => {
                    // The tenant left this datastore and its new one cannot be used: end
                    // the stream (the client re-opens it) rather than stay on a frozen store.
                    if let Err(e) = self.ctx.router.route().usable() {
                        self.send_error(e.to_status()).await;
                        break Code::Unavailable;
                    }
                    // Boxed, as every rare path here: the session's future is kept for the
                    // stream's whole life, and its size is that of its largest await.
                    if Box::pin(self.move_to_new_route(&mut upstream)).await.is_err() {
                        break Code::Cancelled;
                    }
                }
                msg = inbound.message(), if inbound_open => match msg {
                    Ok(Some(req)) => {
                        if self.on_client(&mut upstream, req).await.is_err() {
                            break Code::Cancelled;
                        }
                    }
                    // etcd keeps sending after the client half-closes; so does the proxy.
                    Ok(None) => inbound_open = false,
                    Err(_) => break Code::Cancelled,
                },
                resp = upstream.next() => match resp {
                    Some(Ok(r)) => {
                        reconnect.reset();
                        if self.on_upstream(r).await.is_err() {
                            break Code::Cancelled;
                        }
                        self.resend_creates(&mut upstream);
                    }
                    Some(Err(status)) if classify(&status) == Failure::Answered => {
                        // etcd ended the stream itself (e.g. no leader with `hasleader`).
                        let code = status.code();
                        self.send_error(status).await;
                        break code;
                    }
                    failure => {
                        let why = match failure {
                            Some(Err(s)) => s.message().to_string(),
                            _ => "stream ended".to_string(),
                        };
                        let ds = &self.route.datastore;
                        tracing::warn!(datastore = %ds.name, endpoint = %ds.endpoint_url(upstream.endpoint), error = %why, watches = self.watches.len(), "watch stream to the datastore broke; re-attaching");
                        ds.mark_failed(upstream.endpoint);
                        if !Box::pin(reconnect.wait()).await {
                            self.send_error(no_connection(&self.route.datastore.name)).await;
                            break Code::Unavailable;
                        }
                        upstream = self.open_upstream();
                        if Box::pin(self.reattach(&mut upstream)).await.is_err() {
                            break Code::Cancelled;
                        }
                    }
                },
            }
        };
        self.end.code = code;
    }

    /// A create as the current datastore must see it (its start in that one's revisions).
    fn upstream_create(&self, c: &WatchCreateRequest) -> Result<WatchCreateRequest, Compacted> {
        let mut c = c.clone();
        if let Some(t) = &self.route.translation {
            c.start_revision = t.watch_start(c.start_revision)?;
        }
        Ok(c)
    }

    /// Tells the client its watch cannot start where it asked, as etcd does for a
    /// compacted revision: created, then canceled with the first revision it may use.
    async fn refuse_compacted(&mut self, watch_id: i64, c: Compacted) -> Result<(), ClientGone> {
        let header = self.last_header;
        self.send_down(WatchResponse {
            header,
            watch_id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.send_down(WatchResponse {
            header,
            watch_id,
            canceled: true,
            compact_revision: c.last + 1,
            cancel_reason: "mvcc: required revision has been compacted".into(),
            ..Default::default()
        })
        .await
    }

    async fn on_client(&mut self, upstream: &mut Upstream, req: WatchRequest) -> Result<(), ClientGone> {
        match &req.request_union {
            Some(RequestUnion::CreateRequest(c)) if self.refusal(c).is_some() => {
                // etcd refuses a watch by canceling it at once, with no ID (etcd 3.5's
                // answer; 3.4 gives the ID asked for).
                let header = self.last_header;
                let cancel_reason = self.refusal(c).unwrap_or_default();
                return self
                    .send_down(WatchResponse {
                        header,
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason,
                        ..Default::default()
                    })
                    .await;
            }
            Some(RequestUnion::CreateRequest(c)) => match self.upstream_create(c) {
                Ok(sent) => {
                    self.pending.push_back(Pending::Client(c.clone()));
                    upstream.send(WatchRequest {
                        request_union: Some(RequestUnion::CreateRequest(sent)),
                    });
                }
                Err(compacted) => {
                    let id = if c.watch_id != 0 {
                        c.watch_id
                    } else {
                        self.watches.keys().max().map_or(0, |m| m + 1)
                    };
                    return self.refuse_compacted(id, compacted).await;
                }
            },
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(w) = self.watches.get_mut(&c.watch_id) {
                    w.cancel_requested = true;
                }
                upstream.send(req);
            }
            _ => upstream.send(req),
        }
        Ok(())
    }

    /// Why a watch cannot be created on this stream, if it cannot: its keys are not the
    /// caller's to read (etcd's refusal), or (a routed stream) they are served elsewhere.
    fn refusal(&self, c: &WatchCreateRequest) -> Option<String> {
        let denied = || Some(messages::WATCH_PERMISSION_DENIED.to_string());
        let now = self.live.as_ref().map(|l| l.now());
        if !super::permits::watch(now.as_ref().or(self.permits.as_ref()), &c.key, &c.range_end) {
            return denied();
        }
        let Some(owner) = self.owner.as_ref() else {
            return if self.ctx.router.scope().in_tenant(&c.key, &c.range_end) {
                None
            } else {
                denied()
            };
        };
        let key: &[u8] = if c.key.is_empty() { b"\0" } else { &c.key };
        match owner.context_of(&[(key, &c.range_end)]) {
            Ok(ctx) if Arc::ptr_eq(&ctx, &self.ctx) => None,
            Ok(_) => Some(
                ProxyError::Unsupported(
                    "this watch names keys of another tenant than this stream's first watch, which may live \
                     on another datastore of the pool; watch them on a stream of their own",
                )
                .to_string(),
            ),
            Err(e) => Some(e.to_string()),
        }
    }

    /// After a route swap: deliver what the watches still miss on the old datastore (up
    /// to its commit marker), then move every watch to the new one.
    async fn move_to_new_route(&mut self, upstream: &mut Upstream) -> Result<(), ClientGone> {
        let new = self.ctx.router.route();
        if new.generation == self.route.generation {
            return Ok(());
        }
        if new.datastore_name != self.route.datastore_name && !self.watches.is_empty() {
            if let Drained::Incomplete(why) = self.finish_on_old_store().await? {
                // Resume from what was proven delivered: a revision the new datastore does
                // not have is then refused as compacted (the client relists), never skipped.
                tracing::warn!(from = %self.route.datastore_name, error = %why, watches = self.watches.len(), "could not read the watches' last events on the old datastore; resuming them from their last delivered revision");
                for w in self.watches.values_mut() {
                    w.next_rev = w.delivered_rev;
                }
            }
        }
        let _ = crate::failpoint!("server.watch.reattach");
        tracing::debug!(from = %self.route.datastore_name, to = %new.datastore_name, watches = self.watches.len(), "moving watches to the new datastore");
        self.route = new;
        *upstream = self.open_upstream();
        self.reattach(upstream).await
    }

    /// Delivers, for each watch, its events on the old datastore from the last revision it
    /// delivered up to the commit marker. Each is read through a companion watch whose
    /// range also holds the fence key: one watcher's events arrive in revision order, so
    /// once the marker's event has come, so has every event of the watch before it. (A
    /// progress notification would not prove it on etcd 3.4.)
    async fn finish_on_old_store(&mut self) -> Result<Drained, ClientGone> {
        let old = self.route.clone();
        let fence_key = self.ctx.router.fence().guard.fence_key().clone();
        let marker = match old
            .datastore
            .unary(crate::upstream::Retry::Idempotent, |ch, token| {
                let req = crate::upstream::own_request(
                    RangeRequest {
                        key: fence_key.clone(),
                        ..Default::default()
                    },
                    token,
                );
                async move { client!(KvClient, ch).range(req).await }
            })
            .await
        {
            Ok(r) => r.into_inner().kvs.into_iter().next(),
            Err(e) => return Ok(Drained::Incomplete(e.to_string())),
        };
        let Some(marker) = marker.filter(|kv| crate::route::fence::Marker::moved_to(&kv.value).is_some()) else {
            return Ok(Drained::Incomplete("the old datastore holds no commit marker".into()));
        };
        let marker_rev = old
            .translation
            .as_ref()
            .map_or(marker.mod_revision, |t| t.to_virtual(marker.mod_revision));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut ids: Vec<i64> = self.watches.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(w) = self.watches.get(&id) else { continue };
            if w.delivered_rev > marker_rev || w.cancel_requested {
                w_done(self.watches.get_mut(&id).map(|w| &mut **w), marker_rev);
                continue;
            }
            let create = w.create.clone();
            let from = w.delivered_rev;
            match tokio::time::timeout_at(
                deadline,
                self.companion(&old, &create, id, from, &fence_key, marker_rev),
            )
            .await
            {
                Ok(Ok(Drained::Complete)) => w_done(self.watches.get_mut(&id).map(|w| &mut **w), marker_rev),
                Ok(Ok(Drained::Incomplete(why))) => return Ok(Drained::Incomplete(why)),
                Ok(Err(gone)) => return Err(gone),
                Err(_) => return Ok(Drained::Incomplete("no commit marker event within 5 s".into())),
            }
        }
        Ok(Drained::Complete)
    }

    /// One watch's remaining events on the old datastore, through a companion watch.
    async fn companion(
        &mut self,
        old: &Arc<Route>,
        create: &WatchCreateRequest,
        id: i64,
        from: i64,
        fence_key: &bytes::Bytes,
        marker_rev: i64,
    ) -> Result<Drained, ClientGone> {
        let (start, end) = spanning(&create.key, &create.range_end, fence_key);
        let companion = WatchCreateRequest {
            key: start,
            range_end: end,
            start_revision: from,
            prev_kv: create.prev_kv,
            fragment: create.fragment,
            ..Default::default()
        };
        let companion = match &old.translation {
            Some(t) => match t.watch_start(companion.start_revision) {
                Ok(s) => WatchCreateRequest {
                    start_revision: s,
                    ..companion
                },
                Err(_) => {
                    return Ok(Drained::Incomplete(
                        "the old datastore no longer has the revisions".into(),
                    ))
                }
            },
            None => companion,
        };
        let mut stream: Upstream = UpstreamStream::open(&old.datastore, &self.fwd, |ch, req| async move {
            client!(WatchClient, ch).watch(req).await
        });
        stream.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(companion)),
        });
        let scope = self.ctx.router.scope().clone();
        loop {
            let mut r = match stream.next().await {
                Some(Ok(r)) => r,
                Some(Err(s)) => return Ok(Drained::Incomplete(s.message().to_string())),
                None => return Ok(Drained::Incomplete("the companion stream ended".into())),
            };
            if r.canceled {
                return Ok(Drained::Incomplete(format!(
                    "the companion watch was canceled: {}",
                    r.cancel_reason
                )));
            }
            if let Some(t) = &old.translation {
                translate::watch_response(t, &mut r);
            }
            let reached = r
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .any(|kv| kv.mod_revision >= marker_rev);
            r.events.retain(|e| {
                e.kv.as_ref().is_some_and(|kv| {
                    kv.mod_revision >= from
                        && kv.mod_revision < marker_rev
                        && in_range(&kv.key, &create.key, &create.range_end)
                        && !scope.is_reserved(&kv.key)
                        && !filtered(create, e)
                })
            });
            if !r.events.is_empty() {
                let last = r
                    .events
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .map_or(0, |kv| kv.mod_revision);
                if let Some(h) = r.header {
                    self.last_header = Some(h);
                }
                let fragment = r.fragment;
                self.send_down(WatchResponse {
                    watch_id: id,
                    created: false,
                    canceled: false,
                    ..r
                })
                .await?;
                if let Some(w) = self.watches.get_mut(&id) {
                    if !fragment {
                        w.next_rev = w.next_rev.max(last + 1);
                        w.delivered_rev = w.delivered_rev.max(last + 1);
                    }
                }
            }
            if reached {
                return Ok(Drained::Complete);
            }
        }
    }

    async fn send_down(&mut self, r: WatchResponse) -> Result<(), ClientGone> {
        self.down.send(Ok(r)).await.map_err(|_| ClientGone)
    }

    /// Ends the client's stream with `status` (the session ends after it).
    async fn send_error(&mut self, status: Status) {
        let _ = self.down.send(Err(status)).await;
    }

    async fn on_upstream(&mut self, mut r: WatchResponse) -> Result<(), ClientGone> {
        if !r.created && !r.canceled && !r.events.is_empty() {
            // Events carry no fence read: prove they were written while the tenant lived
            // on this store (see `route::proof`). Reserved keys never reach the client.
            let scope = self.ctx.router.scope();
            let tenant_events = r
                .events
                .iter()
                .any(|e| e.kv.as_ref().is_some_and(|kv| !scope.is_reserved(&kv.key)));
            let last = r
                .events
                .last()
                .and_then(|e| e.kv.as_ref())
                .map_or(0, |kv| kv.mod_revision);
            if tenant_events && !Box::pin(self.vouch(last)).await? {
                // The route changed meanwhile: the move delivers these again, from the
                // revision this watch has delivered up to.
                return Ok(());
            }
        }
        if let Some(t) = &self.route.translation {
            translate::watch_response(t, &mut r);
        }
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        if r.header.is_some() {
            self.last_header = r.header;
        }
        if r.created {
            match self.pending.pop_front() {
                Some(Pending::Client(create)) => {
                    if !r.canceled {
                        let next_rev = if create.start_revision > 0 {
                            create.start_revision
                        } else {
                            rev + 1
                        };
                        self.watches.insert(
                            r.watch_id,
                            Box::new(WatchState {
                                create,
                                next_rev,
                                delivered_rev: next_rev,
                                cancel_requested: false,
                            }),
                        );
                        self.ctx.metrics.open_watches.inc();
                    }
                    self.send_down(r).await
                }
                Some(Pending::Reattach(id)) => {
                    // Resumed from the revision events proved delivered; if that one is
                    // compacted but a progress notification had taken the watch past the
                    // compaction, resume from there instead (an idle watch).
                    let retry = r.canceled
                        && r.compact_revision > 0
                        && self
                            .watches
                            .get(&id)
                            .is_some_and(|w| w.next_rev > w.delivered_rev && w.next_rev >= r.compact_revision);
                    if retry {
                        if let Some(w) = self.watches.get_mut(&id) {
                            w.delivered_rev = w.next_rev;
                        }
                        self.resend.push(id);
                        Ok(())
                    } else if r.canceled {
                        // The datastore refused to resume it: the client learns as etcd
                        // would tell it, by a cancel on its watch.
                        self.remove(id);
                        self.send_down(WatchResponse { created: false, ..r }).await
                    } else {
                        Ok(())
                    }
                }
                None => self.send_down(r).await,
            }
        } else if r.canceled {
            self.remove(r.watch_id);
            self.send_down(r).await
        } else if !r.events.is_empty() {
            let mut r = r;
            if let Some(w) = self.watches.get_mut(&r.watch_id) {
                // A fragmented response's last piece carries fragment=false; resume only at
                // a whole revision.
                if !r.fragment {
                    if let Some(last) = r.events.last().and_then(|e| e.kv.as_ref()) {
                        w.next_rev = w.next_rev.max(last.mod_revision + 1);
                        w.delivered_rev = w.delivered_rev.max(last.mod_revision + 1);
                    }
                }
            }
            // cutover's reserved keys are not the tenant's to see.
            let scope = self.ctx.router.scope();
            r.events
                .retain(|e| e.kv.as_ref().is_none_or(|kv| !scope.is_reserved(&kv.key)));
            if r.events.is_empty() {
                return Ok(());
            }
            self.send_down(r).await
        } else {
            // A progress notification: every event up to `rev` has been delivered.
            if r.watch_id == -1 {
                for w in self.watches.values_mut() {
                    w.next_rev = w.next_rev.max(rev + 1);
                }
            } else if let Some(w) = self.watches.get_mut(&r.watch_id) {
                w.next_rev = w.next_rev.max(rev + 1);
            }
            self.send_down(r).await
        }
    }

    /// Whether events up to store revision `rev` may go to the client. While the store
    /// says the tenant left them behind, waits for this replica's route to follow (then
    /// `false`: they are dropped and the move delivers what the watches still miss), up
    /// to the hold timeout, after which the stream ends as unavailable (the client
    /// resumes from its last revision).
    async fn vouch(&mut self, rev: i64) -> Result<bool, ClientGone> {
        if self.route.proof.covers(rev) {
            return Ok(true);
        }
        let _held = HeldGuard::new(&self.ctx.metrics.held_watch_responses);
        let deadline = tokio::time::Instant::now().checked_add(self.ctx.router.fence().hold_timeout);
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        let mut changes = self.ctx.router.changes();
        loop {
            if self.ctx.router.route().generation != self.route.generation {
                return Ok(false);
            }
            match self.ctx.vouch(&self.route, rev).await {
                Ok(Standing::Home | Standing::Unprovable) => return Ok(true),
                Ok(Standing::Left { marker_rev }) if rev < marker_rev => return Ok(true),
                Ok(Standing::Left { .. }) => self.ctx.router.nudge(self.route.generation),
                Err(e) => {
                    tracing::debug!(datastore = %self.route.datastore_name, error = %e, "could not read the fence key to vouch for watch events")
                }
            }
            let delay = backoff.step();
            if deadline.is_some_and(|d| tokio::time::Instant::now() + delay > d) {
                tracing::warn!(datastore = %self.route.datastore_name, "watch events from a datastore the tenant may have left were held past the hold timeout; ending the stream");
                self.send_error(no_connection(&self.route.datastore.name)).await;
                return Err(ClientGone);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = changes.changed() => {}
            }
        }
    }

    fn remove(&mut self, id: i64) {
        if self.watches.remove(&id).is_some() {
            self.ctx.metrics.open_watches.dec();
        }
    }

    /// Sends again the creates `on_upstream` asked for (see `resend`).
    fn resend_creates(&mut self, upstream: &mut Upstream) {
        for id in std::mem::take(&mut self.resend) {
            let Some(w) = self.watches.get(&id) else { continue };
            let create = WatchCreateRequest {
                watch_id: id,
                start_revision: w.delivered_rev,
                ..w.create.clone()
            };
            if let Ok(sent) = self.upstream_create(&create) {
                self.pending.push_back(Pending::Reattach(id));
                upstream.send(WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(sent)),
                });
            }
        }
    }

    /// Creates every known watch again on a new upstream stream, with its own watch_id and
    /// from its next revision; resends creates that were never answered.
    async fn reattach(&mut self, upstream: &mut Upstream) -> Result<(), ClientGone> {
        let unanswered: Vec<WatchCreateRequest> = self
            .pending
            .drain(..)
            .filter_map(|p| match p {
                Pending::Client(c) => Some(c),
                Pending::Reattach(_) => None,
            })
            .collect();
        let mut ids: Vec<i64> = self.watches.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let w = &self.watches[&id];
            if w.cancel_requested {
                // The cancel may have been lost with the old stream; it is done either way.
                let header = self.last_header;
                self.remove(id);
                self.send_down(WatchResponse {
                    header,
                    watch_id: id,
                    canceled: true,
                    ..Default::default()
                })
                .await?;
                continue;
            }
            // From the first revision events proved delivered: a progress notification
            // may have run ahead of events still in flight on the broken stream (etcd 3.4).
            let create = WatchCreateRequest {
                watch_id: id,
                start_revision: w.delivered_rev,
                ..w.create.clone()
            };
            match self.upstream_create(&create) {
                Ok(sent) => {
                    self.pending.push_back(Pending::Reattach(id));
                    upstream.send(WatchRequest {
                        request_union: Some(RequestUnion::CreateRequest(sent)),
                    });
                }
                Err(c) => {
                    // Only if the old datastore never confirmed the events before the
                    // move: the client learns it as a compaction, and can start again.
                    self.remove(id);
                    let header = self.last_header;
                    self.send_down(WatchResponse {
                        header,
                        watch_id: id,
                        canceled: true,
                        compact_revision: c.last + 1,
                        cancel_reason: "mvcc: required revision has been compacted".into(),
                        ..Default::default()
                    })
                    .await?;
                }
            }
        }
        for c in unanswered {
            match self.upstream_create(&c) {
                Ok(sent) => {
                    self.pending.push_back(Pending::Client(c.clone()));
                    upstream.send(WatchRequest {
                        request_union: Some(RequestUnion::CreateRequest(sent)),
                    });
                }
                Err(compacted) => self.refuse_compacted(c.watch_id, compacted).await?,
            }
        }
        Ok(())
    }
}

/// A watch whose events up to the commit marker are all delivered resumes after it.
fn w_done(w: Option<&mut WatchState>, marker_rev: i64) {
    if let Some(w) = w {
        w.next_rev = w.next_rev.max(marker_rev + 1);
        w.delivered_rev = w.delivered_rev.max(marker_rev + 1);
    }
}

/// Whether `key` is in a watch's range, in etcd's terms (an empty end: the key alone;
/// "\0": every key from `start` on).
fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

/// The smallest range holding both a watch's range and `also` (a single key).
fn spanning(start: &bytes::Bytes, end: &bytes::Bytes, also: &bytes::Bytes) -> (bytes::Bytes, bytes::Bytes) {
    let mut after_also = also.to_vec();
    after_also.push(0);
    let lo = if also < start { also.clone() } else { start.clone() };
    let hi = match &end[..] {
        [0] => end.clone(),
        [] => {
            let mut after = start.to_vec();
            after.push(0);
            std::cmp::max(bytes::Bytes::from(after), bytes::Bytes::from(after_also))
        }
        _ => std::cmp::max(end.clone(), bytes::Bytes::from(after_also)),
    };
    (lo, hi)
}

/// Whether the watch's filters (NOPUT, NODELETE) leave `e` out.
fn filtered(create: &WatchCreateRequest, e: &crate::proto::mvccpb::Event) -> bool {
    use crate::proto::mvccpb::event::EventType;
    let put = e.r#type == EventType::Put as i32;
    create.filters.iter().any(|f| {
        (*f == watch_create_request::FilterType::Noput as i32 && put)
            || (*f == watch_create_request::FilterType::Nodelete as i32 && !put)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_companion_range_holds_the_watch_and_the_fence_key() {
        let fence = Bytes::from_static(b"/t/\0cutover/fence");
        let b = |s: &'static [u8]| Bytes::from_static(s);
        // A prefix watch after the fence key.
        assert_eq!(
            spanning(&b(b"/t/pods/"), &b(b"/t/pods0"), &fence),
            (fence.clone(), b(b"/t/pods0"))
        );
        // A single key.
        let (lo, hi) = spanning(&b(b"/t/a"), &b(b""), &fence);
        assert_eq!((lo, hi), (fence.clone(), b(b"/t/a\0")));
        // The tenant's own prefix key sorts before the fence key.
        let (lo, hi) = spanning(&b(b"/t/"), &b(b""), &fence);
        assert_eq!((lo, hi), (b(b"/t/"), b(b"/t/\0cutover/fence\0")));
        // To the end of the key space.
        assert_eq!(spanning(&b(b"/t/a"), &b(b"\0"), &fence), (fence.clone(), b(b"\0")));
        assert!(in_range(b"/t/a", b"/t/a", b""));
        assert!(!in_range(b"/t/ab", b"/t/a", b""));
        assert!(in_range(b"/t/pods/x", b"/t/pods/", b"/t/pods0"));
        assert!(!in_range(&fence, b"/t/pods/", b"/t/pods0"));
        assert!(in_range(b"zzz", b"/t/a", b"\0"));
    }
}
