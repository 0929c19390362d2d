//! Cluster: member administration, answered by the authoritative datastore. With a
//! prefix, a tenant may list the members; changing them is the operator's (see `access`).

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
        operator_only member_add,
        MemberAddRequest,
        MemberAddResponse,
        "Cluster",
        "MemberAdd",
        Retry::IfNotSent,
        ClusterClient
    );
    forward!(
        operator_only member_remove,
        MemberRemoveRequest,
        MemberRemoveResponse,
        "Cluster",
        "MemberRemove",
        Retry::IfNotSent,
        ClusterClient
    );
    forward!(
        operator_only member_update,
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
        operator_only member_promote,
        MemberPromoteRequest,
        MemberPromoteResponse,
        "Cluster",
        "MemberPromote",
        Retry::IfNotSent,
        ClusterClient
    );
}
