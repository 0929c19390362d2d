//! Lease: unary calls are forwarded; a KeepAlive stream is relayed, and opened again on
//! another endpoint if its connection breaks, resending the keep-alives left unanswered.
//!
//! During a migration, grants and revokes are mirrored to the target (same ID, same TTL)
//! so that a lease granted after the copy exists there at the commit, and they wait (or
//! are refused, in reject mode) while the source is fenced. After a commit, lease IDs that
//! had to change on the target are translated both ways, and keep-alive streams move to
//! the new datastore.
//!
//! With a prefix, a tenant reaches only its own leases: one with a key outside the
//! tenant's range is another tenant's (or shared with one, which is refused alike), and
//! revoking, keeping alive or asking about it gets etcd's permission error. A lease with
//! no key yet cannot be told apart; it is served to whoever names its ID, and left out of
//! the tenant's lease list.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use super::stream::{Answers, Driven, Reconnect, UpstreamStream};
use super::{client, no_connection, Context, Forwarded, HeldGuard};
use crate::config::FenceMode;
use crate::error::ProxyError;
use crate::proto::authpb::permission::Type as PermType;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::*;
use crate::route::{translate, MigrationLink, Route};
use crate::upstream::own_request;
use crate::upstream::{classify, Failure, Retry};

pub struct LeaseService {
    ctx: Arc<Context>,
}

/// Whose a lease is, by the keys attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Every key on it is the tenant's; it lives this many seconds more at most.
    Tenant { ttl: i64 },
    /// It has no key (or does not exist): it cannot be told.
    Unknown,
    /// A key on it lies outside the tenant's range.
    Other,
}

/// Whose the lease with `client_id` is, asked of the current datastore with cutover's own
/// credentials (the client may not be allowed to list another tenant's keys).
async fn owner(ctx: &Context, client_id: i64) -> Result<Owner, ProxyError> {
    let resp = lease_keys(ctx, client_id).await?;
    let scope = ctx.router.scope();
    // A lease holding cutover's own keys (a migration's lock) is no client's to touch, nor
    // one on kube-apiserver's compaction key, which every tenant of the datastore shares.
    if resp.keys.iter().any(|k| !scope.in_prefix(k) || scope.is_reserved(k)) {
        return Ok(Owner::Other);
    }
    Ok(if resp.keys.is_empty() {
        Owner::Unknown
    } else {
        Owner::Tenant { ttl: resp.ttl }
    })
}

/// The lease with `client_id` and its keys, as the current datastore has them.
async fn lease_keys(ctx: &Context, client_id: i64) -> Result<LeaseTimeToLiveResponse, ProxyError> {
    let route = ctx.router.route();
    let id = route
        .translation
        .as_ref()
        .map_or(client_id, |t| translate::lease_id_to_target(t, client_id));
    let resp = route
        .datastore
        .unary(Retry::Idempotent, |ch, token| {
            let r = own_request(LeaseTimeToLiveRequest { id, keys: true }, token);
            async move { client!(LeaseClient, ch).lease_time_to_live(r).await }
        })
        .await?
        .into_inner();
    Ok(resp)
}

/// (Gateway) etcd's check before a key is put on lease `id`, or the lease is revoked: the
/// caller may write every key already on it.
pub(super) async fn check_keys_writable(
    ctx: &Context,
    permits: Option<&Arc<crate::rbac::Permits>>,
    id: i64,
) -> Result<(), Status> {
    check_keys(ctx, permits, id, PermType::Write).await
}

/// The caller may read (`Read`) or write (`Write`) every key on lease `id`; looked up only
/// when it may not do so with every key the context serves.
async fn check_keys(
    ctx: &Context,
    permits: Option<&Arc<crate::rbac::Permits>>,
    id: i64,
    wanted: PermType,
) -> Result<(), Status> {
    let Some(p) = permits else { return Ok(()) };
    if super::permits::may_all(p, ctx.router.scope().tenant_range(), wanted) {
        return Ok(());
    }
    let on_lease = lease_keys(ctx, id).await.map_err(|e| e.to_status())?;
    for key in &on_lease.keys {
        p.check_range(key, b"", wanted)
            .map_err(|e| ProxyError::from(e).to_status())?;
    }
    Ok(())
}

/// Leases seen to carry the tenant's keys (and nobody else's), by the client's ID, each
/// until the time its TTL said it would expire at the latest: an ID cannot be granted
/// again before then, so a key put on one of them needs no lookup. Only puts use it;
/// revoking, keeping alive or looking into a lease always asks the datastore. Bounded;
/// forgotten all at once when full.
#[derive(Default)]
pub struct KnownLeases(parking_lot::Mutex<std::collections::HashMap<i64, tokio::time::Instant>>);

