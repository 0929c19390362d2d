//! Users, roles and key permissions with etcd's own semantics, held by cutover itself.
//!
//! In gateway mode cutover serves many tenants over a pool of etcd clusters and moves each
//! tenant between them, so who may do what cannot live in any one cluster's auth store:
//! it would have to move with every tenant. Cutover keeps the users and roles the Auth API
//! creates (Kamaji creates one user and one role per tenant), decides each request as etcd
//! would, and reaches the clusters with credentials of its own. This module is the pure
//! part: the store, the Auth API's rules and answers, and the checks of requests against
//! a user's permissions (see `perm`).

pub mod perm;

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::proto::authpb::permission::Type as PermType;
use crate::proto::authpb::Permission;
use crate::proto::etcdserverpb::{request_op, TxnRequest};
use perm::Grants;

/// The role that may do everything, and the user that must hold it to enable auth.
pub const ROOT: &str = "root";

/// An auth refusal, as etcd words it (the error table gives each its status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// Not in etcd's error table: clients get it as Unknown, in the auth store's words.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
}

/// Who sent a request: the user its certificate (or token) names, or nobody.
pub type Caller<'a> = Option<&'a str>;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Sorted, without repeats.
    pub roles: Vec<String>,
    /// A user known by its certificate only (Kamaji's): no password can authenticate it.
    pub no_password: bool,
    /// The bcrypt hash of a password user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Role {
    /// Sorted by key, as etcd keeps them.
    #[serde(with = "perms_as_json")]
    pub perms: Vec<Permission>,
}

/// Permissions in the catalog as readable JSON (type name, keys as strings where they are
/// UTF-8).
mod perms_as_json {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored {
        #[serde(rename = "type")]
        perm_type: String,
        key: Vec<u8>,
        #[serde(rename = "rangeEnd")]
        range_end: Vec<u8>,
    }

    pub fn serialize<S: serde::Serializer>(perms: &[Permission], s: S) -> Result<S::Ok, S::Error> {
        use serde::Serialize;
        perms
            .iter()
            .map(|p| Stored {
                // A type etcd does not know grants nothing; it is kept as its number.
                perm_type: PermType::try_from(p.perm_type)
                    .map(|t| t.as_str_name().to_string())
                    .unwrap_or_else(|_| p.perm_type.to_string()),
                key: p.key.to_vec(),
                range_end: p.range_end.to_vec(),
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Permission>, D::Error> {
        use serde::Deserialize;
        Vec::<Stored>::deserialize(d)?
            .into_iter()
            .map(|p| {
                let perm_type = PermType::from_str_name(&p.perm_type)
                    .map(|t| t as i32)
                    .or_else(|| p.perm_type.parse().ok())
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown permission type {:?}", p.perm_type)))?;
                Ok(Permission {
                    perm_type,
                    key: Bytes::from(p.key),
                    range_end: Bytes::from(p.range_end),
                })
            })
            .collect()
    }
}

/// The users and roles, and whether auth is on.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Store {
    pub enabled: bool,
    /// Counts every change, as etcd's auth revision does.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Store {
    fn commit(&mut self) {
        self.revision += 1;
    }

    /// etcd's admin check: anyone while auth is off; then a known user holding `root`.
    pub fn check_admin(&self, caller: Caller) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = caller.filter(|n| !n.is_empty()).ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(name).ok_or(AuthError::UserNotFound)?;
        if user.roles.binary_search_by(|r| r.as_str().cmp(ROOT)).is_ok() {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    pub fn auth_enable(&mut self, caller: Caller) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(())
    }

    pub fn auth_disable(&mut self, caller: Caller) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        self.enabled = false;
        self.commit();
        Ok(())
    }

    /// AuthStatus: (enabled, auth revision).
    pub fn status(&self, caller: Caller) -> Result<(bool, u64), AuthError> {
        self.check_admin(caller)?;
        Ok((self.enabled, self.revision))
    }

    /// UserAdd. Password users are not served yet: only certificate users (NoPassword),
    /// which is what Kamaji creates.
    pub fn user_add(&mut self, caller: Caller, name: &str, no_password: bool) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        self.users.insert(
            name.to_string(),
            User {
                roles: Vec::new(),
                no_password,
                password_hash: None,
            },
        );
        self.commit();
        Ok(())
    }

