//! Auth: users, roles and tokens live in the datastore; every call is forwarded.

use std::sync::Arc;

use super::{forward, Context};
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::upstream::Retry;

pub struct AuthService {
    ctx: Arc<Context>,
}

impl AuthService {
    pub fn new(ctx: Arc<Context>) -> Self {
        AuthService { ctx }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    forward!(
        auth_enable,
        AuthEnableRequest,
        AuthEnableResponse,
        "Auth",
        "AuthEnable",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        auth_disable,
        AuthDisableRequest,
        AuthDisableResponse,
        "Auth",
        "AuthDisable",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        auth_status,
        AuthStatusRequest,
        AuthStatusResponse,
        "Auth",
        "AuthStatus",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        authenticate,
        AuthenticateRequest,
        AuthenticateResponse,
        "Auth",
        "Authenticate",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        user_add,
        AuthUserAddRequest,
        AuthUserAddResponse,
        "Auth",
        "UserAdd",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        user_get,
        AuthUserGetRequest,
        AuthUserGetResponse,
        "Auth",
        "UserGet",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        user_list,
        AuthUserListRequest,
        AuthUserListResponse,
        "Auth",
        "UserList",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        user_delete,
        AuthUserDeleteRequest,
        AuthUserDeleteResponse,
        "Auth",
        "UserDelete",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        user_change_password,
        AuthUserChangePasswordRequest,
        AuthUserChangePasswordResponse,
        "Auth",
        "UserChangePassword",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        user_grant_role,
        AuthUserGrantRoleRequest,
        AuthUserGrantRoleResponse,
        "Auth",
        "UserGrantRole",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        user_revoke_role,
        AuthUserRevokeRoleRequest,
        AuthUserRevokeRoleResponse,
        "Auth",
        "UserRevokeRole",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        role_add,
        AuthRoleAddRequest,
        AuthRoleAddResponse,
        "Auth",
        "RoleAdd",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        role_get,
        AuthRoleGetRequest,
        AuthRoleGetResponse,
        "Auth",
        "RoleGet",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        role_list,
        AuthRoleListRequest,
        AuthRoleListResponse,
        "Auth",
        "RoleList",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        role_delete,
        AuthRoleDeleteRequest,
        AuthRoleDeleteResponse,
        "Auth",
        "RoleDelete",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        role_grant_permission,
        AuthRoleGrantPermissionRequest,
        AuthRoleGrantPermissionResponse,
        "Auth",
        "RoleGrantPermission",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        role_revoke_permission,
        AuthRoleRevokePermissionRequest,
        AuthRoleRevokePermissionResponse,
        "Auth",
        "RoleRevokePermission",
        Retry::IfNotSent,
        AuthClient
    );
}
