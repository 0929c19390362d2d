//! The Auth API of the gateway, answered from its catalog as etcd answers it from its own
//! auth store: the caller is the user its client certificate names (etcd's
//! `--client-cert-auth`), and every change is one compare-and-write of the catalog.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::catalog::{Catalog, CatalogStore};
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

/// Who calls, as etcd decides it (see `super::token::caller`), against `catalog`.
fn caller<T>(request: &Request<T>, catalog: &Catalog) -> Result<Option<String>, ProxyError> {
    let md = request.metadata();
    super::token::caller(
        |name| md.get(name).and_then(|v| v.to_str().ok()),
        || common_name(request),
        catalog,
    )
    .map_err(ProxyError::from)
}

/// bcrypt's cost for the passwords of password users: etcd's default.
const BCRYPT_COST: u32 = 10;

/// A password's bcrypt hash (off the runtime's threads: it takes tens of milliseconds).
async fn hash_password(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ProxyError::Catalog("a password could not be hashed".into()).into())
}

impl GatewayAuth {
    /// Reads the store: `answer` gets the caller and the catalog's store.
    async fn read<T, R>(
        &self,
        request: &Request<T>,
        answer: impl FnOnce(Option<&str>, &Store) -> Result<R, AuthError>,
    ) -> Result<(R, Option<ResponseHeader>), Status> {
        let read = self.catalog.read().await?;
        let who = caller(request, &read.catalog)?;
        let out = answer(who.as_deref(), &read.catalog.auth).map_err(ProxyError::from)?;
        Ok((out, read.header))
    }

    /// Changes the store (once written, every replica sees it).
    async fn change<T>(
        &self,
        request: &Request<T>,
        change: impl Fn(Option<&str>, &mut Store) -> Result<(), AuthError>,
    ) -> Result<Option<ResponseHeader>, Status> {
        let read = self.catalog.read().await?;
        let who = caller(request, &read.catalog)?;
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

    /// A password user's token, signed with the catalog's key (made by the first
    /// Authenticate), so that every replica takes it.
    async fn authenticate(&self, r: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        let AuthenticateRequest { name, password } = r.into_inner();
        let read = self.catalog.read().await?;
        let hash = read
            .catalog
            .auth
            .password_hash_of(&name)
            .map_err(ProxyError::from)?
            .to_string();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !matches {
            return Err(ProxyError::from(AuthError::AuthFailed).into());
        }
        let (secret, header) = self
            .catalog
            .update(|c| {
                if c.token_secret.is_empty() {
                    c.token_secret = super::token::new_secret();
                }
                Ok(c.token_secret.clone())
            })
            .await?;
        let tokens = super::token::Tokens::from_secret(&secret)
            .ok_or_else(|| ProxyError::Catalog("no key to sign tokens with".into()))?;
        Ok(Response::new(AuthenticateResponse {
            header,
            token: tokens.issue(&name, super::token::now_unix()),
        }))
    }

    async fn user_add(&self, r: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let no_password = r.get_ref().options.is_some_and(|o| o.no_password);
        let name = r.get_ref().name.clone();
        let header = if no_password {
            self.change(&r, |who, s| s.user_add(who, &name, true)).await?
        } else {
            // As etcd: the password is hashed first, even an empty one.
            let hash = hash_password(r.get_ref().password.clone()).await?;
            self.change(&r, |who, s| s.user_add_with_password(who, &name, hash.clone()))
                .await?
        };
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
        // etcd hashes only a password that is not empty; an empty one leaves no way in.
        let password = r.get_ref().password.clone();
        let hash = if password.is_empty() {
            String::new()
        } else {
            hash_password(password).await?
        };
        let header = self
            .change(&r, |who, s| s.user_change_password(who, &name, hash.clone()))
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
