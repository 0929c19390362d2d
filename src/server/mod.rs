//! The etcd v3 gRPC services that clients (kube-apiserver, etcdctl, ...) call.
//!
//! Each request takes the current route once, is sent to that route's datastore by
//! `upstream`, and its answer (or etcd's exact error) goes back unchanged.

pub mod access;
mod auth;
mod cluster;
mod kv;
pub use kv::KvService;
pub mod lease;
pub mod limits;
mod maintenance;
mod permits;
pub mod routed;
mod stream;
mod uds;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::future::Either;
use tokio::net::{TcpListener, UnixListener};
use tonic::metadata::{AsciiMetadataValue, KeyAndValueRef, MetadataMap};
use tonic::transport::{Certificate, Channel, Identity, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use crate::coalesce::Coalesced;
use crate::codec::wire::TxnAnswer;
use crate::codec::Answer;
use crate::config::FenceMode;
use crate::config::{Config, ListenAddr};
use crate::error::messages;
use crate::error::Malformed;
use crate::error::{Blame, ProxyError};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::etcdserverpb::{TxnRequest, TxnResponse};
use crate::proto::kv_answers::k_v_server::KVServer as KvServer;
use crate::route::fence::{GuardAnswer, Guarded, GuardedRead, Marker};
use crate::route::revision::Translation;
use crate::route::translate::{Translate, TxnShape};
use crate::route::{Route, Router};
use crate::upstream::Retry;
use prost::Message as _;

/// What every service needs: where to send requests, limits, metrics.
pub struct Context {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    /// Largest request message accepted (etcd's --max-request-bytes + gRPC overhead).
    pub max_recv_bytes: usize,
    /// Whether the "writes without the guard" warning was logged.
    pub warned_unguarded: std::sync::atomic::AtomicBool,
    /// Who may call cluster-wide RPCs.
    pub access: access::Access,
    /// Leases known to be the tenant's.
    pub known_leases: lease::KnownLeases,
    /// (Gateway) this tenant's request counter.
    pub tenant_requests: Option<prometheus_client::metrics::counter::Counter>,
    /// (Gateway) the client's credentials (its etcd token) are the gateway's to check and
    /// never reach a datastore: the gateway reaches them with its own.
    pub keep_client_credentials: bool,
}

/// What a stream gets when the datastore cannot be reached again: as for a request never
/// sent (clients re-open the stream).
pub(crate) fn no_connection(datastore: &str) -> Status {
    ProxyError::NoEndpoint {
        datastore: datastore.to_string(),
        detail: "the stream to the datastore broke and could not be opened again".into(),
    }
    .to_status()
}

/// Where the tenant stands on a route's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// It lives there (as far as the answer in question goes).
    Home,
    /// It left: the "moved" marker was written at this store revision, and every later
    /// change there is cutover's own.
    Left { marker_rev: i64 },
    /// The datastore does not let cutover read the fence key: the answer goes as it is.
    Unprovable,
}

/// Client metadata that reaches the datastore (`token`, `hasleader`, ...), and the client's
/// deadline.
#[derive(Clone)]
pub(crate) struct Forwarded {
    metadata: MetadataMap,
    timeout: Option<Duration>,
}

/// Headers that belong to one hop of HTTP/2 or gRPC, not to the request.
fn hop_by_hop(key: &str) -> bool {
    matches!(
        key,
        "content-type" | "te" | "user-agent" | "host" | "content-length" | "accept-encoding"
    ) || key.starts_with("grpc-")
}

/// The longest client deadline passed on: any longer one (gRPC allows up to 99,999,999
/// hours, and a client may send more) is this. No request lives that long, and nothing
/// computed from a deadline can overflow.
const MAX_CLIENT_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses gRPC's `grpc-timeout` header (an integer and a unit letter), clamped to
/// [`MAX_CLIENT_DEADLINE`].
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(timeout.min(MAX_CLIENT_DEADLINE))
}

impl Forwarded {
    pub(crate) fn from_incoming(incoming: &MetadataMap) -> Self {
        let mut metadata = MetadataMap::new();
        for entry in incoming.iter() {
            match entry {
                KeyAndValueRef::Ascii(k, v) if !hop_by_hop(k.as_str()) => {
                    metadata.append(k.clone(), v.clone());
                }
                KeyAndValueRef::Binary(k, v) if !hop_by_hop(k.as_str()) => {
                    metadata.append_bin(k.clone(), v.clone());
                }
                _ => {}
            }
        }
        let timeout = incoming
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        Forwarded { metadata, timeout }
    }

    /// The outgoing request: the client's metadata, and the proxy's token if the client
    /// sent none.
    pub(crate) fn request<T>(&self, msg: T, token: Option<AsciiMetadataValue>) -> Request<T> {
        let mut req = Request::new(msg);
        *req.metadata_mut() = self.metadata.clone();
        if let Some(t) = token {
            if !self.metadata.contains_key("token") {
                req.metadata_mut().insert("token", t);
            }
        }
        if let Some(t) = self.timeout {
            req.set_timeout(t);
        }
        req
    }
}