const KNOWN_LEASES: usize = 4096;

impl KnownLeases {
    fn contains(&self, id: i64) -> bool {
        self.0
            .lock()
            .get(&id)
            .is_some_and(|until| tokio::time::Instant::now() < *until)
    }
    fn insert(&self, id: i64, ttl: i64) {
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(ttl.clamp(0, 3600) as u64);
        let mut known = self.0.lock();
        if known.len() >= KNOWN_LEASES {
            known.clear();
        }
        known.insert(id, until);
    }
    fn forget(&self, id: i64) {
        self.0.lock().remove(&id);
    }
}

/// How a check of a lease's owner may use what is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// A put on the lease: a lease known to be the tenant's needs no lookup.
    Remembered,
    /// A call about the lease itself: always asked of the datastore.
    Fresh,
}

/// A tenant's request about lease `id`: refused if the lease is another tenant's.
pub(super) async fn check_owner(
    ctx: &Context,
    operator: bool,
    id: i64,
    lookup: Lookup,
    service: &'static str,
    method: &'static str,
) -> Result<(), Status> {
    if operator || (lookup == Lookup::Remembered && ctx.known_leases.contains(id)) {
        return Ok(());
    }
    match owner(ctx, id).await {
        Ok(Owner::Other) => {
            ctx.metrics.tenant_refused(service, method);
            Err(ProxyError::NotTheTenants { service, method }.to_status())
        }
        Ok(Owner::Tenant { ttl }) => {
            ctx.known_leases.insert(id, ttl);
            Ok(())
        }
        Ok(Owner::Unknown) => Ok(()),
        Err(e) => Err(e.to_status()),
    }
}

/// The leases a write attaches keys to (nested Txns included).
pub(super) fn leases_of_txn(txn: &TxnRequest, out: &mut Vec<i64>) {
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) if p.lease != 0 => out.push(p.lease),
            Some(request_op::Request::RequestTxn(t)) => leases_of_txn(t, out),
            _ => {}
        }
    }
}

impl LeaseService {
    /// The ID the current datastore knows a client's lease by.
    fn source_lease_id(&self, client_id: i64) -> i64 {
        self.ctx
            .router
            .route()
            .translation
            .as_ref()
            .map_or(client_id, |t| translate::lease_id_to_target(t, client_id))
    }