    /// UserAdd of a password user: `password_hash` is the password's bcrypt hash.
    pub fn user_add_with_password(
        &mut self,
        caller: Caller,
        name: &str,
        password_hash: String,
    ) -> Result<(), AuthError> {
        self.user_add(caller, name, false)?;
        if let Some(u) = self.users.get_mut(name) {
            u.password_hash = Some(password_hash);
        }
        Ok(())
    }

    /// UserChangePassword: a certificate user's password is ignored, as etcd ignores it.
    pub fn user_change_password(&mut self, caller: Caller, name: &str, password_hash: String) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        if !user.no_password {
            user.password_hash = Some(password_hash);
        }
        self.commit();
        Ok(())
    }

    /// Authenticate's checks, in etcd's order, before the password itself: the hash to
    /// check it against.
    pub fn password_hash_of(&self, name: &str) -> Result<&str, AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.no_password {
            return Err(AuthError::NoPasswordUser);
        }
        Ok(user.password_hash.as_deref().unwrap_or(""))
    }

    /// UserGet: the user's roles, sorted. A user may read itself.
    pub fn user_get(&self, caller: Caller, name: &str) -> Result<Vec<String>, AuthError> {
        if !(self.enabled && caller == Some(name)) {
            self.check_admin(caller)?;
        }
        self.users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(AuthError::UserNotFound)
    }

    pub fn user_list(&self, caller: Caller) -> Result<Vec<String>, AuthError> {
        self.check_admin(caller)?;
        Ok(self.users.keys().cloned().collect())
    }

    pub fn user_delete(&mut self, caller: Caller, name: &str) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.commit();
        Ok(())
    }

    pub fn user_grant_role(&mut self, caller: Caller, name: &str, role: &str) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        if !self.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let Some(user) = self.users.get_mut(name) else {
            return Err(AuthError::UserNotFound);
        };
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            // Granted already: nothing changes (and the revision stays), as in etcd.
            Ok(_) => Ok(()),
            Err(at) => {
                user.roles.insert(at, role.to_string());
                self.commit();
                Ok(())
            }
        }
    }

    pub fn user_revoke_role(&mut self, caller: Caller, name: &str, role: &str) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        if self.enabled && name == ROOT && role == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        let at = user
            .roles
            .iter()
            .position(|r| r == role)
            .ok_or(AuthError::RoleNotGranted)?;
        user.roles.remove(at);
        self.commit();
        Ok(())
    }

    pub fn role_add(&mut self, caller: Caller, name: &str) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_string(), Role::default());
        self.commit();
        Ok(())
    }

    /// RoleGet: the role's permissions, sorted by key. A user may read a role it holds.
    pub fn role_get(&self, caller: Caller, name: &str) -> Result<Vec<Permission>, AuthError> {
        let holds = caller
            .and_then(|c| self.users.get(c))
            .is_some_and(|u| u.roles.iter().any(|r| r == name));
        if !(self.enabled && holds) {
            self.check_admin(caller)?;
        }
        self.roles
            .get(name)
            .map(|r| r.perms.clone())
            .ok_or(AuthError::RoleNotFound)
    }

    pub fn role_list(&self, caller: Caller) -> Result<Vec<String>, AuthError> {
        self.check_admin(caller)?;
        Ok(self.roles.keys().cloned().collect())
    }

    /// RoleDelete: the role goes, and with it from every user that held it.
    pub fn role_delete(&mut self, caller: Caller, name: &str) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.retain(|r| r != name);
        }
        self.commit();
        Ok(())
    }

    /// RoleGrantPermission: the same key and end again changes the type; anything else is
    /// added (nothing is merged).
    pub fn role_grant_permission(
        &mut self,
        caller: Caller,
        name: &str,
        perm: Option<Permission>,
    ) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        let perm = perm.ok_or(AuthError::PermissionNotGiven)?;
        if !perm::valid_permission(&perm.key, &perm.range_end) {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        let at = role.perms.partition_point(|p| p.key < perm.key);
        match role.perms.get_mut(at) {
            Some(same) if same.key == perm.key && same.range_end == perm.range_end => {
                same.perm_type = perm.perm_type;
            }
            _ => role.perms.insert(at, perm),
        }
        self.commit();
        Ok(())
    }

    /// RoleRevokePermission: every permission with exactly this key and end goes.
    pub fn role_revoke_permission(
        &mut self,
        caller: Caller,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.check_admin(caller)?;
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        let before = role.perms.len();
        role.perms.retain(|p| !(p.key == key && p.range_end == range_end));
        if role.perms.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.commit();
        Ok(())
    }

    /// The permissions of one kind a user holds, through all its roles.
    pub fn grants(&self, user: &str, wanted: PermType) -> Grants {
        let roles = self.users.get(user).map(|u| u.roles.as_slice()).unwrap_or_default();
        Grants::new(
            roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .flat_map(|r| r.perms.iter()),
            wanted,
        )
    }

    /// What `caller` may do with keys: everything while auth is off or for `root`; for a
    /// user, what its roles grant (nothing for a user not known).
    pub fn permits(&self, caller: Caller) -> Result<Permits, AuthError> {
        if !self.enabled {
            return Ok(Permits::everything());
        }
        let name = caller.filter(|n| !n.is_empty()).ok_or(AuthError::UserEmpty)?;
        let Some(user) = self.users.get(name) else {
            return Ok(Permits::default());
        };
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(Permits::everything());
        }
        Ok(Permits {
            everything: false,
            read: self.grants(name, PermType::Read),
            write: self.grants(name, PermType::Write),
        })
    }

    /// etcd's check of one key range: anyone while auth is off; then a known user with
    /// `root`, or whose permissions cover the whole range.
    pub fn check_range(&self, caller: Caller, key: &[u8], range_end: &[u8], wanted: PermType) -> Result<(), AuthError> {
        self.permits(caller)?.check_range(key, range_end, wanted)
    }

    /// See [`Permits::check_put`].
    pub fn check_put(&self, caller: Caller, key: &[u8], prev_kv: bool) -> Result<(), AuthError> {
        self.permits(caller)?.check_put(key, prev_kv)
    }

    /// See [`Permits::check_delete`].
    pub fn check_delete(&self, caller: Caller, key: &[u8], range_end: &[u8], prev_kv: bool) -> Result<(), AuthError> {
        self.permits(caller)?.check_delete(key, range_end, prev_kv)
    }

    /// See [`Permits::check_txn`].
    pub fn check_txn(&self, caller: Caller, txn: &TxnRequest) -> Result<(), AuthError> {
        self.permits(caller)?.check_txn(txn)
    }
}