/// A read the proxy sends inside the read guard (route/fence.rs), translated both ways
/// when the route has a translation.
pub(crate) trait Read: GuardedRead<Response: prost::Message + Default> + prost::Message + Clone {
    type Fixup: Default;
    fn to_target(self, t: &Translation) -> Result<(Self, Self::Fixup), ProxyError>;
    fn answer_to_virtual(a: Self::Response, t: &Translation, fix: Self::Fixup) -> Result<Self::Response, ProxyError>;
    /// Takes cutover's reserved keys out of the answer.
    fn hide_reserved(_a: &mut Self::Response, _scope: &crate::route::scope::Scope) {}
}

impl Read for crate::proto::etcdserverpb::RangeRequest {
    type Fixup = crate::route::translate::RangeFixup;
    fn to_target(mut self, t: &Translation) -> Result<(Self, Self::Fixup), ProxyError> {
        let fix = crate::route::translate::range_request(t, &mut self)?;
        Ok((self, fix))
    }
    fn answer_to_virtual(
        mut a: crate::proto::etcdserverpb::RangeResponse,
        t: &Translation,
        fix: Self::Fixup,
    ) -> Result<crate::proto::etcdserverpb::RangeResponse, ProxyError> {
        crate::route::translate::range_response(t, &mut a, &fix);
        Ok(a)
    }
}

impl Read for TxnRequest {
    type Fixup = TxnShape;
    fn to_target(self, t: &Translation) -> Result<(Self, TxnShape), ProxyError> {
        Ok(Translate::to_target(self, t)?)
    }
    fn answer_to_virtual(
        a: crate::proto::etcdserverpb::TxnResponse,
        t: &Translation,
        shape: TxnShape,
    ) -> Result<crate::proto::etcdserverpb::TxnResponse, ProxyError> {
        Ok(<TxnRequest as Translate>::answer_to_virtual(a, t, shape)?)
    }
    fn hide_reserved(a: &mut crate::proto::etcdserverpb::TxnResponse, scope: &crate::route::scope::Scope) {
        scope.hide_in_txn(a);
    }
}

impl Context {
    /// What of a client's request metadata goes upstream with it.
    pub(crate) fn forwarded(&self, incoming: &MetadataMap) -> Forwarded {
        let mut f = Forwarded::from_incoming(incoming);
        if self.keep_client_credentials {
            f.metadata.remove("token");
            f.metadata.remove("authorization");
        }
        f
    }

    /// Refuses a cluster-wide RPC to a tenant (see [`access`]), counted like any answer.
    pub(crate) fn refuse_tenant<T>(
        &self,
        request: &Request<T>,
        service: &'static str,
        method: &'static str,
    ) -> Result<(), Status> {
        self.access.operator_only(request, service, method).map_err(|e| {
            tracing::debug!(service, method, "refused to a tenant: {e}");
            self.metrics.tenant_refused(service, method);
            e.to_status()
        })
    }

    /// Forwards one unary request to the authoritative datastore and records it.
    pub(crate) async fn unary<Req, Resp, F, Fut>(
        &self,
        service: &'static str,
        method: &'static str,
        retry: Retry,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let started = Instant::now();
        let result = self.forward_unary(retry, request, call).await;
        self.finish(service, method, started, result)
    }

