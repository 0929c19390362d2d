//! Cluster: member administration, answered by the authoritative datastore.

use std::sync::Arc;

use super::{forward, Context};
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;
use crate::upstream::Retry;

pub struct ClusterService {
    ctx: Arc<Context>,
}

impl ClusterService {
    pub fn new(ctx: Arc<Context>) -> Self {
        ClusterService { ctx }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    forward!(
        member_add,
        MemberAddRequest,
        MemberAddResponse,
        "Cluster",
        "MemberAdd",
        Retry::IfNotSent,
        ClusterClient
    );
    forward!(
        member_remove,
        MemberRemoveRequest,
        MemberRemoveResponse,
        "Cluster",
        "MemberRemove",
        Retry::IfNotSent,
        ClusterClient
    );
    forward!(
        member_update,
        MemberUpdateRequest,
        MemberUpdateResponse,
        "Cluster",
        "MemberUpdate",
        Retry::IfNotSent,
        ClusterClient
    );
    forward!(
        member_list,
        MemberListRequest,
        MemberListResponse,
        "Cluster",
        "MemberList",
        Retry::Idempotent,
        ClusterClient
    );
    forward!(
        member_promote,
        MemberPromoteRequest,
        MemberPromoteResponse,
        "Cluster",
        "MemberPromote",
        Retry::IfNotSent,
        ClusterClient
    );
}