/// A caller's permits as they are at each moment: a watch stream checks each watch it
/// creates with the roles of that moment, as etcd does.
#[derive(Clone)]
pub struct LivePermits(std::sync::Arc<dyn Fn() -> std::sync::Arc<Permits> + Send + Sync>);

impl LivePermits {
    pub fn new(now: impl Fn() -> std::sync::Arc<Permits> + Send + Sync + 'static) -> Self {
        LivePermits(std::sync::Arc::new(now))
    }

    pub fn now(&self) -> std::sync::Arc<Permits> {
        (self.0)()
    }
}

/// What one caller may do with keys, compiled once from its roles: each of its requests
/// is checked against it as etcd checks a request against the caller's permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permits {
    /// Auth is off, or the caller holds `root`: every key, and every lease's keys.
    everything: bool,
    read: Grants,
    write: Grants,
}

impl Permits {
    pub fn everything() -> Permits {
        Permits {
            everything: true,
            ..Default::default()
        }
    }

    /// Whether every check passes (auth off, or `root`).
    pub fn is_everything(&self) -> bool {
        self.everything
    }

    /// Whether the whole range `[key, range_end)` may be read (`Read`) or written (`Write`).
    pub fn check_range(&self, key: &[u8], range_end: &[u8], wanted: PermType) -> Result<(), AuthError> {
        let grants = match wanted {
            PermType::Read => &self.read,
            PermType::Write => &self.write,
            PermType::Readwrite => {
                self.check_range(key, range_end, PermType::Read)?;
                return self.check_range(key, range_end, PermType::Write);
            }
        };
        if self.everything || grants.covers(key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// A Put: write on its key, and read too when it asks for the previous value. (The
    /// keys already on its lease are checked by the caller, which knows them.)
    pub fn check_put(&self, key: &[u8], prev_kv: bool) -> Result<(), AuthError> {
        self.check_range(key, b"", PermType::Write)?;
        if prev_kv {
            self.check_range(key, b"", PermType::Read)?;
        }
        Ok(())
    }

    /// A DeleteRange: write over its range, and read too with `prev_kv`.
    pub fn check_delete(&self, key: &[u8], range_end: &[u8], prev_kv: bool) -> Result<(), AuthError> {
        self.check_range(key, range_end, PermType::Write)?;
        if prev_kv {
            self.check_range(key, range_end, PermType::Read)?;
        }
        Ok(())
    }

    /// A Txn, as etcd checks it whatever its compare turns out: read on every compare,
    /// then every op of both branches (nested Txns included).
    pub fn check_txn(&self, txn: &TxnRequest) -> Result<(), AuthError> {
        if self.everything {
            return Ok(());
        }
        for c in &txn.compare {
            self.check_range(&c.key, &c.range_end, PermType::Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => self.check_range(&r.key, &r.range_end, PermType::Read)?,
                Some(request_op::Request::RequestPut(p)) => self.check_put(&p.key, p.prev_kv)?,
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.check_range(&d.key, &d.range_end, PermType::Read)?;
                    }
                    self.check_range(&d.key, &d.range_end, PermType::Write)?;
                }
                Some(request_op::Request::RequestTxn(t)) => self.check_txn(t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Every key interval the caller holds any permission on.
    pub fn intervals(&self) -> impl Iterator<Item = &perm::Interval> {
        self.read.intervals().iter().chain(self.write.intervals())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp};

    fn prefix_perm(schema: &str) -> Permission {
        Permission {
            perm_type: PermType::Readwrite as i32,
            key: Bytes::from(format!("/{schema}/")),
            range_end: Bytes::from(format!("/{schema}0")),
        }
    }

    /// What Kamaji's controller does for a tenant, as root, with auth on.
    fn kamaji_setup(store: &mut Store, user: &str, schema: &str) {
        let root = Some(ROOT);
        assert_eq!(store.user_get(root, user), Err(AuthError::UserNotFound));
        store.user_add(root, user, true).unwrap();
        assert_eq!(store.role_get(root, schema), Err(AuthError::RoleNotFound));
        store.role_add(root, schema).unwrap();
        store
            .role_grant_permission(root, schema, Some(prefix_perm(schema)))
            .unwrap();
        store.user_grant_role(root, user, schema).unwrap();
        assert_eq!(store.user_get(root, user).unwrap(), vec![schema.to_string()]);
    }

    fn with_root() -> Store {
        let mut s = Store::default();
        s.user_add(None, ROOT, true).unwrap();
        assert_eq!(s.auth_enable(None), Err(AuthError::RootRoleNotExist));
        s.user_grant_role(None, ROOT, ROOT).unwrap();
        s.auth_enable(None).unwrap();
        s
    }

    #[test]
    fn auth_needs_a_root_user_with_the_root_role() {
        let mut s = Store::default();
        assert_eq!(s.auth_enable(None), Err(AuthError::RootUserNotExist));
        let s = with_root();
        assert!(s.enabled);
        assert!(s.status(Some(ROOT)).unwrap().0);
        assert_eq!(s.status(None), Err(AuthError::UserEmpty));
        assert_eq!(s.status(Some("nobody")), Err(AuthError::UserNotFound));
    }

    #[test]
    fn kamajis_tenants_each_reach_their_own_prefix_only() {
        let mut s = with_root();
        kamaji_setup(&mut s, "u-a", "a");
        kamaji_setup(&mut s, "u-b", "b");
        let a = Some("u-a");
        assert_eq!(s.check_range(a, b"/a/pods/x", b"", PermType::Read), Ok(()));
        assert_eq!(s.check_range(a, b"/a/", b"/a0", PermType::Write), Ok(()));
        assert_eq!(
            s.check_range(a, b"/b/pods/x", b"", PermType::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check_range(a, b"/", b"\0", PermType::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check_range(None, b"/a/x", b"", PermType::Read),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(
            s.check_range(Some("stranger"), b"/a/x", b"", PermType::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(s.check_range(Some(ROOT), b"\0", b"\0", PermType::Write), Ok(()));
        // A tenant may read itself and its role, not the others or the lists.
        assert_eq!(s.user_get(a, "u-a").unwrap(), vec!["a".to_string()]);
        assert_eq!(s.user_get(a, "u-b"), Err(AuthError::PermissionDenied));
        assert_eq!(s.role_get(a, "a").unwrap(), vec![prefix_perm("a")]);
        assert_eq!(s.role_get(a, "b"), Err(AuthError::PermissionDenied));
        assert_eq!(s.user_list(a), Err(AuthError::PermissionDenied));
        assert_eq!(s.user_add(a, "x", true), Err(AuthError::PermissionDenied));
        // The same setup again finds everything there.
        assert_eq!(s.user_add(Some(ROOT), "u-a", true), Err(AuthError::UserAlreadyExist));
        assert_eq!(s.role_add(Some(ROOT), "a"), Err(AuthError::RoleAlreadyExist));
    }

    #[test]
    fn a_tenants_deletion_as_kamaji_does_it() {
        let mut s = with_root();
        kamaji_setup(&mut s, "u-a", "a");
        let root = Some(ROOT);
        s.role_delete(root, "a").unwrap();
        // The role is gone from its user too.
        assert_eq!(s.user_get(root, "u-a").unwrap(), Vec::<String>::new());
        assert_eq!(
            s.check_range(Some("u-a"), b"/a/x", b"", PermType::Read),
            Err(AuthError::PermissionDenied)
        );
        s.user_delete(root, "u-a").unwrap();
        assert_eq!(s.user_delete(root, "u-a"), Err(AuthError::UserNotFound));
        assert_eq!(s.user_list(root).unwrap(), vec![ROOT.to_string()]);
    }

    #[test]
    fn root_stays_while_auth_is_on() {
        let mut s = with_root();
        let root = Some(ROOT);
        assert_eq!(s.user_delete(root, ROOT), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(s.user_revoke_role(root, ROOT, ROOT), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(s.role_delete(root, ROOT), Err(AuthError::InvalidAuthMgmt));
        // The root role needs no role of that name: the name on the user is what counts.
        assert_eq!(s.role_get(root, ROOT), Err(AuthError::RoleNotFound));
        s.auth_disable(root).unwrap();
        s.user_revoke_role(None, ROOT, ROOT).unwrap();
        s.user_delete(None, ROOT).unwrap();
    }

    #[test]
    fn grants_replace_the_same_range_and_add_any_other_sorted_by_key() {
        let mut s = with_root();
        let root = Some(ROOT);
        s.role_add(root, "r").unwrap();
        let p = |t: PermType, k: &str, e: &str| Permission {
            perm_type: t as i32,
            key: Bytes::copy_from_slice(k.as_bytes()),
            range_end: Bytes::copy_from_slice(e.as_bytes()),
        };
        s.role_grant_permission(root, "r", Some(p(PermType::Read, "m", "n")))
            .unwrap();
        s.role_grant_permission(root, "r", Some(p(PermType::Write, "m", "n")))
            .unwrap();
        s.role_grant_permission(root, "r", Some(p(PermType::Read, "a", "")))
            .unwrap();
        s.role_grant_permission(root, "r", Some(p(PermType::Read, "m", "z")))
            .unwrap();
        let got = s.role_get(root, "r").unwrap();
        assert_eq!(got[0], p(PermType::Read, "a", ""));
        assert_eq!(got.len(), 3);
        assert!(
            got.contains(&p(PermType::Write, "m", "n")),
            "READ then WRITE gives WRITE: {got:?}"
        );
        assert_eq!(
            s.role_grant_permission(root, "r", None),
            Err(AuthError::PermissionNotGiven)
        );
        assert_eq!(
            s.role_grant_permission(root, "r", Some(p(PermType::Read, "b", "a"))),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.role_grant_permission(root, "nope", Some(p(PermType::Read, "a", ""))),
            Err(AuthError::RoleNotFound)
        );
        s.role_revoke_permission(root, "r", b"m", b"n").unwrap();
        assert_eq!(
            s.role_revoke_permission(root, "r", b"m", b"n"),
            Err(AuthError::PermissionNotGranted)
        );
        assert_eq!(s.user_revoke_role(root, ROOT, "r"), Err(AuthError::RoleNotGranted));
        assert_eq!(s.user_grant_role(root, ROOT, "nope"), Err(AuthError::RoleNotFound));
        assert_eq!(s.role_add(root, ""), Err(AuthError::RoleEmpty));
        assert_eq!(s.user_add(root, "", true), Err(AuthError::UserEmpty));
    }

    #[test]
    fn a_txn_is_checked_on_both_branches_whatever_its_compare() {
        let mut s = with_root();
        kamaji_setup(&mut s, "u-a", "a");
        let a = Some("u-a");
        let op = |r: request_op::Request| RequestOp { request: Some(r) };
        let put = |k: &str| {
            op(request_op::Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ..Default::default()
            }))
        };
        let range = |k: &str| {
            op(request_op::Request::RequestRange(RangeRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ..Default::default()
            }))
        };
        let kube = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"/a/pods/x"),
                ..Default::default()
            }],
            success: vec![put("/a/pods/x")],
            failure: vec![range("/a/pods/x")],
        };
        assert_eq!(s.check_txn(a, &kube), Ok(()));
        let other_branch = TxnRequest {
            failure: vec![range("/b/pods/x")],
            ..kube.clone()
        };
        assert_eq!(s.check_txn(a, &other_branch), Err(AuthError::PermissionDenied));
        let compare_elsewhere = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"/b/x"),
                ..Default::default()
            }],
            ..kube.clone()
        };
        assert_eq!(s.check_txn(a, &compare_elsewhere), Err(AuthError::PermissionDenied));
        let nested = TxnRequest {
            success: vec![op(request_op::Request::RequestTxn(TxnRequest {
                success: vec![op(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: Bytes::from_static(b"/b/"),
                    range_end: Bytes::from_static(b"/b0"),
                    ..Default::default()
                }))],
                ..Default::default()
            }))],
            ..kube
        };
        assert_eq!(s.check_txn(a, &nested), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn password_users_are_checked_in_etcds_order() {
        let s = Store::default();
        assert_eq!(s.password_hash_of("x"), Err(AuthError::AuthNotEnabled));
        let mut s = with_root();
        s.user_add_with_password(Some(ROOT), "alice", "hash-a".into()).unwrap();
        s.user_add(Some(ROOT), "cert-user", true).unwrap();
        assert_eq!(s.password_hash_of("alice"), Ok("hash-a"));
        assert_eq!(s.password_hash_of("nobody"), Err(AuthError::AuthFailed));
        assert_eq!(s.password_hash_of("cert-user"), Err(AuthError::NoPasswordUser));
        s.user_change_password(Some(ROOT), "alice", "hash-b".into()).unwrap();
        assert_eq!(s.password_hash_of("alice"), Ok("hash-b"));
        // A certificate user's password is ignored.
        s.user_change_password(Some(ROOT), "cert-user", "hash-c".into())
            .unwrap();
        assert_eq!(s.password_hash_of("cert-user"), Err(AuthError::NoPasswordUser));
        assert_eq!(
            s.user_change_password(Some("alice"), "alice", "h".into()),
            Err(AuthError::PermissionDenied),
            "only root changes passwords"
        );
    }

    #[test]
    fn a_users_permits_check_each_kind_of_access_apart() {
        let mut s = with_root();
        let root = Some(ROOT);
        s.user_add(root, "reader", true).unwrap();
        s.role_add(root, "r").unwrap();
        let read_a = Permission {
            perm_type: PermType::Read as i32,
            key: Bytes::from_static(b"/a/"),
            range_end: Bytes::from_static(b"/a0"),
        };
        s.role_grant_permission(root, "r", Some(read_a)).unwrap();
        s.user_grant_role(root, "reader", "r").unwrap();
        let p = s.permits(Some("reader")).unwrap();
        assert!(!p.is_everything());
        assert_eq!(p.check_range(b"/a/x", b"", PermType::Read), Ok(()));
        assert_eq!(p.check_put(b"/a/x", false), Err(AuthError::PermissionDenied));
        assert_eq!(p.check_delete(b"/a/", b"/a0", false), Err(AuthError::PermissionDenied));
        assert_eq!(
            p.check_range(b"/a/x", b"", PermType::Readwrite),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(p.intervals().count(), 1);
        assert!(s.permits(Some(ROOT)).unwrap().is_everything());
        assert_eq!(s.permits(None), Err(AuthError::UserEmpty));
        let stranger = s.permits(Some("stranger")).unwrap();
        assert_eq!(
            stranger.check_range(b"/a/x", b"", PermType::Read),
            Err(AuthError::PermissionDenied)
        );
        assert!(Store::default().permits(None).unwrap().is_everything(), "auth off");
    }

    #[test]
    fn with_auth_off_everything_is_allowed() {
        let mut s = Store::default();
        s.role_add(None, "r").unwrap();
        assert_eq!(s.check_range(None, b"/x", b"\0", PermType::Write), Ok(()));
        assert_eq!(s.role_list(Some("anyone")).unwrap(), vec!["r".to_string()]);
    }

    #[test]
    fn the_store_round_trips_through_its_json() {
        let mut s = with_root();
        kamaji_setup(&mut s, "u-a", "a");
        s.roles.get_mut("a").unwrap().perms.push(Permission {
            perm_type: 7,
            key: Bytes::from_static(b"\xff\x00"),
            range_end: Bytes::new(),
        });
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("READWRITE"), "{json}");
        let back: Store = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