    /// Like [`Context::unary`], for requests and answers that carry revisions: `pre` and
    /// `post` apply the route's translation, when it has one, around the same route's call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn unary_translated<Req, Resp, F, Fut, X>(
        &self,
        service: &'static str,
        method: &'static str,
        retry: Retry,
        request: Request<Req>,
        pre: impl FnOnce(&Translation, &mut Req) -> Result<X, ProxyError>,
        post: impl FnOnce(&Translation, &mut Resp, X),
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let started = Instant::now();
        let result = self.forward_translated(retry, request, pre, post, call).await;
        self.finish(service, method, started, result)
    }

    async fn forward_translated<Req, Resp, F, Fut, X>(
        &self,
        retry: Retry,
        request: Request<Req>,
        pre: impl FnOnce(&Translation, &mut Req) -> Result<X, ProxyError>,
        post: impl FnOnce(&Translation, &mut Resp, X),
        call: F,
    ) -> Result<Response<Resp>, ProxyError>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let route = self.router.route();
        let (metadata, ext, mut msg) = request.into_parts();
        let Some(t) = route.translation.clone() else {
            return self
                .forward_on(&route, retry, Request::from_parts(metadata, ext, msg), call)
                .await;
        };
        self.check_size(&msg)?;
        let x = pre(&t, &mut msg)?;
        let mut resp = self
            .forward_on(&route, retry, Request::from_parts(metadata, ext, msg), call)
            .await?;
        post(&t, resp.get_mut(), x);
        Ok(resp)
    }

    /// Forwards a client write inside the fence guard (route/fence.rs) and records it.
    pub(crate) async fn guarded_write<W>(
        &self,
        service: &'static str,
        method: &'static str,
        request: Request<W>,
    ) -> Result<Response<Answer<W::Response>>, Status>
    where
        W: Guarded + Translate<Answer = <W as Guarded>::Response> + prost::Message + Clone,
        W::Response: prost::Message + Default,
    {
        let started = Instant::now();
        let result = self.forward_guarded(request).await;
        self.finish(service, method, started, result)
    }

    async fn forward_guarded<W>(&self, request: Request<W>) -> Result<Response<Answer<W::Response>>, ProxyError>
    where
        W: Guarded + Translate<Answer = <W as Guarded>::Response> + prost::Message + Clone,
        W::Response: prost::Message + Default,
    {
        let (metadata, _, msg) = request.into_parts();
        self.check_size(&msg)?;
        if !msg.allowed(self.router.scope()) {
            return Err(ProxyError::Reserved);
        }
        let fwd = self.forwarded(&metadata);
        let policy = self.router.fence();
        let mut hold = Hold::new(self, &self.metrics.held_writes);
        loop {
            // Each attempt asks for the route again: a held write goes to whichever
            // datastore is authoritative when the fence lifts, in that one's revisions.
            let route = self.router.route();
            route.usable()?;
            let (write, shape) = match &route.translation {
                Some(t) => msg.clone().to_target(t)?,
                None => (msg.clone(), TxnShape::default()),
            };
            let fwd = &fwd;
            let send = |txn: TxnRequest| {
                route.datastore.unary(Retry::IfNotSent, move |ch, token| {
                    crate::upstream::txn_encoded(ch, fwd.request(txn.clone(), token))
                })
            };
            // With no translation and nothing to hide, etcd's answer goes back as it came.
            let unchanged = route.translation.is_none() && msg.passes_unchanged(self.router.scope());
            let resp = match send(policy.guard.wrap(write.clone())).await {
                // The client's credentials may not read the fence key (an etcd user limited
                // to part of the tenant's keys). The guard was refused before anything was
                // applied; the bare write gets exactly etcd's own answer for this user.
                Err(ProxyError::Etcd(s)) if s.code() == Code::PermissionDenied => {
                    self.count_unguarded();
                    send(policy.guard.bare(write)).await?
                }
                other => other?,
            };
            if let Err(e) = crate::failpoint!("server.write.answer") {
                // The write was applied; the client is told its answer was lost.
                return Err(ProxyError::OutcomeUnknown {
                    datastore: route.datastore_name.clone(),
                    endpoint: "failpoint".into(),
                    detail: e.to_string(),
                });
            }
            let bytes = resp.into_inner();
            let fenced = match policy.guard.unwrap_encoded::<W>(&TxnAnswer::parse(bytes.clone())?)? {
                GuardAnswer::Applied(encoded) => {
                    if hold.held() {
                        self.count_fenced("held");
                    }
                    if let (true, Some(encoded)) = (unchanged, encoded) {
                        return Ok(Response::new(Answer::Encoded(encoded)));
                    }
                    let decoded =
                        TxnResponse::decode(bytes).map_err(|_| Malformed("etcd's Txn answer does not decode"))?;
                    let GuardAnswer::Applied(mut answer) = policy.guard.unwrap::<W>(decoded)? else {
                        return Err(Malformed("etcd's Txn answer reads two ways").into());
                    };
                    if let Some(t) = &route.translation {
                        answer = W::answer_to_virtual(answer, t, shape)?;
                    }
                    W::hide_reserved(&mut answer, self.router.scope());
                    return Ok(Response::new(Answer::Message(answer)));
                }
                GuardAnswer::Fenced(fenced) => fenced,
            };
            let holder = String::from_utf8_lossy(&fenced.holder).into_owned();
            // The tenant has just moved and this proxy's route is about to follow (or has):
            // that is not a freeze, whatever the mode.
            let moved = Marker::moved_to(&fenced.holder).is_some();
            if moved {
                self.router.nudge(route.generation);
            }
            if policy.mode == FenceMode::Reject && !moved {
                self.count_fenced("rejected");
                return Err(ProxyError::Fenced { holder });
            }
            if !hold.wait().await {
                self.count_fenced("held_rejected");
                return Err(ProxyError::Fenced { holder });
            }
        }
    }

    /// Forwards a linearizable read inside the read guard (route/fence.rs) and records it.
    pub(crate) async fn guarded_read<R: Read>(
        &self,
        service: &'static str,
        method: &'static str,
        request: Request<R>,
    ) -> Result<Response<Answer<R::Response>>, Status> {
        let started = Instant::now();
        let result = self.forward_read(request, true).await;
        self.finish(service, method, started, result)
    }

    /// A read-only Txn of serializable Ranges: as a read, without the guard (it may be
    /// stale by definition).
    pub(crate) async fn serializable_read<R: Read>(
        &self,
        service: &'static str,
        method: &'static str,
        request: Request<R>,
    ) -> Result<Response<Answer<R::Response>>, Status> {
        let started = Instant::now();
        let result = self.forward_read(request, false).await;
        self.finish(service, method, started, result)
    }

    /// Sends a read as a Txn of Ranges, with the fence read if `linearizable`.
    async fn forward_read<R: Read>(
        &self,
        request: Request<R>,
        linearizable: bool,
    ) -> Result<Response<Answer<R::Response>>, ProxyError> {
        let (metadata, _, msg) = request.into_parts();
        self.check_size(&msg)?;
        let fwd = self.forwarded(&metadata);
        let guard = &self.router.fence().guard;
        let mut hold = Hold::new(self, &self.metrics.held_reads);
        loop {
            let route = self.router.route();
            route.usable()?;
            let (read, fix) = match &route.translation {
                Some(t) => msg.clone().to_target(t)?,
                None => (msg.clone(), R::Fixup::default()),
            };
            let fwd = &fwd;
            let send = |txn: TxnRequest| {
                route.datastore.unary(Retry::Idempotent, move |ch, token| {
                    crate::upstream::txn_encoded(ch, fwd.request(txn.clone(), token))
                })
            };
            let _ = crate::failpoint!("server.read.before_send");
            let fence_read = linearizable.then(|| guard.fence_read());
            let sent = tokio::time::Instant::now();
            let (resp, guarded) = match send(read.clone().into_txn(fence_read)).await {
                Ok(r) => (r, linearizable),
                // As for writes: a client that may not read the fence key reads without it.
                Err(ProxyError::Etcd(s)) if linearizable && s.code() == Code::PermissionDenied => {
                    self.count_unguarded_read();
                    (send(read.into_txn(None)).await?, false)
                }
                // A revision from the tenant's new home is in the future of the old one.
                Err(ProxyError::Etcd(s)) if linearizable && s.message() == messages::FUTURE_REV => {
                    if self.moved_from(&route).await {
                        self.router.nudge(route.generation);
                        if !hold.wait().await {
                            return Err(self.not_switched(&route));
                        }
                        continue;
                    }
                    return Err(ProxyError::Etcd(s));
                }
                Err(e) => return Err(e),
            };
            let bytes = resp.into_inner();
            let parsed = TxnAnswer::parse(bytes.clone())?;
            let header_rev = parsed.revision()?;
            let (encoded, fence) = R::split_encoded(&parsed, guarded)?;
            let left = match &fence {
                Some(f) if Marker::moved_to(f).is_some() => true,
                Some(_) => {
                    // The fence read is a proof for unguarded answers too.
                    route.proof.record(sent, header_rev);
                    false
                }
                // Unguarded (serializable, or a client that may not read the fence key):
                // stale is allowed, a store the tenant left and cutover since wrote to is not.
                None => match self.vouch(&route, header_rev).await? {
                    Standing::Home | Standing::Unprovable => false,
                    Standing::Left { marker_rev } => header_rev >= marker_rev,
                },
            };
            if left {
                // Answered by a store the tenant has left: a write may already have been
                // acknowledged on the new one. Wait for this replica's route to follow.
                self.router.nudge(route.generation);
                if !hold.wait().await {
                    return Err(self.not_switched(&route));
                }
                continue;
            }
            if hold.held() {
                self.metrics.rerouted_reads.inc();
            }
            // With no translation and nothing to hide, etcd's answer goes back as it came.
            if route.translation.is_none() && msg.passes_unchanged(self.router.scope()) {
                if let Some(encoded) = encoded {
                    return Ok(Response::new(Answer::Encoded(encoded)));
                }
            }
            let decoded = TxnResponse::decode(bytes).map_err(|_| Malformed("etcd's Txn answer does not decode"))?;
            let (mut answer, _) = R::split(decoded, guarded)?;
            if let Some(t) = &route.translation {
                answer = R::answer_to_virtual(answer, t, fix)?;
            }
            R::hide_reserved(&mut answer, self.router.scope());
            return Ok(Response::new(Answer::Message(answer)));
        }
    }

    /// Whether the fence key of `route`'s store holds the "moved" marker now.
    async fn moved_from(&self, route: &Route) -> bool {
        matches!(self.read_fence(route).await, Ok(Standing::Left { .. }))
    }

    /// Whether an answer at store revision `rev` that carries no fence read of its own
    /// (a watch event, a serializable read) comes from the tenant's home: from the
    /// route's proofs if they cover it, else from a read of the fence key (one at a time
    /// per route; see `route::proof`).
    pub(crate) async fn vouch(&self, route: &Route, rev: i64) -> Result<Standing, ProxyError> {
        if route.proof.covers(rev) {
            return Ok(Standing::Home);
        }
        let _one = route.proof.reading().await;
        if route.proof.covers(rev) {
            return Ok(Standing::Home);
        }
        self.read_fence(route).await
    }

    /// Reads the fence key of `route`'s store; without the "moved" marker, the answer
    /// proves the tenant lived there up to its header revision.
    async fn read_fence(&self, route: &Route) -> Result<Standing, ProxyError> {
        let key = self.router.fence().guard.fence_key().clone();
        let sent = tokio::time::Instant::now();
        let resp = route
            .datastore
            .unary(Retry::Idempotent, |ch, token| {
                let req = crate::upstream::own_request(
                    crate::proto::etcdserverpb::RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    },
                    token,
                );
                async move { client!(KvClient, ch).range(req).await }
            })
            .await;
        let resp = match resp {
            Ok(r) => r.into_inner(),
            // The datastore refused cutover the read (auth on, and no credentials of its own
            // that may read the fence key): nothing can be proven, as for unguarded reads.
            Err(ProxyError::Etcd(s))
                if matches!(
                    s.code(),
                    Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
                ) =>
            {
                tracing::debug!(datastore = %route.datastore_name, error = %s.message(), "the fence key cannot be read; answers without a fence read of their own go unproven");
                return Ok(Standing::Unprovable);
            }
            Err(e) => return Err(e),
        };
        match resp.kvs.first() {
            Some(kv) if Marker::moved_to(&kv.value).is_some() => Ok(Standing::Left {
                marker_rev: kv.mod_revision,
            }),
            _ => {
                if let Some(h) = &resp.header {
                    route.proof.record(sent, h.revision);
                }
                Ok(Standing::Home)
            }
        }
    }

    /// A read held until the hold timeout because this replica has not followed the tenant.
    fn not_switched(&self, route: &Route) -> ProxyError {
        ProxyError::NoEndpoint {
            datastore: route.datastore_name.clone(),
            detail: "the tenant moved away from this datastore and this replica has not switched to its new one yet"
                .into(),
        }
    }

    /// etcd's (grpc-go's) receive limit, checked on the decoded message.
    fn check_size(&self, msg: &impl prost::Message) -> Result<(), ProxyError> {
        let size = msg.encoded_len();
        if size > self.max_recv_bytes {
            return Err(ProxyError::RequestTooLarge {
                size,
                limit: self.max_recv_bytes,
            });
        }
        Ok(())
    }

    fn count_unguarded_read(&self) {
        self.metrics.unguarded_reads.inc();
        if !self.warned_unguarded.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "a client's etcd user may not read cutover's fence key, so its reads and writes are sent without the \
                 fence guard; give the tenant's etcd role read access to the tenant prefix (this is logged once)"
            );
        }
    }

    fn count_unguarded(&self) {
        self.metrics.unguarded_writes.inc();
        if !self.warned_unguarded.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "a client's etcd user may not read cutover's fence key, so its writes are sent without the fence \
                 guard; give the tenant's etcd role read access to the tenant prefix (this is logged once)"
            );
        }
    }

    pub(crate) fn count_fenced(&self, outcome: &'static str) {
        self.metrics
            .fenced_writes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Logs a failure the proxy made or relayed, and records the request.
    pub(crate) fn finish<T>(
        &self,
        service: &'static str,
        method: &'static str,
        started: Instant,
        result: Result<T, ProxyError>,
    ) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(e) => {
                if !matches!(e, ProxyError::Etcd(_)) {
                    let who = match e.blame() {
                        Blame::Upstream => "datastore",
                        Blame::Downstream => "client",
                        Blame::Proxy => "proxy",
                    };
                    tracing::warn!(service, method, blame = who, retry_safe = e.retry_safe(), error = %e, "request failed");
                }
                e.to_status().code()
            }
        };
        self.metrics.observe_unary(service, method, code, started.elapsed());
        if let Some(c) = &self.tenant_requests {
            c.inc();
        }
        result.map_err(Status::from)
    }

    async fn forward_unary<Req, Resp, F, Fut>(
        &self,
        retry: Retry,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, ProxyError>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let route = self.router.route();
        self.forward_on(&route, retry, request, call).await
    }

    async fn forward_on<Req, Resp, F, Fut>(
        &self,
        route: &Route,
        retry: Retry,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, ProxyError>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        route.usable()?;
        let (metadata, _, msg) = request.into_parts();
        self.check_size(&msg)?;
        let fwd = self.forwarded(&metadata);
        let resp = route
            .datastore
            .unary(retry, |ch, token| call(ch, fwd.request(msg.clone(), token)))
            .await?;
        // Only the message goes back: response headers belong to the datastore's hop.
        Ok(Response::new(resp.into_inner()))
    }
}

