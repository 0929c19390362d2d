//! Maintenance: member status, hashes, defragmentation, alarms and snapshots of the
//! authoritative datastore (of the endpoint the proxy currently uses). With a prefix, a
//! tenant gets the status and the alarm list; the rest is the operator's (see `access`).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{client, forward, Context};
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;
use crate::upstream::Retry;

pub struct MaintenanceService {
    ctx: Arc<Context>,
}

impl MaintenanceService {
    pub fn new(ctx: Arc<Context>) -> Self {
        MaintenanceService { ctx }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = SnapshotStream;

    forward!(
        status,
        StatusRequest,
        StatusResponse,
        "Maintenance",
        "Status",
        Retry::Idempotent,
        MaintenanceClient
    );
    forward!(
        operator_only defragment,
        DefragmentRequest,
        DefragmentResponse,
        "Maintenance",
        "Defragment",
        Retry::IfNotSent,
        MaintenanceClient
    );
    forward!(
        operator_only hash,
        HashRequest,
        HashResponse,
        "Maintenance",
        "Hash",
        Retry::Idempotent,
        MaintenanceClient
    );
    forward!(
        operator_only hash_kv,
        HashKvRequest,
        HashKvResponse,
        "Maintenance",
        "HashKV",
        Retry::Idempotent,
        MaintenanceClient
    );
    forward!(
        operator_only move_leader,
        MoveLeaderRequest,
        MoveLeaderResponse,
        "Maintenance",
        "MoveLeader",
        Retry::IfNotSent,
        MaintenanceClient
    );
    forward!(
        operator_only downgrade,
        DowngradeRequest,
        DowngradeResponse,
        "Maintenance",
        "Downgrade",
        Retry::IfNotSent,
        MaintenanceClient
    );

    /// Listing alarms is a read anyone may make; raising or clearing one acts on the
    /// whole datastore.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        if request.get_ref().action() != alarm_request::AlarmAction::Get {
            self.ctx.refuse_tenant(&request, "Maintenance", "Alarm")?;
        }
        self.ctx
            .unary(
                "Maintenance",
                "Alarm",
                Retry::IfNotSent,
                request,
                |ch, req| async move { client!(MaintenanceClient, ch).alarm(req).await },
            )
            .await
    }

    /// A snapshot is the whole datastore, other tenants included: the operator's alone.
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        self.ctx.refuse_tenant(&request, "Maintenance", "Snapshot")?;
        let guard = self.ctx.metrics.stream_guard("snapshot");
        let upstream = self
            .ctx
            .unary(
                "Maintenance",
                "Snapshot",
                Retry::Idempotent,
                request,
                |ch, req| async move { client!(MaintenanceClient, ch).snapshot(req).await },
            )
            .await?
            .into_inner();
        // The guard lives as long as the stream does.
        let stream = upstream.map(move |item| {
            let _ = &guard;
            item
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
