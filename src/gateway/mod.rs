//! Gateway mode (being built): cutover as the etcd DataStore of many tenants, over a pool
//! of etcd clusters. A tenant is what Kamaji makes of one control plane: an etcd user (the
//! CN of its client certificate) holding a role whose one permission is the tenant's key
//! prefix. The gateway keeps the users and roles itself (`crate::rbac`) in its catalog,
//! with each tenant's home datastore, and reaches the clusters with its own credentials.
//! Built so far: the catalog and the Auth API served from it.

pub mod auth;
pub mod catalog;
pub mod dispatch;
pub mod root;
pub mod token;