/// A request waiting for the fence to lift or for the route to follow the tenant: waits
/// with the one backoff (5 ms doubling to 100 ms), cut short by any route swap, until the
/// fence's hold timeout. Counted in a gauge while it waits.
struct Hold<'a> {
    ctx: &'a Context,
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
    /// `None`: a hold timeout beyond what the clock can count (never gives up).
    deadline: Option<tokio::time::Instant>,
    backoff: crate::backoff::Backoff,
    waiting: Option<(HeldGuard, tokio::sync::watch::Receiver<u64>)>,
}

impl<'a> Hold<'a> {
    fn new(ctx: &'a Context, gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        Hold {
            ctx,
            gauge,
            deadline: tokio::time::Instant::now().checked_add(ctx.router.fence().hold_timeout),
            backoff: crate::backoff::Backoff::new(Duration::from_millis(5), Duration::from_millis(100)),
            waiting: None,
        }
    }

    /// Whether the request has waited at all.
    fn held(&self) -> bool {
        self.waiting.is_some()
    }

    /// Waits before the next attempt; `false` once the hold timeout would pass.
    async fn wait(&mut self) -> bool {
        if let Some(deadline) = self.deadline {
            if tokio::time::Instant::now() + self.backoff.peek() > deadline {
                return false;
            }
        }
        let (_, changes) = self
            .waiting
            .get_or_insert_with(|| (HeldGuard::new(self.gauge), self.ctx.router.changes()));
        let delay = self.backoff.step();
        // A route swap (the commit) ends the wait at once.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = changes.changed() => {}
        }
        true
    }
}

