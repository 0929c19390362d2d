//! The Auth API of the gateway, answered from its catalog as etcd answers it from its own
//! auth store: the caller is the user its client certificate names (etcd's
//! `--client-cert-auth`), and every change is one compare-and-write of the catalog.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::catalog::CatalogStore;
use crate::error::ProxyError;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::rbac::{AuthError, Store};
use crate::server::access::common_name;

pub struct GatewayAuth {
    catalog: Arc<CatalogStore>,
}

impl GatewayAuth {
    pub fn new(catalog: Arc<CatalogStore>) -> GatewayAuth {
        GatewayAuth { catalog }
    }
}

/// Who calls: the certificate's user. The gateway issues no tokens, so a request that
/// carries one carries a token etcd would not know either.
fn caller<T>(request: &Request<T>) -> Result<Option<String>, ProxyError> {
    let md = request.metadata();
    if md.contains_key("token") || md.contains_key("authorization") {
        return Err(ProxyError::Etcd(crate::error::invalid_auth_token()));
    }
    Ok(common_name(request))
}

impl GatewayAuth {
    /// Reads the store: `answer` gets the caller and the catalog's store.
    async fn read<T, R>(
        &self,
        request: &Request<T>,
        answer: impl FnOnce(Option<&str>, &Store) -> Result<R, AuthError>,
    ) -> Result<(R, Option<ResponseHeader>), Status> {
        let who = caller(request)?;
        let read = self.catalog.read().await?;
        let out = answer(who.as_deref(), &read.catalog.auth).map_err(ProxyError::from)?;
        Ok((out, read.header))
    }

    /// Changes the store (once written, every replica sees it).
    async fn change<T>(
        &self,
        request: &Request<T>,
        change: impl Fn(Option<&str>, &mut Store) -> Result<(), AuthError>,
    ) -> Result<Option<ResponseHeader>, Status> {
        let who = caller(request)?;
        let (_, header) = self.catalog.update(|c| change(who.as_deref(), &mut c.auth)).await?;
        Ok(header)
    }
}

#[tonic::async_trait]
impl Auth for GatewayAuth {
    async fn auth_enable(&self, r: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self.change(&r, |who, s| s.auth_enable(who)).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(&self, r: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.change(&r, |who, s| s.auth_disable(who)).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(&self, r: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        let ((enabled, auth_revision), header) = self.read(&r, |who, s| s.status(who)).await?;
        Ok(Response::new(AuthStatusResponse {
            header,
            enabled,
            auth_revision,
        }))
    }

    /// The gateway's users are certificate users: no password authenticates any of them,
    /// and etcd words each refusal its own way.
    async fn authenticate(&self, r: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        let read = self.catalog.read().await?;
        let auth = &read.catalog.auth;
        if !auth.enabled {
            return Err(ProxyError::from(AuthError::AuthNotEnabled).into());
        }
        match auth.users.get(&r.get_ref().name) {
            Some(u) if u.no_password => Err(crate::error::no_password_user()),
            _ => Err(ProxyError::from(AuthError::AuthFailed).into()),
        }
    }

    async fn user_add(&self, r: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let no_password = r.get_ref().options.is_some_and(|o| o.no_password);
        if !no_password {
            return Err(ProxyError::Unsupported(
                "the gateway keeps certificate users only: add the user with no password (etcdctl user add --no-password)",
            )
            .into());
        }
        let name = r.get_ref().name.clone();
        let header = self.change(&r, |who, s| s.user_add(who, &name, true)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(&self, r: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = r.get_ref().name.clone();
        let (roles, header) = self.read(&r, |who, s| s.user_get(who, &name)).await?;
        Ok(Response::new(AuthUserGetResponse { header, roles }))
    }

    async fn user_list(&self, r: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        let (users, header) = self.read(&r, |who, s| s.user_list(who)).await?;
        Ok(Response::new(AuthUserListResponse { header, users }))
    }

    async fn user_delete(&self, r: Request<AuthUserDeleteRequest>) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = r.get_ref().name.clone();
        let header = self.change(&r, |who, s| s.user_delete(who, &name)).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    /// A certificate user's password is ignored, as etcd ignores it.
    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let name = r.get_ref().name.clone();
        let ((), header) = self
            .read(&r, |who, s| {
                s.check_admin(who)?;
                s.users.get(&name).map(|_| ()).ok_or(AuthError::UserNotFound)
            })
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let AuthUserGrantRoleRequest { user, role } = r.get_ref().clone();
        let header = self.change(&r, |who, s| s.user_grant_role(who, &user, &role)).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let AuthUserRevokeRoleRequest { name, role } = r.get_ref().clone();
        let header = self.change(&r, |who, s| s.user_revoke_role(who, &name, &role)).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, r: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        let name = r.get_ref().name.clone();
        let header = self.change(&r, |who, s| s.role_add(who, &name)).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(&self, r: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let role = r.get_ref().role.clone();
        let (perm, header) = self.read(&r, |who, s| s.role_get(who, &role)).await?;
        Ok(Response::new(AuthRoleGetResponse { header, perm }))
    }

    async fn role_list(&self, r: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        let (roles, header) = self.read(&r, |who, s| s.role_list(who)).await?;
        Ok(Response::new(AuthRoleListResponse { header, roles }))
    }

    async fn role_delete(&self, r: Request<AuthRoleDeleteRequest>) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let role = r.get_ref().role.clone();
        let header = self.change(&r, |who, s| s.role_delete(who, &role)).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let AuthRoleGrantPermissionRequest { name, perm } = r.get_ref().clone();
        let header = self
            .change(&r, |who, s| s.role_grant_permission(who, &name, perm.clone()))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let AuthRoleRevokePermissionRequest { role, key, range_end } = r.get_ref().clone();
        let header = self
            .change(&r, |who, s| s.role_revoke_permission(who, &role, &key, &range_end))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
