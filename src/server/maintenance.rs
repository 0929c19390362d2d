//! Maintenance: member status, hashes, defragmentation, alarms and snapshots of the
//! authoritative datastore (of the endpoint the proxy currently uses).

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
        alarm,
        AlarmRequest,
        AlarmResponse,
        "Maintenance",
        "Alarm",
        Retry::IfNotSent,
        MaintenanceClient
    );
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
        defragment,
        DefragmentRequest,
        DefragmentResponse,
        "Maintenance",
        "Defragment",
        Retry::IfNotSent,
        MaintenanceClient
    );
    forward!(
        hash,
        HashRequest,
        HashResponse,
        "Maintenance",
        "Hash",
        Retry::Idempotent,
        MaintenanceClient
    );
    forward!(
        hash_kv,
        HashKvRequest,
        HashKvResponse,
        "Maintenance",
        "HashKV",
        Retry::Idempotent,
        MaintenanceClient
    );
    forward!(
        move_leader,
        MoveLeaderRequest,
        MoveLeaderResponse,
        "Maintenance",
        "MoveLeader",
        Retry::IfNotSent,
        MaintenanceClient
    );
    forward!(
        downgrade,
        DowngradeRequest,
        DowngradeResponse,
        "Maintenance",
        "Downgrade",
        Retry::IfNotSent,
        MaintenanceClient
    );

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
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