/// Counts a write as held until it is dropped (answered, refused, or its client gone).
struct HeldGuard(prometheus_client::metrics::gauge::Gauge);

impl HeldGuard {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        HeldGuard(gauge.clone())
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(crate) use crate::upstream::client;

/// Implements a unary method by forwarding it unchanged. Written in the shape
/// `#[tonic::async_trait]` gives trait methods, since that attribute does not look inside
/// macro calls.
macro_rules! forward {
    // An RPC that acts on the whole datastore: the operator's alone when a prefix is set.
    (operator_only $name:ident, $req:ty, $resp:ty, $svc:literal, $method:literal, $retry:expr, $client:ident) => {
        forward!(@with (|ctx: &Context, request: &tonic::Request<$req>| ctx.refuse_tenant(request, $svc, $method))
            $name, $req, $resp, $svc, $method, $retry, $client);
    };
    ($name:ident, $req:ty, $resp:ty, $svc:literal, $method:literal, $retry:expr, $client:ident) => {
        forward!(@with (|_: &Context, _: &tonic::Request<$req>| Ok(()))
            $name, $req, $resp, $svc, $method, $retry, $client);
    };
    (@with ($check:expr) $name:ident, $req:ty, $resp:ty, $svc:literal, $method:literal, $retry:expr, $client:ident) => {
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            request: tonic::Request<$req>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<tonic::Response<$resp>, tonic::Status>> + Send + 'async_trait>,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let check: fn(&Context, &tonic::Request<$req>) -> Result<(), tonic::Status> = $check;
                check(&self.ctx, &request)?;
                self.ctx
                    .unary($svc, $method, $retry, request, |ch, req| async move {
                        crate::upstream::client!($client, ch).$name(req).await
                    })
                    .await
            })
        }
    };
}
pub(crate) use forward;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("tls: {0}")]
    Tls(String),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound listener, so that bind errors surface before anything else starts.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ServeError> {
        let bind_err = |source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await.map_err(bind_err)?)),
            ListenAddr::Unix(path) => {
                // A socket file left by an earlier run would make bind fail.
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    }
                }
                Ok(Listener::Unix(
                    UnixListener::bind(path).map_err(bind_err)?,
                    path.clone(),
                ))
            }
        }
    }

    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, p) => format!("unix://{}", p.display()),
        }
    }
}