    pub fn new(ctx: Arc<Context>) -> Self {
        LeaseService { ctx }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = Driven<LeaseKeepAliveResponse>;

    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        if let Err(e) = self.wait_unfenced().await {
            return Err(e.into());
        }
        let ttl = request.get_ref().ttl;
        let resp = self
            .ctx
            .unary_translated(
                "Lease",
                "LeaseGrant",
                Retry::IfNotSent,
                request,
                |t, r: &mut LeaseGrantRequest| {
                    r.id = translate::lease_id_to_target(t, r.id);
                    Ok(())
                },
                |t, r: &mut LeaseGrantResponse, ()| {
                    translate::header(t, &mut r.header);
                    r.id = translate::lease_id_to_virtual(t, r.id);
                },
                |ch, req| async move { client!(LeaseClient, ch).lease_grant(req).await },
            )
            .await?;
        if let Some(link) = self.ctx.router.link() {
            let client_id = resp.get_ref().id;
            mirror_grant(&link, self.source_lease_id(client_id), client_id, ttl).await;
        }
        Ok(resp)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        if let Err(e) = self.wait_unfenced().await {
            return Err(e.into());
        }
        let id = request.get_ref().id;
        let operator = self.ctx.access.is_operator(&request);
        check_owner(&self.ctx, operator, id, Lookup::Fresh, "Lease", "LeaseRevoke").await?;
        check_keys_writable(&self.ctx, super::permits::of(&request), id).await?;
        self.ctx.known_leases.forget(id);
        let resp = self
            .ctx
            .unary_translated(
                "Lease",
                "LeaseRevoke",
                Retry::IfNotSent,
                request,
                |t, r: &mut LeaseRevokeRequest| {
                    r.id = translate::lease_id_to_target(t, r.id);
                    Ok(())
                },
                |t, r: &mut LeaseRevokeResponse, ()| translate::header(t, &mut r.header),
                |ch, req| async move { client!(LeaseClient, ch).lease_revoke(req).await },
            )
            .await?;
        if let Some(link) = self.ctx.router.link() {
            let target_id = link.leases.lock().remove(&self.source_lease_id(id));
            if let Some(target_id) = target_id {
                let _ = crate::upstream::calls::revoke(&link.target, target_id).await;
            }
        }
        Ok(resp)
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let operator = self.ctx.access.is_operator(&request);
        check_owner(
            &self.ctx,
            operator,
            request.get_ref().id,
            Lookup::Fresh,
            "Lease",
            "LeaseTimeToLive",
        )
        .await?;
        // etcd (3.4.26 on, 3.5.9 on) lists a lease's keys only to a caller that may read
        // every one of them: judged by the keys of the answer itself.
        let reader = super::permits::of(&request).filter(|_| request.get_ref().keys).cloned();
        let scope = self.ctx.router.scope().clone();
        let answer = self
            .ctx
            .unary_translated(
                "Lease",
                "LeaseTimeToLive",
                Retry::Idempotent,
                request,
                |t, r: &mut LeaseTimeToLiveRequest| {
                    r.id = translate::lease_id_to_target(t, r.id);
                    Ok(())
                },
                move |t, r: &mut LeaseTimeToLiveResponse, ()| {
                    translate::header(t, &mut r.header);
                    r.id = translate::lease_id_to_virtual(t, r.id);
                    // Only the tenant's keys: cutover's own are nobody's business, and a key
                    // another tenant attached since the check is not this one's.
                    r.keys.retain(|k| scope.in_prefix(k) && !scope.is_reserved(k));
                },
                |ch, req| async move { client!(LeaseClient, ch).lease_time_to_live(req).await },
            )
            .await?;
        if let Some(p) = reader {
            for key in &answer.get_ref().keys {
                p.check_range(key, b"", PermType::Read)
                    .map_err(|e| ProxyError::from(e).to_status())?;
            }
        }
        Ok(answer)
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let operator = self.ctx.access.is_operator(&request);
        let mut resp = self
            .ctx
            .unary_translated(
                "Lease",
                "LeaseLeases",
                Retry::Idempotent,
                request,
                |_, _: &mut LeaseLeasesRequest| Ok(()),
                |t, r: &mut LeaseLeasesResponse, ()| {
                    translate::header(t, &mut r.header);
                    for l in &mut r.leases {
                        l.id = translate::lease_id_to_virtual(t, l.id);
                    }
                },
                |ch, req| async move { client!(LeaseClient, ch).lease_leases(req).await },
            )
            .await?;
        if !operator {
            // Only leases with the tenant's keys on them: a few lookups at a time.
            let all = std::mem::take(&mut resp.get_mut().leases);
            let ctx = &self.ctx;
            let owners: Vec<_> = futures::stream::iter(all)
                .map(|l| async move { (owner(ctx, l.id).await, l) })
                .buffered(8)
                .collect()
                .await;
            for (who, lease) in owners {
                match who {
                    Ok(Owner::Tenant { .. }) => resp.get_mut().leases.push(lease),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_status()),
                }
            }
        }
        Ok(resp)
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let operator = self.ctx.access.is_operator(&request);
        let (metadata, _, inbound) = request.into_parts();
        let ctx = self.ctx.clone();
        let fwd = self.ctx.forwarded(&metadata);
        Ok(Response::new(Driven::new(|down| {
            relay_keep_alive(ctx, fwd, operator, inbound, down)
        })))
    }
}

impl LeaseService {
    /// While the source is fenced, a lease change waits for the commit (or the release)
    /// in hold mode, and is refused at once in reject mode.
    async fn wait_unfenced(&self) -> Result<(), ProxyError> {
        let Some(link) = self.ctx.router.link() else {
            return Ok(());
        };
        let mut fenced = link.fenced.subscribe();
        if !*fenced.borrow() {
            return Ok(());
        }
        let policy = self.ctx.router.fence();
        let refused = || ProxyError::Fenced {
            holder: "migration".into(),
        };
        if policy.mode == FenceMode::Reject {
            self.ctx.count_fenced("rejected");
            return Err(refused());
        }
        let _held = HeldGuard::new(&self.ctx.metrics.held_writes);
        let lifted = tokio::time::timeout(policy.hold_timeout, fenced.wait_for(|f| !*f))
            .await
            .is_ok();
        match lifted {
            true => {
                self.ctx.count_fenced("held");
                Ok(())
            }
            false => {
                self.ctx.count_fenced("held_rejected");
                Err(refused())
            }
        }
    }
}

/// Grants the lease on the migration's target too, so it is there at the commit: with the
/// client's ID when the target has it free (no translation needed), another one otherwise.
/// The link maps the source's ID to the target's.
async fn mirror_grant(link: &MigrationLink, source_id: i64, client_id: i64, ttl: i64) {
    let grant = |id: i64| async move {
        link.target
            .unary(Retry::IfNotSent, |ch, token| {
                let r = own_request(LeaseGrantRequest { ttl, id }, token);
                async move { client!(LeaseClient, ch).lease_grant(r).await }
            })
            .await
    };
    let result = match grant(client_id).await {
        Err(crate::error::ProxyError::Etcd(s)) if crate::error::is_lease_exists(&s) => grant(0).await,
        other => other,
    };
    match result {
        Ok(r) => {
            let to = r.into_inner().id;
            tracing::debug!(
                lease = format!("{client_id:x}"),
                on_target = format!("{to:x}"),
                "mirrored a lease grant"
            );
            link.leases.lock().insert(source_id, to);
        }
        Err(e) => {
            tracing::warn!(lease = format!("{client_id:x}"), error = %e, "could not mirror a lease grant to the migration target")
        }
    }
}

