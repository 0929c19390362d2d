//! Lease: unary calls are forwarded; a KeepAlive stream is relayed, and opened again on
//! another endpoint if its connection breaks, resending the keep-alives left unanswered.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::stream::{Reconnect, UpstreamStream};
use super::{client, forward, Context, Forwarded};
use crate::error::messages;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::*;
use crate::upstream::{classify, Failure, Retry};

pub struct LeaseService {
    ctx: Arc<Context>,
}

impl LeaseService {
    pub fn new(ctx: Arc<Context>) -> Self {
        LeaseService { ctx }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    forward!(
        lease_grant,
        LeaseGrantRequest,
        LeaseGrantResponse,
        "Lease",
        "LeaseGrant",
        Retry::IfNotSent,
        LeaseClient
    );
    forward!(
        lease_revoke,
        LeaseRevokeRequest,
        LeaseRevokeResponse,
        "Lease",
        "LeaseRevoke",
        Retry::IfNotSent,
        LeaseClient
    );
    forward!(
        lease_time_to_live,
        LeaseTimeToLiveRequest,
        LeaseTimeToLiveResponse,
        "Lease",
        "LeaseTimeToLive",
        Retry::Idempotent,
        LeaseClient
    );
    forward!(
        lease_leases,
        LeaseLeasesRequest,
        LeaseLeasesResponse,
        "Lease",
        "LeaseLeases",
        Retry::Idempotent,
        LeaseClient
    );

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (metadata, _, inbound) = request.into_parts();
        let (down, rx) = mpsc::channel(64);
        let ctx = self.ctx.clone();
        let fwd = Forwarded::from_incoming(&metadata);
        tokio::spawn(relay_keep_alive(ctx, fwd, inbound, down));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn relay_keep_alive(
    ctx: Arc<Context>,
    fwd: Forwarded,
    mut inbound: Streaming<LeaseKeepAliveRequest>,
    down: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
) {
    let _open = ctx.metrics.stream_guard("lease_keepalive");
    let datastore = ctx.router.route().datastore.clone();
    let open = || {
        UpstreamStream::open(&datastore, &fwd, |ch, req| async move {
            client!(LeaseClient, ch).lease_keep_alive(req).await
        })
    };
    let mut upstream = open();
    let mut reconnect = Reconnect::new();
    // Lease IDs sent and not yet answered: resent if the stream has to be opened again.
    let mut unanswered = BTreeSet::new();
    let code = loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    unanswered.insert(req.id);
                    upstream.send(req);
                }
                // etcd ends the stream when the client stops sending.
                Ok(None) => break Code::Ok,
                Err(_) => break Code::Cancelled,
            },
            resp = upstream.next() => match resp {
                Some(Ok(r)) => {
                    reconnect.reset();
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
                    tracing::warn!(datastore = %datastore.name, endpoint = %datastore.endpoint_url(upstream.endpoint), error = %status.message(), "keep-alive stream to the datastore broke; reopening");
                    datastore.mark_failed(upstream.endpoint);
                    if !reconnect.wait().await {
                        let _ = down.send(Err(Status::unavailable(messages::NO_CONNECTION))).await;
                        break Code::Unavailable;
                    }
                    upstream = open();
                    for id in &unanswered {
                        upstream.send(LeaseKeepAliveRequest { id: *id });
                    }
                }
            },
        }
    };
    ctx.metrics.observe_stream_end("Lease", "LeaseKeepAlive", code);
}