fn tls_config(cfg: &Config) -> Result<Option<ServerTlsConfig>, ServeError> {
    let Some(tls) = &cfg.tls else { return Ok(None) };
    let read = |key: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ServeError::Tls(format!("{key} {}: {e}", p.display())))
    };
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("tls.certFile", &tls.cert_file)?,
            read("tls.keyFile", &tls.key_file)?,
        ))
        .timeout(cfg.limits.handshake_timeout);
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read("tls.clientCAFile", ca)?));
    }
    Ok(Some(config))
}

/// Unary handlers check sizes against the exact limit themselves, to answer with the
/// wording etcd uses; the decoder's own cap only bounds memory.
macro_rules! svc {
    ($server:ident, $impl:expr, $cap:expr) => {
        $server::new($impl)
            .max_decoding_message_size($cap)
            .max_encoding_message_size(usize::MAX)
    };
}

/// The services of one context, Auth aside: KV, Watch, Lease, Cluster, Maintenance.
pub fn data_routes(ctx: &Arc<Context>) -> tonic::service::Routes {
    data_routes_of(
        ctx,
        kv::KvService::new(ctx.clone()),
        watch::WatchService::new(ctx.clone()),
    )
}

/// [`data_routes`], with KV and Watch sent to the context `owner` says holds their keys
/// (see [`routed`]); Lease, Cluster and Maintenance are `ctx`'s own.
pub fn data_routes_routed(ctx: &Arc<Context>, owner: Arc<dyn routed::KeyOwner>) -> tonic::service::Routes {
    data_routes_of(
        ctx,
        routed::RoutedKv::new(ctx.clone(), owner.clone()),
        watch::WatchService::routed(ctx.clone(), owner),
    )
}