/// Lease IDs a keep-alive stream remembers as checked (the tenant's, or without keys):
/// beyond this many, they are checked again.
const CHECKED_LEASES: usize = 1024;

async fn relay_keep_alive(
    ctx: Arc<Context>,
    fwd: Forwarded,
    operator: bool,
    mut inbound: Streaming<LeaseKeepAliveRequest>,
    mut down: Answers<LeaseKeepAliveResponse>,
) {
    let _open = ctx.metrics.stream_guard("lease_keepalive");
    // Counted when the relay ends, or is dropped with its client's stream.
    let mut end = ctx.metrics.stream_end("Lease", "LeaseKeepAlive");
    let mut changes = ctx.router.changes();
    let mut route = ctx.router.route();
    let open = |route: &Route| {
        UpstreamStream::open(&route.datastore, &fwd, |ch, req| async move {
            client!(LeaseClient, ch).lease_keep_alive(req).await
        })
    };
    let to_target = |route: &Route, id: i64| {
        route
            .translation
            .as_ref()
            .map_or(id, |t| translate::lease_id_to_target(t, id))
    };
    if let Err(e) = route.usable() {
        let _ = down.send(Err(e.to_status())).await;
        end.code = Code::Unavailable;
        return;
    }
    let mut upstream = open(&route);
    let mut reconnect = Reconnect::new();
    // Lease IDs sent and not yet answered: resent if the stream has to be opened again.
    let mut unanswered = BTreeSet::new();
    let mut checked = std::collections::HashSet::new();
    let code = loop {
        tokio::select! {
            _ = changes.changed() => {
                // A migration committed: keep-alives go to the new datastore from now on.
                route = ctx.router.route();
                if let Err(e) = route.usable() {
                    let _ = down.send(Err(e.to_status())).await;
                    break Code::Unavailable;
                }
                upstream = open(&route);
                for id in &unanswered {
                    upstream.send(LeaseKeepAliveRequest { id: to_target(&route, *id) });
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if !checked.contains(&req.id) {
                        if check_owner(&ctx, operator, req.id, Lookup::Fresh, "Lease", "LeaseKeepAlive").await.is_err() {
                            // etcd's answer for a lease it does not have: TTL 0. The
                            // stream carries the client's other leases too; it stays.
                            let header = Some(ResponseHeader::default());
                            if down.send(Ok(LeaseKeepAliveResponse { header, id: req.id, ttl: 0 })).await.is_err() {
                                break Code::Cancelled;
                            }
                            continue;
                        }
                        if checked.len() >= CHECKED_LEASES {
                            checked.clear();
                        }
                        checked.insert(req.id);
                    }
                    unanswered.insert(req.id);
                    upstream.send(LeaseKeepAliveRequest { id: to_target(&route, req.id) });
                }
                // etcd ends the stream when the client stops sending.
                Ok(None) => break Code::Ok,
                Err(_) => break Code::Cancelled,
            },
            resp = upstream.next() => match resp {
                Some(Ok(mut r)) => {
                    reconnect.reset();
                    if let Some(t) = &route.translation {
                        translate::header(t, &mut r.header);
                        r.id = translate::lease_id_to_virtual(t, r.id);
                    }
                    unanswered.remove(&r.id);
                    if down.send(Ok(r)).await.is_err() {
                        break Code::Cancelled;
                    }
                }
                Some(Err(status)) if classify(&status) == Failure::Answered => {
                    let code = status.code();
                    let _ = down.send(Err(status)).await;
                    break code;
                }
                None => break Code::Ok,
                Some(Err(status)) => {
                    let datastore = &route.datastore;
                    tracing::warn!(datastore = %datastore.name, endpoint = %datastore.endpoint_url(upstream.endpoint), error = %status.message(), "keep-alive stream to the datastore broke; reopening");
                    datastore.mark_failed(upstream.endpoint);
                    if !reconnect.wait().await {
                        let _ = down.send(Err(no_connection(&route.datastore.name))).await;
                        break Code::Unavailable;
                    }
                    upstream = open(&route);
                    for id in &unanswered {
                        upstream.send(LeaseKeepAliveRequest { id: to_target(&route, *id) });
                    }
                }
            },
        }
    };
    end.code = code;
}
