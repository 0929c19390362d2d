//! Gateway mode: cutover as the etcd DataStore of many tenants, over a pool
//! of etcd clusters. A tenant is what Kamaji makes of one control plane: an etcd user (the
//! CN of its client certificate) holding a role whose one permission is the tenant's key
//! prefix. The gateway keeps the users and roles itself (`crate::rbac`) in its catalog,
//! with each tenant's home datastore, and reaches the clusters with its own credentials.
//! The catalog (`catalog`), the Auth API answered from it (`auth`, `token`), each caller
//! served by its tenant's own context (`dispatch`), root's requests sent to the tenant
//! whose keys they name (`root`), a deleted tenant's leftovers cleared (`retire`).

pub mod auth;
pub mod catalog;
pub mod dispatch;
pub mod retire;
pub mod root;
pub mod token;