fn data_routes_of<K: crate::proto::kv_answers::k_v_server::KV>(
    ctx: &Arc<Context>,
    kv: K,
    watch: watch::WatchService,
) -> tonic::service::Routes {
    let cap = ctx.max_recv_bytes.saturating_mul(4);
    tonic::service::Routes::new(svc!(KvServer, kv, cap))
        .add_service(svc!(WatchServer, watch, cap))
        .add_service(svc!(LeaseServer, lease::LeaseService::new(ctx.clone()), cap))
        .add_service(svc!(ClusterServer, cluster::ClusterService::new(ctx.clone()), cap))
        .add_service(svc!(
            MaintenanceServer,
            maintenance::MaintenanceService::new(ctx.clone()),
            cap
        ))
}

/// Every service of the sidecar: the data path and Auth, forwarded.
pub fn sidecar_routes(ctx: &Arc<Context>) -> tonic::service::Routes {
    let cap = ctx.max_recv_bytes.saturating_mul(4);
    data_routes(ctx).add_service(svc!(AuthServer, auth::AuthService::new(ctx.clone()), cap))
}

/// An Auth service served by cutover itself (the gateway's), with the same limits.
pub fn auth_routes<A: crate::proto::etcdserverpb::auth_server::Auth>(
    auth: A,
    max_recv_bytes: usize,
) -> tonic::service::Routes {
    tonic::service::Routes::new(svc!(AuthServer, auth, max_recv_bytes.saturating_mul(4)))
}

/// Chooses, per request, which services answer it: in gateway mode, those of the caller's
/// tenant. `Ok(None)`: the routes `serve` was given.
pub trait Dispatch: Send + Sync + 'static {
    /// May put what the services need to know of the caller in the request's extensions.
    fn routes_for(&self, request: &mut http::request::Parts) -> Result<Option<tonic::service::Routes>, Status>;
}

/// The routes given to `serve`, or those a [`Dispatch`] picks.
#[derive(Clone)]
struct Dispatched {
    inner: tonic::service::Routes,
    dispatch: Option<Arc<dyn Dispatch>>,
}

type Body = tonic::body::Body;
type RoutesFuture = <tonic::service::Routes as tower::Service<http::Request<Body>>>::Future;

impl tower::Service<http::Request<Body>> for Dispatched {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Either<RoutesFuture, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(dispatch) = &self.dispatch else {
            return Either::Left(self.inner.call(req));
        };
        let (mut parts, body) = req.into_parts();
        let picked = dispatch.routes_for(&mut parts);
        let req = http::Request::from_parts(parts, body);
        match picked {
            Ok(None) => Either::Left(self.inner.call(req)),
            Ok(Some(mut routes)) => Either::Left(routes.call(req)),
            Err(status) => Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// Serves the sidecar's services on `listener` until `shutdown` completes.
pub async fn serve(
    cfg: &Config,
    ctx: Arc<Context>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let routes = sidecar_routes(&ctx);
    serve_routes(cfg, ctx.max_recv_bytes, routes, None, listener, shutdown).await
}

/// Serves `routes` (or what `dispatch` picks for each request) on `listener` until
/// `shutdown` completes.
pub async fn serve_routes(
    cfg: &Config,
    max_recv_bytes: usize,
    routes: tonic::service::Routes,
    dispatch: Option<Arc<dyn Dispatch>>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(cfg.limits.max_streams_per_connection))
        .accept_http1(true);
    if let Some(tls) = tls_config(cfg)? {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .layer(tower::layer::layer_fn(|inner| NotGrpc {
            inner,
            limit: max_recv_bytes,
        }))
        .layer(tower::layer::layer_fn(move |inner| Dispatched {
            inner,
            dispatch: dispatch.clone(),
        }))
        .add_routes(routes);
    match listener {
        Listener::Tcp(l) => {
            let incoming = limits::incoming(l, cfg.limits);
            let incoming = tokio_stream::StreamExt::map(incoming, |conn| conn.map(Coalesced::new));
            router.serve_with_incoming_shutdown(incoming, shutdown).await?;
        }
        Listener::Unix(l, path) => {
            // Older grpc-go clients send the socket path as :authority; see uds.rs.
            let incoming = tokio_stream::StreamExt::map(limits::incoming(l, cfg.limits), |conn| {
                conn.map(|c| Coalesced::new(uds::FixAuthority::new(c)))
            });
            let result = router.serve_with_incoming_shutdown(incoming, shutdown).await;
            let _ = std::fs::remove_file(&path);
            result?;
        }
    }
    Ok(())
}

/// Guards the gRPC services: answers anything that is not gRPC over HTTP/2 (a browser,
/// curl, an HTTP/1 health check) with a plain HTTP error, answers unknown methods as etcd
/// does, and words the decoder's refusal of an oversized message as etcd does.
#[derive(Clone)]
struct NotGrpc<S> {
    inner: S,
    /// The configured receive limit, quoted in the oversized-message error.
    limit: usize,
}

pin_project_lite::pin_project! {
    /// The inner service's response, with tonic's "message too large" status reworded.
    struct Reworded<F> {
        #[pin]
        inner: F,
        limit: usize,
    }
}

impl<F, E> Future for Reworded<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let limit = *this.limit;
        this.inner.poll(cx).map_ok(|resp| reword_too_large(resp, limit))
    }
}

