//! Auth: users, roles and tokens live in the datastore and are forwarded. With a prefix,
//! a tenant may authenticate and ask whether auth is on; users, roles and switching auth
//! are the operator's (see `access`): they are shared by every tenant of the datastore.

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
        operator_only auth_enable,
        AuthEnableRequest,
        AuthEnableResponse,
        "Auth",
        "AuthEnable",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only auth_disable,
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
        operator_only user_add,
        AuthUserAddRequest,
        AuthUserAddResponse,
        "Auth",
        "UserAdd",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only user_get,
        AuthUserGetRequest,
        AuthUserGetResponse,
        "Auth",
        "UserGet",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        operator_only user_list,
        AuthUserListRequest,
        AuthUserListResponse,
        "Auth",
        "UserList",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        operator_only user_delete,
        AuthUserDeleteRequest,
        AuthUserDeleteResponse,
        "Auth",
        "UserDelete",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only user_change_password,
        AuthUserChangePasswordRequest,
        AuthUserChangePasswordResponse,
        "Auth",
        "UserChangePassword",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only user_grant_role,
        AuthUserGrantRoleRequest,
        AuthUserGrantRoleResponse,
        "Auth",
        "UserGrantRole",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only user_revoke_role,
        AuthUserRevokeRoleRequest,
        AuthUserRevokeRoleResponse,
        "Auth",
        "UserRevokeRole",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only role_add,
        AuthRoleAddRequest,
        AuthRoleAddResponse,
        "Auth",
        "RoleAdd",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only role_get,
        AuthRoleGetRequest,
        AuthRoleGetResponse,
        "Auth",
        "RoleGet",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        operator_only role_list,
        AuthRoleListRequest,
        AuthRoleListResponse,
        "Auth",
        "RoleList",
        Retry::Idempotent,
        AuthClient
    );
    forward!(
        operator_only role_delete,
        AuthRoleDeleteRequest,
        AuthRoleDeleteResponse,
        "Auth",
        "RoleDelete",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only role_grant_permission,
        AuthRoleGrantPermissionRequest,
        AuthRoleGrantPermissionResponse,
        "Auth",
        "RoleGrantPermission",
        Retry::IfNotSent,
        AuthClient
    );
    forward!(
        operator_only role_revoke_permission,
        AuthRoleRevokePermissionRequest,
        AuthRoleRevokePermissionResponse,
        "Auth",
        "RoleRevokePermission",
        Retry::IfNotSent,
        AuthClient
    );
}