/// tonic refuses a message over its decoding cap with OutOfRange and words of its own;
/// etcd (grpc-go) uses ResourceExhausted and "grpc: received message larger than max".
fn reword_too_large(resp: http::Response<tonic::body::Body>, limit: usize) -> http::Response<tonic::body::Body> {
    let h = resp.headers();
    if h.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return resp;
    }
    let Some(found) = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .and_then(|m| m.strip_prefix("Error,%20decoded%20message%20length%20too%20large:%20found%20"))
        .and_then(|rest| rest.split("%20").next())
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return resp;
    };
    ProxyError::RequestTooLarge { size: found, limit }
        .to_status()
        .into_http()
}

impl<S, B> tower::Service<http::Request<B>> for NotGrpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Reworded<S::Future>, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let grpc = req.version() == http::Version::HTTP_2
            && req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
        if grpc {
            if let Some(refusal) = unknown_method(req.uri().path()) {
                return Either::Right(std::future::ready(Ok(refusal.into_http())));
            }
            return Either::Left(Reworded {
                inner: self.inner.call(req),
                limit: self.limit,
            });
        }
        let mut resp = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from_static(
                b"cutover: this port serves the etcd v3 gRPC API over HTTP/2; the admin API is on its own port\n",
            ),
        )));
        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Either::Right(std::future::ready(Ok(resp)))
    }
}

/// Every method the proxy serves, by service, for answering unknown ones as grpc-go does.
const SERVICES: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
];

/// The Unimplemented status etcd (grpc-go) gives for a path it does not serve.
fn unknown_method(path: &str) -> Option<Status> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = rest.rsplit_once('/').unwrap_or((rest, ""));
    let error = match SERVICES.iter().find(|(s, _)| *s == service) {
        // etcd serves these helpers; cutover does not (yet), and says so plainly.
        None if service == "v3lockpb.Lock" || service == "v3electionpb.Election" => ProxyError::NotProxied {
            service: service.to_string(),
            instead: "lock and elect with KV, Lease and Watch (clientv3/concurrency)",
        },
        None => ProxyError::UnknownMethod {
            service: service.to_string(),
            method: None,
        },
        Some((_, methods)) if !methods.contains(&method) => ProxyError::UnknownMethod {
            service: service.to_string(),
            method: Some(method.to_string()),
        },
        Some(_) => return None,
    };
    Some(error.to_status())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_paths_are_named_as_grpc_go_names_them() {
        assert!(unknown_method("/etcdserverpb.KV/Range").is_none());
        assert_eq!(
            unknown_method("/etcdserverpb.KV/Nope").unwrap().message(),
            "unknown method Nope for service etcdserverpb.KV"
        );
        assert_eq!(unknown_method("/x.Y/Z").unwrap().message(), "unknown service x.Y");
    }

    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10q"), None);
        assert_eq!(parse_grpc_timeout("100000000H"), Some(MAX_CLIENT_DEADLINE));
        assert_eq!(parse_grpc_timeout("18446744073709551615H"), Some(MAX_CLIENT_DEADLINE));
    }

    #[test]
    fn only_request_metadata_is_forwarded() {
        let mut m = MetadataMap::new();
        m.insert("token", "abc".parse().unwrap());
        m.insert("hasleader", "true".parse().unwrap());
        m.insert("content-type", "application/grpc".parse().unwrap());
        m.insert("grpc-timeout", "3S".parse().unwrap());
        let f = Forwarded::from_incoming(&m);
        let req = f.request((), Some("proxy".parse().unwrap()));
        assert_eq!(req.metadata().get("token").unwrap(), "abc");
        assert_eq!(req.metadata().get("hasleader").unwrap(), "true");
        assert!(req.metadata().get("content-type").is_none());
        assert_eq!(f.timeout, Some(Duration::from_secs(3)));
    }
}
